"""Closed forms of the structural-flexibility counts (docs/spec.md §7; arXiv 2504.06426).

The formulas live once, in :mod:`smore_gnn.nn.counting`; this module keeps theory's historical
names (``gamma_smore``, ``gamma_momor_bound``, ...) as thin aliases so that every check in
``theory`` reads like the paper. Per-layer lists are indexed bottom first, as in
:class:`smore_gnn.SMoREConfig`: ``num_experts[l] = s_l`` and ``fanout[l] = f_l``; the top layer
``L-1`` is picked by the root.
"""

from __future__ import annotations

from smore_gnn.nn.counting import (
    check_layers,
    figure2_values,
    momor_upper_bound,
    nodes_per_layer,
    num_structures,
    smore_star_structures,
)

__all__ = [
    "uniform",
    "nodes_per_layer",
    "gamma_smore",
    "gamma_momor_bound",
    "gamma_smore_star",
    "figure2_values",
]

_check = check_layers  # the validation theory.enumerate applies to user-given lists
gamma_smore = num_structures  # Theorem 3.4 (exact)
gamma_momor_bound = momor_upper_bound  # Theorem 3.3 (upper bound)
gamma_smore_star = smore_star_structures  # our S'MoRE* closed form, checked by brute force


def uniform(num_experts: int, fanout: int, num_layers: int) -> tuple[list[int], list[int]]:
    """``([s] * L, [f] * L)``: the per-layer lists of a config with equal layers."""
    return [num_experts] * num_layers, [fanout] * num_layers

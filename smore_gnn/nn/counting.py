"""Tree sizes, message widths and structural-flexibility counts, once (docs/spec.md §2, §7).

Everything here is plain integer arithmetic on the per-layer lists of
:class:`~smore_gnn.SMoREConfig` (indexed bottom first: ``num_experts[l] = s_l``,
``fanout[l] = f_l``, ``rank[l] = r_l``; the top layer ``L-1`` is picked by the root). The config,
the tree builder, :mod:`smore_gnn.viz` and the top-level ``theory`` package all call these
functions instead of re-deriving the formulas. Counts are exact Python ``int``s.

Reference: Zeng et al., "S'MoRE: Structural Mixture of Residual Experts for Parameter-Efficient
LLM Fine-tuning", NeurIPS 2025, Section 3.5, https://arxiv.org/abs/2504.06426.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "uniform_layers",
    "nodes_per_layer",
    "message_dims",
    "num_structures",
    "momor_upper_bound",
    "smore_star_structures",
    "figure2_values",
    "check_layers",
]


def _positive_ints(name: str, values: Sequence[int]) -> list[int]:
    values = list(values)
    for l, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"Expected {name}[{l}] to be an int (got {v!r})")
        if v < 1:
            raise ValueError(f"Expected {name}[{l}] >= 1 (got {v}); every layer needs at least 1")
    return values


def check_layers(num_experts: Sequence[int], fanout: Sequence[int]) -> None:
    """Validate a pair of per-layer lists: same non-zero length and ``1 <= f_l <= s_l``.

    Raises:
        ValueError: naming the layer and the values when a list is empty, the lengths differ
            or a parent would pick more children than its layer has experts.
        TypeError: when an entry is not an int.
    """
    s, f = _positive_ints("num_experts", num_experts), _positive_ints("fanout", fanout)
    if len(s) != len(f) or not s:
        raise ValueError(
            "Expected one fanout per expert layer and at least one layer "
            f"(got num_experts={s}, fanout={f})"
        )
    for l, (sl, fl) in enumerate(zip(s, f)):
        if fl > sl:
            raise ValueError(
                f"Expected fanout[{l}] <= num_experts[{l}] (got f={fl}, s={sl}); a parent "
                "cannot pick more children than the layer has experts"
            )


def uniform_layers(num_experts: int, fanout: int, num_layers: int) -> tuple[list[int], list[int]]:
    """``([s] * L, [f] * L)``: the per-layer lists of a config whose layers are all equal."""
    return [num_experts] * num_layers, [fanout] * num_layers


def nodes_per_layer(fanout: Sequence[int]) -> list[int]:
    """``[F_0, ..., F_L]``: nodes of layer ``l`` in one token's routing tree.

    ``F_L = 1`` (the root) and ``F_l = f_l F_{l+1}``.

    Example:
        >>> nodes_per_layer([2, 3, 2])
        [12, 6, 2, 1]
    """
    nodes = [1]
    for f in reversed(_positive_ints("fanout", fanout)):
        nodes.insert(0, f * nodes[0])
    return nodes


def message_dims(
    num_experts: Sequence[int], rank: Sequence[int], shared_pool: bool = False
) -> list[int]:
    """``[d_0, ..., d_L]``: width of the messages leaving layer ``l - 1``.

    ``d_0 = 0`` and ``d_{l+1} = d_l + s_l r_l``; with one shared pool (S'MoRE#) every
    ``d_l = s r`` for ``l >= 1``.

    Example:
        >>> message_dims([4, 4], [8, 8]), message_dims([4, 4], [8, 8], shared_pool=True)
        ([0, 32, 64], [0, 32, 32])
    """
    s, r = _positive_ints("num_experts", num_experts), _positive_ints("rank", rank)
    if len(s) != len(r) or not s:
        raise ValueError(
            f"Expected one rank per expert layer and at least one layer (got num_experts={s}, "
            f"rank={r})"
        )
    if shared_pool:
        if len(set(s)) > 1 or len(set(r)) > 1:
            raise ValueError(
                "Expected the same num_experts and rank in every layer with shared_pool=True "
                f"(got num_experts={s}, rank={r})"
            )
        return [0] + [s[0] * r[0]] * len(s)
    dims = [0]
    for sl, rl in zip(s, r):
        dims.append(dims[-1] + sl * rl)
    return dims


def num_structures(num_experts: Sequence[int], fanout: Sequence[int]) -> int:
    r"""Theorem 3.4: ``Gamma_S'MoRE``, the routing trees the router can produce.

    .. math::
        \Gamma_{S'MoRE} = \prod_{l=0}^{L-1} \binom{s_l}{f_l}^{F_{l+1}}

    Each of the ``F_{l+1}`` parents above layer ``l`` picks its own ``f_l``-subset (sibling
    order does not matter). The paper proves S'MoRE separates all of them for suitable
    parameters, so this is also its exact structural flexibility.

    Example:
        >>> num_structures([4, 4], [2, 2])  # 6 ** (2 + 1)
        216
    """
    check_layers(num_experts, fanout)
    nodes = nodes_per_layer(fanout)
    return math.prod(
        math.comb(s, f) ** nodes[l + 1] for l, (s, f) in enumerate(zip(num_experts, fanout))
    )


def momor_upper_bound(num_experts: Sequence[int], fanout: Sequence[int]) -> int:
    r"""Theorem 3.3: the upper bound on MoMOR's structural flexibility.

    .. math::
        \Gamma_{MoMOR} \le \binom{s_{L-1}}{f_{L-1}}
        \prod_{l=0}^{L-2} \sum_{i=f_l}^{\min(F_l, s_l)} \binom{s_l}{i}

    MoMOR only sees the set of experts used in each layer; below the top, the ``F_{l+1}``
    parents' children form a union of ``f_l`` to ``min(F_l, s_l)`` experts.

    Example:
        >>> momor_upper_bound([4, 4], [2, 2])  # 6 * (C(4,2) + C(4,3) + C(4,4))
        66
    """
    check_layers(num_experts, fanout)
    nodes, top = nodes_per_layer(fanout), len(fanout) - 1
    below = math.prod(
        sum(
            math.comb(num_experts[l], i)
            for i in range(fanout[l], min(nodes[l], num_experts[l]) + 1)
        )
        for l in range(top)
    )
    return math.comb(num_experts[top], fanout[top]) * below


def smore_star_structures(num_experts: Sequence[int], fanout: Sequence[int]) -> int:
    r"""S'MoRE* (activation on the aggregated children): distinct outputs, our closed form.

    Not in the paper; checked by brute force in ``theory``. With equal edge weights a node's
    message depends only on the *set* of its children's experts and the *multiset* of their
    own messages, so

    .. math::
        T_1 = \binom{s_0}{f_0}, \qquad
        T_{l+1} = \binom{s_l}{f_l} \binom{T_l + f_l - 1}{f_l}, \qquad
        \Gamma_{S'MoRE^*} = T_L

    (``C(T + f - 1, f)`` counts the multisets of size ``f`` drawn from ``T`` values).

    Example:
        >>> smore_star_structures([4, 4], [2, 2])  # 6 * C(6 + 1, 2)
        126
    """
    check_layers(num_experts, fanout)
    messages = math.comb(num_experts[0], fanout[0])
    for s, f in zip(num_experts[1:], fanout[1:]):
        messages = math.comb(s, f) * math.comb(messages + f - 1, f)
    return messages


def figure2_values(
    num_experts: int = 4, fanout: int = 2, max_layers: int = 3
) -> list[tuple[int, int, int]]:
    """The paper's Figure 2: ``(L, Gamma_S'MoRE, MoMOR bound)`` for ``L = 1 .. max_layers``.

    Every layer has ``num_experts`` experts and fanout ``fanout``.

    Example:
        >>> figure2_values(4, 2, 3)
        [(1, 6, 6), (2, 216, 66), (3, 279936, 726)]
    """
    if max_layers < 1:
        raise ValueError(f"Expected max_layers >= 1 (got {max_layers})")
    rows = []
    for depth in range(1, max_layers + 1):
        s, f = [num_experts] * depth, [fanout] * depth
        rows.append((depth, num_structures(s, f), momor_upper_bound(s, f)))
    return rows

"""Closed forms of the structural-flexibility counts (SPEC §7; Zeng et al., arXiv 2504.06426).

Every function returns an exact Python ``int``. Per-layer lists are indexed bottom first, as in
:class:`smore_gnn.SMoREConfig`: ``num_experts[l] = s_l`` and ``fanout[l] = f_l``; the top layer
``L-1`` is picked by the root.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _check(num_experts: Sequence[int], fanout: Sequence[int]) -> None:
    if len(num_experts) != len(fanout) or not num_experts:
        raise ValueError(
            "Expected one fanout per expert layer and at least one layer "
            f"(got num_experts={list(num_experts)}, fanout={list(fanout)})"
        )
    for l, (s, f) in enumerate(zip(num_experts, fanout)):
        if not 1 <= f <= s:
            raise ValueError(f"Expected 1 <= fanout[{l}] <= num_experts[{l}] (got f={f}, s={s})")


def uniform(num_experts: int, fanout: int, num_layers: int) -> tuple[list[int], list[int]]:
    """``([s] * L, [f] * L)``: the per-layer lists of a config with equal layers."""
    return [num_experts] * num_layers, [fanout] * num_layers


def nodes_per_layer(fanout: Sequence[int]) -> list[int]:
    """``[F_0, ..., F_L]``: nodes of layer ``l`` in one routing tree.

    ``F_L = 1`` (the root) and ``F_l = f_l F_{l+1}`` (SPEC §2).
    """
    nodes = [1]
    for f in reversed(fanout):
        nodes.insert(0, f * nodes[0])
    return nodes


def gamma_smore(num_experts: Sequence[int], fanout: Sequence[int]) -> int:
    r"""Theorem 3.4: structural flexibility of S'MoRE (exact).

    .. math::
        \Gamma_{S'MoRE} = \min_x \mathrm{dist}(x; \Theta')
        = \prod_{l=0}^{L-1} \binom{s_l}{f_l}^{F_{l+1}}

    Each of the ``F_{l+1}`` parents of layer ``l`` picks its own ``f_l``-subset, so this is also
    the number of routing trees the router can produce (up to sibling order).

    Args:
        num_experts: ``s_l`` per layer, bottom first.
        fanout: ``f_l`` per layer, bottom first.

    Returns:
        The exact count as a Python int.
    """
    _check(num_experts, fanout)
    nodes = nodes_per_layer(fanout)
    return math.prod(
        math.comb(s, f) ** nodes[l + 1] for l, (s, f) in enumerate(zip(num_experts, fanout))
    )


def gamma_momor_bound(num_experts: Sequence[int], fanout: Sequence[int]) -> int:
    r"""Theorem 3.3: upper bound on the structural flexibility of MoMOR.

    .. math::
        \Gamma_{MoMOR} = \max_{x, \Theta} \mathrm{dist}(x; \Theta) \le
        \binom{s_{L-1}}{f_{L-1}} \prod_{l=0}^{L-2} \sum_{i=f_l}^{\min(F_l, s_l)} \binom{s_l}{i}

    MoMOR sees only the set of experts used in each layer; below the top the ``F_{l+1}``
    parents' children form a union of ``f_l`` to ``min(F_l, s_l)`` experts.

    Args:
        num_experts: ``s_l`` per layer, bottom first.
        fanout: ``f_l`` per layer, bottom first.

    Returns:
        The exact bound as a Python int.
    """
    _check(num_experts, fanout)
    nodes, top = nodes_per_layer(fanout), len(fanout) - 1
    below = math.prod(
        sum(
            math.comb(num_experts[l], i)
            for i in range(fanout[l], min(nodes[l], num_experts[l]) + 1)
        )
        for l in range(top)
    )
    return math.comb(num_experts[top], fanout[top]) * below


def gamma_smore_star(num_experts: Sequence[int], fanout: Sequence[int]) -> int:
    r"""S'MoRE* (Sec. 3.6 variant; not in the paper): our closed form, checked by brute force.

    With equal edge weights and no activation at the root, node ``n`` of layer ``l + 1`` has
    ``m_n = alpha sum_c r_{e(c)} + alpha W_l sum_c sigma(m_c) + const``: it only depends on the
    *set* of its children's experts and the *multiset* of their own messages ``m_c``; which
    child carries which sub-tree is forgotten. Counting those pairs layer by layer:

    .. math::
        T_1 = \binom{s_0}{f_0}, \qquad
        T_{l+1} = \binom{s_l}{f_l} \binom{T_l + f_l - 1}{f_l} \; (l \ge 1), \qquad
        \Gamma_{S'MoRE^*} = T_L

    (``C(T + f - 1, f)`` counts multisets of size ``f`` drawn from ``T`` values).

    Args:
        num_experts: ``s_l`` per layer, bottom first.
        fanout: ``f_l`` per layer, bottom first.

    Returns:
        The count as a Python int.
    """
    _check(num_experts, fanout)
    messages = math.comb(num_experts[0], fanout[0])
    for s, f in zip(num_experts[1:], fanout[1:]):
        messages = math.comb(s, f) * math.comb(messages + f - 1, f)
    return messages


def figure2_values(
    num_experts: int = 4, fanout: int = 2, max_layers: int = 3
) -> list[tuple[int, int, int]]:
    """Figure 2 of the paper: ``(L, Gamma_S'MoRE, Gamma_MoMOR bound)`` for ``L = 1..max_layers``.

    With the defaults (``s = 4``, ``f = 2``): ``(1, 6, 6)``, ``(2, 216, 66)``,
    ``(3, 279936, 726)``.
    """
    rows = []
    for L in range(1, max_layers + 1):
        s, f = uniform(num_experts, fanout, L)
        rows.append((L, gamma_smore(s, f), gamma_momor_bound(s, f)))
    return rows

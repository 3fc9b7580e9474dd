"""Inspect routed sub-trees: expert counts, co-routing, load entropy, tree comparison.

Plain tensor/Python helpers behind :mod:`smore_gnn.viz` and the notebooks (SPEC §4, §7).
A token's tree is compared the way the paper's structural-flexibility argument (Sec. 3.5)
does: two tokens have the *same structure* when their labelled rooted trees are isomorphic
(siblings are unordered, gate scores ignored); MoMOR sees only the *set* of experts active in
each layer, so two trees with equal per-layer sets but different wiring are the pairs only
S'MoRE can tell apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import torch
from torch import Tensor

from smore_gnn.layer import SMoRELinear
from smore_gnn.router import RoutingResult
from smore_gnn.tree import RoutingTree

TreeLike = RoutingTree | RoutingResult | SMoRELinear
Signature = tuple  # nested ``(layer, expert, (child signatures, sorted))``


def as_tree(routing_or_tree: TreeLike) -> RoutingTree:
    """Return a :class:`RoutingTree` for a tree, a :class:`RoutingResult` or an adapted layer."""
    if isinstance(routing_or_tree, RoutingTree):
        return routing_or_tree
    if isinstance(routing_or_tree, RoutingResult):
        return RoutingTree.from_routing(routing_or_tree)
    if isinstance(routing_or_tree, SMoRELinear) and routing_or_tree.last_tree is not None:
        return routing_or_tree.last_tree
    raise TypeError(
        "Expected a RoutingTree, a RoutingResult or an SMoRELinear after a forward "
        f"(got {type(routing_or_tree).__name__})"
    )


def num_experts_of(routing_or_tree: TreeLike) -> list[int] | None:
    """``[s_0, ..., s_{L-1}]`` when the object knows it (a layer, or a routing with loads)."""
    if isinstance(routing_or_tree, SMoRELinear):
        return list(routing_or_tree.config.num_experts)
    if isinstance(routing_or_tree, RoutingResult) and routing_or_tree.load:
        return [int(load.numel()) for load in routing_or_tree.load]
    return None


def _check_layer(tree: RoutingTree, layer: int) -> None:
    if not 0 <= layer < tree.num_layers:
        raise ValueError(f"layer must be in [0, {tree.num_layers - 1}] (got {layer})")


def _num_experts(tree: RoutingTree, layer: int, num_experts: int | None) -> int:
    seen = int(tree.experts[layer].max()) + 1 if tree.experts[layer].numel() else 0
    if num_experts is None:
        return seen
    if num_experts < seen:
        raise ValueError(f"num_experts={num_experts} but layer {layer} uses expert {seen - 1}")
    return num_experts


def expert_counts(routing_or_tree: TreeLike, layer: int, num_experts: int | None = None) -> Tensor:
    """How many nodes of each token's layer-``layer`` tree use each expert.

    Args:
        routing_or_tree: the routed sub-trees (or the routing they were built from).
        layer: expert layer ``l`` (0 = leaves).
        num_experts: ``s_l``; inferred from the largest id used when ``None``.

    Returns:
        ``[N, s_l]`` long counts; every row sums to ``F_l``.
    """
    tree = as_tree(routing_or_tree)
    _check_layer(tree, layer)
    s = _num_experts(tree, layer, num_experts)
    picked = tree.experts[layer].long()  # [N, F_l]
    counts = torch.zeros(picked.size(0), s, dtype=torch.long, device=picked.device)
    return counts.scatter_add_(1, picked, torch.ones_like(picked))  # [N, s_l]


def coroute_counts(
    routing_or_tree: TreeLike,
    layer: int,
    num_experts: Sequence[int] | None = None,
) -> Tensor:
    """Parent-expert -> child-expert counts over all tokens' edges from ``layer`` to ``layer+1``.

    Args:
        routing_or_tree: the routed sub-trees.
        layer: the child layer ``l``; for the top layer the only parent is the root (one row).
        num_experts: ``(s_l, s_{l+1})`` (``s_{l+1}`` is unused for the top layer); inferred
            from the ids used when ``None``.

    Returns:
        ``[s_{l+1}, s_l]`` long counts (``[1, s_l]`` for the top layer); entry ``[p, c]``
        counts the edges whose child uses expert ``c`` and whose parent uses expert ``p``.
    """
    tree = as_tree(routing_or_tree)
    _check_layer(tree, layer)
    s_child, s_parent = (None, None) if num_experts is None else num_experts
    s_child = _num_experts(tree, layer, s_child)
    child = tree.experts[layer].long()  # [N, F_l]
    if layer == tree.num_layers - 1:
        parent, s_parent = torch.zeros_like(child), 1
    else:
        s_parent = _num_experts(tree, layer + 1, s_parent)
        parent = tree.experts[layer + 1].long().repeat_interleave(tree.fanout[layer], dim=1)
    flat = (parent * s_child + child).reshape(-1)  # [N * F_l] joint (parent, child) id
    counts = torch.bincount(flat, minlength=s_parent * s_child)
    return counts.reshape(s_parent, s_child)


def load_entropy(load: Tensor | Sequence[float]) -> float:
    """Entropy of the load share ``load / load.sum()``, normalised to ``[0, 1]`` by ``log s``.

    1 means perfectly balanced experts, 0 means one expert takes every pick.
    """
    load = torch.as_tensor(load, dtype=torch.float64).flatten()
    if load.numel() < 2 or float(load.sum()) <= 0:
        return 0.0
    p = load / load.sum()
    h = -(p * p.clamp_min(1e-300).log()).sum()
    return float(h / math.log(load.numel()))


def routing_stats(
    routing_or_tree: TreeLike, num_experts: Sequence[int] | None = None
) -> dict[str, list]:
    """Per-layer load share and normalised load entropy of one routing (counts of picks).

    Args:
        routing_or_tree: the routed sub-trees.
        num_experts: ``[s_0, ..., s_{L-1}]``; inferred from the ids used when ``None``.

    Returns:
        ``{"entropy": [float per layer], "load_share": [[float per expert] per layer]}``, the
        format :func:`smore_gnn.viz.plot_entropy_curve` reads from a list of such dicts.
    """
    tree = as_tree(routing_or_tree)
    sizes = [None] * tree.num_layers if num_experts is None else list(num_experts)
    entropy, share = [], []
    for l in range(tree.num_layers):
        load = expert_counts(tree, l, sizes[l]).sum(0).double()  # [s_l]
        entropy.append(load_entropy(load))
        share.append((load / load.sum().clamp_min(1)).tolist())
    return {"entropy": entropy, "load_share": share}


def tree_signature(routing_or_tree: TreeLike, token: int) -> Signature:
    """Canonical form of token ``token``'s labelled routed tree (siblings unordered).

    Two tokens get equal signatures iff their trees are isomorphic as rooted trees labelled
    by ``(layer, expert)``: exactly when S'MoRE's structure (Theorem 3.4) is the same.
    """
    tree = as_tree(routing_or_tree)
    if not 0 <= token < tree.num_tokens:
        raise IndexError(f"RoutingTree has {tree.num_tokens} tokens (got token={token})")
    # bottom-up: the signatures of layer l's nodes, in node order
    level = [(0, int(e), ()) for e in tree.experts[0][token].tolist()]
    for l in range(1, tree.num_layers + 1):
        f = tree.fanout[l - 1]
        kids = [tuple(sorted(level[j : j + f])) for j in range(0, len(level), f)]
        experts = tree.experts[l][token].tolist() if l < tree.num_layers else [-1]
        level = [(l, int(e), k) for e, k in zip(experts, kids)]
    return level[0]


def expert_sets(routing_or_tree: TreeLike, token: int) -> tuple[frozenset[int], ...]:
    """Per layer, the set of experts token ``token`` activates: all that MoMOR sees (§7.1)."""
    tree = as_tree(routing_or_tree)
    return tuple(frozenset(e[token].tolist()) for e in tree.experts)


@dataclass
class TreePairs:
    """Token pairs ``(i, j)``, ``i < j``, grouped by how their routed trees compare.

    Attributes:
        identical: isomorphic labelled trees (the same structure).
        rewired: the same expert set in every layer, but wired differently: MoMOR gives both
            tokens the same structure, S'MoRE does not.
        different: some layer activates different experts.
    """

    identical: list[tuple[int, int]] = field(default_factory=list)
    rewired: list[tuple[int, int]] = field(default_factory=list)
    different: list[tuple[int, int]] = field(default_factory=list)


def find_tree_pairs(routing_or_tree: TreeLike, tokens: Sequence[int] | None = None) -> TreePairs:
    """Classify every pair of ``tokens`` (default: all) as identical, rewired or different."""
    tree = as_tree(routing_or_tree)
    tokens = range(tree.num_tokens) if tokens is None else tokens
    sigs = {t: tree_signature(tree, t) for t in tokens}
    sets = {t: expert_sets(tree, t) for t in tokens}
    pairs = TreePairs()
    for i, j in combinations(sorted(sigs), 2):
        if sigs[i] == sigs[j]:
            pairs.identical.append((i, j))
        elif sets[i] == sets[j]:
            pairs.rewired.append((i, j))
        else:
            pairs.different.append((i, j))
    return pairs


def num_distinct_structures(
    routing_or_tree: TreeLike, tokens: Sequence[int] | None = None
) -> tuple[int, int]:
    """``(S'MoRE structures, MoMOR structures)`` seen among ``tokens`` (default: all)."""
    tree = as_tree(routing_or_tree)
    tokens = range(tree.num_tokens) if tokens is None else tokens
    return (
        len({tree_signature(tree, t) for t in tokens}),
        len({expert_sets(tree, t) for t in tokens}),
    )

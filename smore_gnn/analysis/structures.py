"""Compare routed sub-trees the way the structural-flexibility argument does (docs/spec.md §7).

Two tokens have the *same structure* when their labelled rooted trees are isomorphic (siblings
unordered, gate scores ignored): exactly what S'MoRE can distinguish (Theorem 3.4). MoMOR sees
only the *set* of experts active in each layer, so trees with equal per-layer sets but
different wiring ("rewired" pairs) are the ones only S'MoRE tells apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from smore_gnn.analysis.routing import TreeLike, as_tree

Signature = tuple  # nested ``(layer, expert, (child signatures, sorted))``


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


def structure_summary(
    trees: Mapping[str, TreeLike], tokens: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """Per routing (e.g. per adapted module), how many distinct structures its tokens use.

    Args:
        trees: ``{name: routing}``, e.g. ``SMoREModel.adapters()`` after a forward.
        tokens: the tokens to compare (default: all).

    Returns:
        One dict per entry, in order: ``name``, ``tokens``, ``smore_structures``,
        ``momor_structures`` (distinct per-layer expert sets) and the number of
        ``identical`` / ``rewired`` / ``different`` token pairs (see :class:`TreePairs`).
    """
    rows = []
    for name, item in trees.items():
        tree = as_tree(item)
        pairs = find_tree_pairs(tree, tokens)
        smore, momor = num_distinct_structures(tree, tokens)
        rows.append(
            {
                "name": name,
                "tokens": tree.num_tokens if tokens is None else len(tokens),
                "smore_structures": smore,
                "momor_structures": momor,
                "identical": len(pairs.identical),
                "rewired": len(pairs.rewired),
                "different": len(pairs.different),
            }
        )
    return rows

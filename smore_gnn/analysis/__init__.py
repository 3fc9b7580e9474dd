"""Inspect routed sub-trees: expert counts, co-routing, load entropy, tree comparison.

Plain tensor/Python helpers behind :mod:`smore_gnn.viz` and the notebooks (SPEC §4, §7):
:mod:`~smore_gnn.analysis.routing` (usage statistics, a training-time recorder) and
:mod:`~smore_gnn.analysis.structures` (which tokens share a routing structure).
"""

from smore_gnn.analysis.routing import (
    RoutingRecorder,
    TreeLike,
    as_tree,
    coroute_counts,
    expert_counts,
    load_entropy,
    num_experts_of,
    routing_stats,
)
from smore_gnn.analysis.structures import (
    Signature,
    TreePairs,
    expert_sets,
    find_tree_pairs,
    num_distinct_structures,
    structure_summary,
    tree_signature,
)

__all__ = [
    "TreeLike",
    "as_tree",
    "expert_counts",
    "coroute_counts",
    "load_entropy",
    "num_experts_of",
    "routing_stats",
    "RoutingRecorder",
    "Signature",
    "tree_signature",
    "expert_sets",
    "TreePairs",
    "find_tree_pairs",
    "num_distinct_structures",
    "structure_summary",
]

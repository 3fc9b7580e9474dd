"""Inspect routed sub-trees: expert counts, co-routing, load entropy, tree comparison, health.

Plain tensor/Python helpers behind :mod:`smore_gnn.viz` and the notebooks (docs/spec.md §4, §7):
:mod:`~smore_gnn.analysis.routing` (usage statistics, a training-time recorder),
:mod:`~smore_gnn.analysis.structures` (which tokens share a routing structure),
:mod:`~smore_gnn.analysis.metrics` (the routing-health metrics, defined once),
:mod:`~smore_gnn.analysis.information` (entropy, normalised mutual information),
:mod:`~smore_gnn.analysis.collect` (routings of held-out tokens, padding left out),
:mod:`~smore_gnn.analysis.rank` (the rank of an adapter's updates) and
:mod:`~smore_gnn.analysis.health` (``routing_health`` and its training callback).
"""

from smore_gnn.analysis.collect import (
    CollectedRouting,
    adapters_of,
    collect_routings,
    text_batches,
    token_texts,
)
from smore_gnn.analysis.health import (
    RoutingHealthCallback,
    health_of,
    last_forward_health,
    routing_health,
    summarize,
    task_codes,
)
from smore_gnn.analysis.information import (
    entropy,
    load_entropy,
    mutual_information,
    normalized_mutual_info,
)
from smore_gnn.analysis.metrics import (
    expert_load,
    gate_spread,
    layer_health,
    layer_ids,
    load_health,
    module_health,
    structure_ids,
    task_expert_counts,
    typical_tokens,
)
from smore_gnn.analysis.rank import (
    delta_function,
    jacobian_rank,
    numerical_rank,
    rank_report,
    update_rank,
)
from smore_gnn.analysis.routing import (
    RoutingRecorder,
    TreeLike,
    adapters_routing_stats,
    as_tree,
    coroute_counts,
    expert_counts,
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
    "delta_function",
    "jacobian_rank",
    "numerical_rank",
    "rank_report",
    "update_rank",
    "TreeLike",
    "as_tree",
    "expert_counts",
    "coroute_counts",
    "load_entropy",
    "num_experts_of",
    "routing_stats",
    "adapters_routing_stats",
    "RoutingRecorder",
    "Signature",
    "tree_signature",
    "expert_sets",
    "TreePairs",
    "find_tree_pairs",
    "num_distinct_structures",
    "structure_summary",
    "CollectedRouting",
    "adapters_of",
    "collect_routings",
    "text_batches",
    "token_texts",
    "routing_health",
    "health_of",
    "last_forward_health",
    "summarize",
    "task_codes",
    "RoutingHealthCallback",
    "entropy",
    "mutual_information",
    "normalized_mutual_info",
    "gate_spread",
    "expert_load",
    "load_health",
    "layer_ids",
    "structure_ids",
    "task_expert_counts",
    "typical_tokens",
    "layer_health",
    "module_health",
]

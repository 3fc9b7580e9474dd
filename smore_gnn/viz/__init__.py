"""Pictures of S'MoRE routing: routed sub-trees, expert usage, co-routing, Figure 2, health.

Every function returns a pyplot-free :class:`matplotlib.figure.Figure` (safe under any
backend, nothing is shown or kept alive by pyplot) and saves it when given ``path``.
"""

from smore_gnn.viz.health import (
    draw_task_trees,
    plot_health_history,
    plot_routing_health,
    plot_task_expert_heatmap,
)
from smore_gnn.viz.stats import (
    plot_coroute_matrix,
    plot_entropy_curve,
    plot_expert_usage,
    plot_gamma_vs_layers,
)
from smore_gnn.viz.trees import draw_routing_tree, draw_routing_trees, tree_layout

__all__ = [
    "draw_routing_tree",
    "draw_routing_trees",
    "tree_layout",
    "plot_expert_usage",
    "plot_coroute_matrix",
    "plot_entropy_curve",
    "plot_gamma_vs_layers",
    "plot_task_expert_heatmap",
    "plot_routing_health",
    "plot_health_history",
    "draw_task_trees",
]

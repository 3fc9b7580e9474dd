"""S'MoRE (Structural Mixture of Residual Experts) as a PyTorch Geometric GNN.

Zeng et al., "S'MoRE: Structural Mixture of Residual Experts for Parameter-Efficient LLM
Fine-tuning", NeurIPS 2025, https://arxiv.org/abs/2504.06426.
"""

from smore_gnn.accounting import active_parameters, count_parameters, flops_per_token
from smore_gnn.config import SMoREConfig
from smore_gnn.conv import SMoREConv
from smore_gnn.dense import dense_delta
from smore_gnn.layer import SMoRELinear
from smore_gnn.router import RoutingResult, SMoRERouter
from smore_gnn.runtime import compile_adapters
from smore_gnn.tree import RoutingTree, build_routing_tree

__version__ = "0.2.0"

__all__ = [
    "SMoREConfig",
    "SMoRERouter",
    "RoutingResult",
    "RoutingTree",
    "build_routing_tree",
    "SMoREConv",
    "SMoRELinear",
    "compile_adapters",
    "dense_delta",
    "count_parameters",
    "active_parameters",
    "flops_per_token",
]

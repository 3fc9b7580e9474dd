"""S'MoRE (Structural Mixture of Residual Experts) as a PyTorch Geometric GNN.

Zeng et al., "S'MoRE: Structural Mixture of Residual Experts for Parameter-Efficient LLM
Fine-tuning", NeurIPS 2025, https://arxiv.org/abs/2504.06426.

The package reads like the method (docs/architecture.md):

* :mod:`smore_gnn.nn`: the adapter itself: config, router, routed sub-trees, the conv, the
  layer, cost accounting and the dense reference (torch and PyG only);
* :mod:`smore_gnn.hf`: Hugging Face integration: ``SMoREModel`` with peft's API, adapter
  folders, the method registry (S'MoRE, MoLRE, LoRA through peft), offline model loading;
* :mod:`smore_gnn.train`: the ``Trainer`` with the balance loss, optimizer groups, evaluation;
* :mod:`smore_gnn.data`: JSONL records, the bundled datasets and their builders;
* :mod:`smore_gnn.analysis` and :mod:`smore_gnn.viz`: routing statistics and plots;
* :mod:`smore_gnn.cli`: the ``smore-gnn`` command.

This facade covers the common calls; the Hugging Face names load on first use, so importing
the adapter alone does not import ``transformers``.
"""

from __future__ import annotations

from typing import Any

from smore_gnn._version import __version__
from smore_gnn.nn.accounting import active_parameters, count_parameters, flops_per_token
from smore_gnn.nn.config import SMoREConfig
from smore_gnn.nn.conv import SMoREConv
from smore_gnn.nn.layer import SMoRELinear
from smore_gnn.nn.router import RoutingResult, SMoRERouter
from smore_gnn.nn.runtime import compile_adapters
from smore_gnn.nn.tree import RoutingTree, build_routing_tree


def __getattr__(name: str) -> Any:
    """The Hugging Face names, imported on first use (PEP 562)."""
    if name in ("SMoREModel", "get_smore_model"):
        from smore_gnn.hf import model

        return getattr(model, name)
    if name in ("paper_config", "get_method"):
        from smore_gnn.hf import methods

        return methods.smore_paper_config if name == "paper_config" else methods.get_method
    if name == "SMoRETrainer":
        from smore_gnn.train.trainer import SMoRETrainer

        return SMoRETrainer
    raise AttributeError(f"module 'smore_gnn' has no attribute {name!r}")


__all__ = [
    "__version__",
    "SMoREConfig",
    "SMoRERouter",
    "RoutingResult",
    "RoutingTree",
    "build_routing_tree",
    "SMoREConv",
    "SMoRELinear",
    "SMoREModel",
    "get_smore_model",
    "paper_config",
    "get_method",
    "SMoRETrainer",
    "compile_adapters",
    "count_parameters",
    "active_parameters",
    "flops_per_token",
]

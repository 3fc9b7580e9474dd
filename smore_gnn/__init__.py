"""S'MoRE (Structural Mixture of Residual Experts) as a PyTorch Geometric GNN.

Zeng et al., "S'MoRE: Structural Mixture of Residual Experts for Parameter-Efficient LLM
Fine-tuning", NeurIPS 2025, https://arxiv.org/abs/2504.06426.

Everything a notebook or the README needs is importable from here::

    from smore_gnn import SMoREConfig, get_smore_model, paper_config, tiny_llama

The package reads like the method (docs/architecture.md):

* :mod:`smore_gnn.nn`: the adapter itself: config, router, routed sub-trees, the conv, the
  layer, cost accounting and the dense reference (torch and PyG only);
* :mod:`smore_gnn.hf`: Hugging Face integration: ``SMoREModel`` with peft's API, adapter
  folders, the method registry (S'MoRE, MoLRE, LoRA through peft), offline model loading;
* :mod:`smore_gnn.train`: the ``Trainer`` with the balance loss, optimizer groups, evaluation;
* :mod:`smore_gnn.data`: JSONL records, the bundled datasets and their builders;
* :mod:`smore_gnn.analysis` and :mod:`smore_gnn.viz`: routing statistics and plots;
* :mod:`smore_gnn.cli`: the ``smore-gnn`` command.

This facade covers the common calls; the Hugging Face, training and data names load on first
use.
"""

from __future__ import annotations

from typing import Any

from smore_gnn._version import __version__
from smore_gnn.nn.accounting import active_parameters, count_parameters, flops_per_token
from smore_gnn.nn.config import SMoREConfig
from smore_gnn.nn.conv import SMoREConv
from smore_gnn.nn.counting import (
    figure2_values,
    momor_upper_bound,
    num_structures,
    smore_star_structures,
)
from smore_gnn.nn.layer import SMoRELinear
from smore_gnn.nn.router import RoutingResult, SMoRERouter
from smore_gnn.nn.runtime import choose_threads, compile_adapters
from smore_gnn.nn.settings import SpeedSettings
from smore_gnn.nn.tree import RoutingTree, build_routing_tree

# Facade names imported on first use (PEP 562): importing the adapter does not load the
# Hugging Face integration, the trainer or the data package.
_HF_MODEL = ("SMoREModel", "get_smore_model")
_TRAINER = ("SMoRETrainer", "build_trainer", "training_arguments")


def __getattr__(name: str) -> Any:
    if name in _HF_MODEL:
        from smore_gnn.hf import model

        return getattr(model, name)
    if name == "paper_config":
        from smore_gnn.hf.methods import smore_paper_config

        return smore_paper_config
    if name == "get_method":
        from smore_gnn.hf.methods import get_method

        return get_method
    if name == "load_model_and_tokenizer":
        from smore_gnn.hf.loading import load_model_and_tokenizer

        return load_model_and_tokenizer
    if name == "tiny_llama":
        from smore_gnn.hf.testing import tiny_llama

        return tiny_llama
    if name in _TRAINER:
        from smore_gnn.train import trainer

        return getattr(trainer, name)
    if name == "evaluate_mc":
        from smore_gnn.train.evaluation import evaluate_mc

        return evaluate_mc
    if name == "load_bundled":
        from smore_gnn.data import load_bundled

        return load_bundled
    if name == "mc_prompt":
        from smore_gnn.data.records import mc_prompt

        return mc_prompt
    raise AttributeError(f"module 'smore_gnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "__version__",
    "SMoREConfig",
    "SMoRERouter",
    "RoutingResult",
    "RoutingTree",
    "build_routing_tree",
    "SMoREConv",
    "SMoRELinear",
    "SpeedSettings",
    "SMoREModel",
    "get_smore_model",
    "paper_config",
    "get_method",
    "load_model_and_tokenizer",
    "tiny_llama",
    "SMoRETrainer",
    "build_trainer",
    "training_arguments",
    "evaluate_mc",
    "load_bundled",
    "mc_prompt",
    "choose_threads",
    "compile_adapters",
    "count_parameters",
    "num_structures",
    "momor_upper_bound",
    "smore_star_structures",
    "figure2_values",
    "active_parameters",
    "flops_per_token",
]

"""Deprecated: the baselines moved to the method registry :mod:`smore_gnn.methods`.

This module re-exports the 0.1 names (by-name calls go through :func:`get_method`) until every
caller has switched; it will be removed.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from smore_gnn.methods import (
    Budgeted,
    Spec,
    auxiliary_loss,
    get_method,
    load_any,
    method_names,
    molre_config,
    smore_paper_config,
    trainable_parameters,
)
from smore_gnn.model import Patterns

METHODS = method_names()
__all__ = [
    "METHODS", "Budgeted", "apply_method", "auxiliary_loss", "count_adapter_parameters",
    "load_method_adapter", "match_parameters", "molre_config", "smore_paper_config",
    "trainable_parameters",
]  # fmt: skip


def count_adapter_parameters(
    method: str, model: nn.Module, target_modules: Patterns | None, spec: Spec
) -> int:
    """``get_method(method).count(model, target_modules, spec)``."""
    return get_method(method).count(model, target_modules, spec)


def match_parameters(
    method: str,
    model: nn.Module,
    target_modules: Patterns | None,
    budget: int,
    template: Spec | None = None,
    max_rank: int = 512,
) -> Budgeted:
    """``get_method(method).match_budget(model, target_modules, budget, template, max_rank)``."""
    return get_method(method).match_budget(model, target_modules, budget, template, max_rank)


def apply_method(
    method: str, model: nn.Module, spec: Spec, target_modules: Patterns | None = None
) -> nn.Module:
    """``get_method(method).build(model, spec, target_modules)``."""
    return get_method(method).build(model, spec, target_modules)


def load_method_adapter(
    model: nn.Module, directory: str | Path, trainable: bool = False
) -> nn.Module:
    """``load_any(model, directory, is_trainable=trainable)``."""
    return load_any(model, directory, is_trainable=trainable)

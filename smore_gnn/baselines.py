"""Deprecated: the baselines moved to the method registry :mod:`smore_gnn.methods`.

This module re-exports the 0.1 names (by-name calls go through :func:`get_method`) until every
caller has switched; it will be removed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from smore_gnn.methods import (
    Budgeted,
    Spec,  # noqa: F401 (importable here in 0.1)
    auxiliary_loss,
    get_method,
    load_any,
    method_names,
    molre_config,
    smore_paper_config,
    trainable_parameters,
)
from smore_gnn.model import Patterns  # noqa: F401 (importable here in 0.1)

METHODS = method_names()
__all__ = [
    "METHODS", "Budgeted", "apply_method", "auxiliary_loss", "count_adapter_parameters",
    "load_method_adapter", "match_parameters", "molre_config", "smore_paper_config",
    "trainable_parameters",
]  # fmt: skip


def _by_name(old: str, attribute: str) -> Callable[..., Any]:
    """The 0.1 function ``old(method, *args)``: ``get_method(method).<attribute>(*args)``."""

    def call(method: str, *args: Any, **kwargs: Any) -> Any:
        warnings.warn(
            f"smore_gnn.baselines.{old} is deprecated; call "
            f"smore_gnn.methods.get_method({method!r}).{attribute}(...) instead",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(get_method(method), attribute)(*args, **kwargs)

    call.__name__ = call.__qualname__ = old
    call.__doc__ = f"Deprecated: ``get_method(method).{attribute}(...)`` with the same arguments."
    return call


count_adapter_parameters = _by_name("count_adapter_parameters", "count")
match_parameters = _by_name("match_parameters", "match_budget")
apply_method = _by_name("apply_method", "build")


def load_method_adapter(
    model: nn.Module, directory: str | Path, trainable: bool = False
) -> nn.Module:
    """Deprecated: ``load_any(model, directory, is_trainable=trainable)``."""
    warnings.warn(
        "smore_gnn.baselines.load_method_adapter is deprecated; call "
        "smore_gnn.methods.load_any(model, directory, is_trainable=...) instead",
        DeprecationWarning,
        stacklevel=2,
    )
    return load_any(model, directory, is_trainable=trainable)

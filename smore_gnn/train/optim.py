"""Optimizer parameter groups: router parameters at their own learning rate.

S'MoRE's router (``SMoRERouter``: down-projection ``D``, the per-layer MLPs ``g_l``, keys and
noise weights) gets a gradient only through the gate scores and the balance loss, which is
small next to the experts' gradient early in training (``bench/router_study.py`` measures
it). :func:`param_groups` lets the router train at ``lr * router_lr_scale`` while everything
else trains at ``lr``. ``SMoRETrainer`` (:mod:`smore_gnn.train.trainer`) builds its optimizer
from these groups.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from torch import nn

#: A trainable parameter is a router parameter when its name contains this.
ROUTER_MARKER = "router."


def _positive(name: str, value: object, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number (got {value!r} of type {type(value).__name__})")
    ok = value >= 0 if allow_zero else value > 0
    if not (math.isfinite(value) and ok):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound} (got {value!r})")
    return float(value)


def is_router_parameter(name: str) -> bool:
    """Whether the parameter called ``name`` (``model.named_parameters()``) is a router's."""
    return ROUTER_MARKER in name


def param_groups(
    model: nn.Module, lr: float, router_lr_scale: float = 1.0, weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """Parameter groups for a ``torch.optim`` optimizer over the trainable parameters.

    Router parameters (names containing ``"router."``) get ``lr * router_lr_scale``, the
    others ``lr``. Weight decay applies to matrices only: biases and other 1-D tensors (and
    scalars) get none, as in the Hugging Face ``Trainer``. A parameter shared by several
    modules appears once. Empty groups are left out; each group carries a ``"name"``
    (``"router"``, ``"router_no_decay"``, ``"other"``, ``"other_no_decay"``).

    Args:
        model: the model to optimise (frozen parameters are skipped).
        lr: base learning rate, finite and > 0.
        router_lr_scale: router learning rate = ``lr * router_lr_scale``, finite and > 0.
        weight_decay: decoupled weight decay of the matrices, finite and >= 0.

    Returns:
        ``[{"name", "params", "lr", "weight_decay"}, ...]``.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or a number is not a number.
        ValueError: on a bad number or when ``model`` has no trainable parameter.

    Example:
        >>> opt = torch.optim.AdamW(param_groups(model, 1e-3, router_lr_scale=3.0))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module (got {type(model).__name__})")
    lr = _positive("lr", lr)
    scale = _positive("router_lr_scale", router_lr_scale)
    decay = _positive("weight_decay", weight_decay, allow_zero=True)
    groups: dict[str, list[nn.Parameter]] = {
        "router": [],
        "router_no_decay": [],
        "other": [],
        "other_no_decay": [],
    }
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        key = "router" if is_router_parameter(name) else "other"
        groups[key if param.dim() >= 2 else f"{key}_no_decay"].append(param)
    if not seen:
        raise ValueError(
            "model has no trainable parameter (every requires_grad is False); add an "
            "adapter or load it with is_trainable=True before building the optimizer"
        )
    out = []
    for key, params in groups.items():
        if params:
            group_lr = lr * scale if key.startswith("router") else lr
            wd = 0.0 if key.endswith("no_decay") else decay
            out.append({"name": key, "params": params, "lr": group_lr, "weight_decay": wd})
    return out

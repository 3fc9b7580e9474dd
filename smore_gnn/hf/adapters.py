"""Named S'MoRE adapters on a base model: their specs, layers, and folders (validated first).

An adapter is an :class:`AdapterSpec` (config, method label, target patterns, the matched
module names) plus one ``SMoRELinear`` per matched module, held by name in the
:class:`~smore_gnn.hf.layer.AdaptedLinear` at that module's slot. All adapters of a slot share
its frozen base linear.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from smore_gnn.hf import save as folder
from smore_gnn.hf.layer import AdaptedLinear
from smore_gnn.hf.targets import Patterns, base_linears, check_patterns
from smore_gnn.nn.config import SMoREConfig
from smore_gnn.nn.layer import SMoRELinear

# The labels an S'MoRE adapter folder may carry (the registry in ``methods.py`` builds on them).
ADAPTER_METHODS = ("smore", "molre")


def adapted_modules(model: nn.Module) -> dict[str, SMoRELinear]:
    """``{name: SMoRELinear}`` of every adapter inside ``model`` (active or not)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SMoRELinear)}


def adapted_slots(model: nn.Module) -> dict[str, AdaptedLinear]:
    """``{module name: AdaptedLinear}`` of the adapted slots of ``model``, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdaptedLinear)}


@dataclass(frozen=True)
class AdapterSpec:
    """What an adapter is, as ``adapter_config.json`` records it.

    Attributes:
        config: the adapter configuration.
        method: the method label (``"smore"`` or ``"molre"``).
        target_modules: the peft-style patterns the user gave.
        exclude_modules: patterns left out.
        names: the matched module names, in model order.
    """

    config: SMoREConfig
    method: str
    target_modules: Patterns
    exclude_modules: Patterns | None
    names: tuple[str, ...]

    def to_meta(self, base_model_name: str | None, version: str) -> dict[str, Any]:
        """The ``adapter_config.json`` contents (the format of smore-gnn 0.1)."""
        return {
            "method": self.method,
            "base_model_name_or_path": base_model_name,
            "target_modules": self.target_modules,
            "exclude_modules": self.exclude_modules,
            "adapted_modules": sorted(self.names),
            "smore_config": self.config.to_dict(),
            "smore_gnn_version": version,
        }


def check_adapter_name(name: object, existing: dict) -> None:
    """Raise unless ``name`` is a new, non-empty adapter name without dots."""
    if not isinstance(name, str) or not name or "." in name or "/" in name:
        raise ValueError(
            f"adapter_name must be a non-empty string without '.' or '/' (got {name!r}); "
            "e.g. 'default' or 'task_a'"
        )
    if hasattr(nn.ModuleDict(), name):  # a key of the layers' ModuleDict cannot shadow these
        raise ValueError(
            f"adapter_name {name!r} is the name of an nn.ModuleDict attribute, which the "
            "layers' adapter dict cannot hold; pick another name, e.g. 'task_a'"
        )
    if name in existing:
        raise ValueError(
            f"An adapter named {name!r} already exists (adapters: {list(existing)}); "
            "pick another name or delete_adapter it first"
        )


def check_spec(config: object, method: object, methods: tuple[str, ...]) -> None:
    """Raise unless ``config`` is an ``SMoREConfig`` and ``method`` a known S'MoRE label."""
    if not isinstance(config, SMoREConfig):
        raise TypeError(f"An S'MoRE adapter needs an SMoREConfig (got {type(config).__name__})")
    if method not in methods:
        raise ValueError(
            f"method must be one of {list(methods)} for an S'MoRE adapter (got {method!r}); "
            "LoRA adapters are built by smore_gnn.hf.methods.get_method('lora')"
        )


def make_layers(model: nn.Module, spec: AdapterSpec) -> dict[str, SMoRELinear]:
    """New ``SMoRELinear`` layers (one per name, on the model's base linears), not installed.

    Building one freezes its base linear (``requires_grad=False``); nothing else is touched.
    """
    linears = base_linears(model)
    return {name: SMoRELinear(linears[name], spec.config) for name in spec.names}


def put(model: nn.Module, name: str, module: nn.Module) -> None:
    """Place ``module`` at ``name`` in ``model``."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def adapter_tensors(layers: dict[str, SMoRELinear]) -> dict[str, Tensor]:
    """The adapter's tensors as saved (CPU, contiguous, shared ones once)."""
    params = folder.adapter_parameters(layers)
    return {k: p.detach().cpu().contiguous() for k, p in params.items()}


def read_folder(
    model: nn.Module, directory: str | Path, methods: tuple[str, ...]
) -> tuple[AdapterSpec, dict[str, Tensor]]:
    """The spec and tensors of an adapter folder, checked against ``model``'s base linears.

    Nothing is modified; any problem raises here (``FileNotFoundError`` or ``ValueError``).
    """
    meta = folder.read_adapter_config(directory, methods)
    config, names = meta["smore_config"], meta["adapted_modules"]
    targets, exclude = meta["target_modules"], meta.get("exclude_modules")
    try:
        check_patterns(targets, "target_modules")
        if exclude is not None:
            check_patterns(exclude, "exclude_modules")
    except TypeError as err:
        raise ValueError(f"Unreadable {Path(directory) / folder.CONFIG_NAME}: {err}") from err
    tensors = folder.read_weights(directory)
    linears = base_linears(model)
    order = {n: i for i, n in enumerate(linears)}
    names = sorted(names, key=lambda n: order.get(n, len(order)))  # model order
    shapes = folder.expected_shapes({n: linears.get(n) for n in names}, config)
    folder.check_tensors(tensors, shapes, directory)
    spec = AdapterSpec(config, meta["method"], targets, exclude, tuple(names))
    return spec, tensors


@torch.no_grad()
def copy_in(layers: dict[str, SMoRELinear], tensors: dict[str, Tensor], trainable: bool) -> None:
    """Copy checked ``tensors`` into the layers' parameters; set ``requires_grad``."""
    for key, p in folder.adapter_parameters(layers).items():
        p.copy_(tensors[key])
        p.requires_grad_(trainable)

"""``SMoREModel``: a base model with named S'MoRE adapters, with the API PEFT users know.

``get_smore_model``, ``SMoREModel.from_pretrained``, ``save_pretrained``, ``disable_adapter()``,
``add_adapter``/``set_adapter``/``delete_adapter`` and ``print_trainable_parameters`` behave as
their ``peft.PeftModel`` namesakes. Merging is rejected: routing depends on the input, so no
single weight matrix equals the adapter. Target matching is :mod:`smore_gnn.hf.targets`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from smore_gnn.hf import adapters as adapters_io
from smore_gnn.hf.adapters import ADAPTER_METHODS, AdapterSpec, adapted_modules
from smore_gnn.hf.folders import AdapterFolders
from smore_gnn.hf.mask import bind_inputs, token_mask
from smore_gnn.hf.routing_stats import routing_statistics
from smore_gnn.hf.targets import (
    DEFAULT_TARGET_MODULES,
    Patterns,
    default_target_modules,
    find_target_modules,
    match_module_name,
)
from smore_gnn.nn.config import SMoREConfig
from smore_gnn.nn.layer import SMoRELinear

__all__ = [
    "ADAPTER_METHODS",
    "DEFAULT_TARGET_MODULES",
    "Patterns",
    "SMoREModel",
    "adapted_modules",
    "default_target_modules",
    "find_target_modules",
    "get_smore_model",
    "load_adapter",
    "match_module_name",
    "routing_statistics",
    "save_adapter",
]
_MERGE_REASON = (
    "S'MoRE adapters cannot be merged into the base weights: each token is routed to its own "
    "experts, so the update W_proj m_root(x) depends on the input and no single weight matrix "
    "equals it. Keep the SMoREModel for inference, use disable_adapter() for the base outputs, "
    "or unload() to get the base model back without the adapters"
)


class SMoREModel(AdapterFolders, nn.Module):
    """A base model whose target linears carry S'MoRE adapters (the peft ``PeftModel`` role).

    ``forward``/``generate`` go to the base model; unknown attributes are looked up on it. A
    forward pre-hook hands the ``attention_mask`` (keyword or positional; validated, see
    :mod:`smore_gnn.hf.mask`) to every adapter, so padding is left out of the balance
    statistics; it stays set until the next forward, so gradient checkpointing recomputes
    with the same mask.

    Args:
        model (nn.Module): the base model, modified in place (adapters injected, base frozen).
        config (SMoREConfig): the adapter configuration.
        target_modules (str | list[str], optional): peft-style patterns (default: the model
            type's MLP projections, see :data:`DEFAULT_TARGET_MODULES`).
        exclude_modules (str | list[str], optional): patterns left out.
        method (str): recorded in ``adapter_config.json`` (``"smore"`` or ``"molre"``).
        adapter_name (str): the first adapter's name (peft's ``"default"``).
    """

    def __init__(
        self,
        model: nn.Module,
        config: SMoREConfig,
        target_modules: Patterns | None = None,
        exclude_modules: Patterns | None = None,
        method: str = "smore",
        adapter_name: str = "default",
    ):
        super().__init__()
        if isinstance(model, SMoREModel) or adapted_modules(model):
            raise ValueError(
                "The model already holds S'MoRE adapters; add another one with "
                "SMoREModel.add_adapter(name, config) instead of wrapping it again"
            )
        self.model = model
        # plain attributes (not registered): inactive adapters stay out of parameters()
        self.__dict__.update(peft_config={}, _bank={}, _active=None, _disabled=False)
        self._signature = inspect.signature(model.forward)
        model.requires_grad_(False)
        self.add_adapter(adapter_name, config, target_modules, exclude_modules, method)
        self.set_adapter(adapter_name)
        self._hook = model.register_forward_pre_hook(self._set_mask, with_kwargs=True)

    # ---- delegation ---------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's forward (active adapter included)."""
        return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's ``generate`` (active adapter included)."""
        return self.model.generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    def _apply(self, fn: Any, recurse: bool = True) -> SMoREModel:
        super()._apply(fn, recurse)
        for name, layers in self._bank.items():  # inactive adapters move too (not the base)
            if name != self._active:
                for layer in layers.values():
                    for child_name, child in layer.named_children():
                        if child_name != "base_layer":
                            child._apply(fn)
                    moved = {k: fn(b) for k, b in layer._buffers.items() if b is not None}
                    layer._buffers.update(moved)
        return self

    def train(self, mode: bool = True) -> SMoREModel:
        super().train(mode)
        for layers in self._bank.values():
            for layer in layers.values():
                layer.train(mode)
        return self

    # ---- attention mask -----------------------------------------------------------------
    def _set_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = token_mask(bind_inputs(self._signature, args, kwargs))  # [B, T] bool or None
        for layer in self.adapters().values():
            layer.attention_mask = mask

    # ---- named adapters (peft's API) ----------------------------------------------------
    @property
    def active_adapter(self) -> str:
        """The name of the adapter in use."""
        return self._active

    @property
    def active_adapters(self) -> list[str]:
        """``[active_adapter]`` (one adapter is active at a time)."""
        return [self._active]

    def add_adapter(
        self,
        adapter_name: str,
        config: SMoREConfig,
        target_modules: Patterns | None = None,
        exclude_modules: Patterns | None = None,
        method: str = "smore",
    ) -> None:
        """Add a new, inactive, frozen adapter (``set_adapter`` activates it, as in peft)."""
        adapters_io.check_adapter_name(adapter_name, self.peft_config)
        adapters_io.check_spec(config, method, ADAPTER_METHODS)
        targets = default_target_modules(self.model) if target_modules is None else target_modules
        targets = targets if isinstance(targets, str) else list(targets)
        names = tuple(find_target_modules(self.model, targets, exclude_modules))
        spec = AdapterSpec(config, method, targets, exclude_modules, names)
        layers = adapters_io.make_layers(self.model, spec)
        for layer in layers.values():
            layer.requires_grad_(False)
            layer.train(self.training)
        self.peft_config[adapter_name], self._bank[adapter_name] = spec, layers

    def _check_known(self, adapter_name: str, hint: str = "") -> None:
        """ValueError listing the adapters if there is none named ``adapter_name``."""
        if adapter_name not in self.peft_config:
            known = list(self.peft_config)
            raise ValueError(f"No adapter named {adapter_name!r} (adapters: {known}){hint}")

    def set_adapter(self, adapter_name: str, inference_mode: bool = False) -> None:
        """Make ``adapter_name`` the active adapter, trainable unless ``inference_mode``."""
        self._check_known(adapter_name, "; add_adapter or load_adapter it first")
        new = self._bank[adapter_name]
        if self._active is not None:
            for name, layer in self._bank[self._active].items():
                layer.requires_grad_(False)
                if name not in new:
                    adapters_io.put(self.model, name, layer.base_layer)
        for name, layer in new.items():
            adapters_io.put(self.model, name, layer)
            layer.requires_grad_(not inference_mode)
            layer.base_layer.requires_grad_(False)
            layer.disable_adapters = self._disabled
        self._active = adapter_name

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter; deleting the active one activates the first remaining one."""
        self._check_known(adapter_name)
        if len(self.peft_config) == 1:
            raise ValueError(
                f"Cannot delete {adapter_name!r}, the only adapter; use unload() to get the "
                "base model back"
            )
        if adapter_name == self._active:
            self.set_adapter(next(n for n in self.peft_config if n != adapter_name))
        del self.peft_config[adapter_name], self._bank[adapter_name]

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Inside the block the adapters are switched off (a flag in each layer): base outputs."""
        previous = self._disabled
        self._disabled = True
        for layer in self.adapters().values():
            layer.disable_adapters = True
        try:
            yield
        finally:
            self._disabled = previous
            for layer in self.adapters().values():
                layer.disable_adapters = previous

    def unload(self) -> nn.Module:
        """Put the base linears back and return the base model (no merging)."""
        for name, layer in self._bank[self._active].items():
            adapters_io.put(self.model, name, layer.base_layer)
        self._hook.remove()
        return self.model

    def merge_and_unload(self, *args: Any, **kwargs: Any) -> None:
        """Rejected: routing depends on the input, see the error."""
        raise TypeError(_MERGE_REASON)

    merge_adapter = merge_and_unload

    # ---- the active adapter -------------------------------------------------------------
    @property
    def active_spec(self) -> AdapterSpec:
        """The :class:`AdapterSpec` of the active adapter."""
        return self.peft_config[self._active]

    smore_config = property(lambda self: self.active_spec.config, doc="Active config.")
    method = property(lambda self: self.active_spec.method, doc="Active method label.")
    target_modules = property(lambda self: self.active_spec.target_modules, doc="Patterns.")
    exclude_modules = property(lambda self: self.active_spec.exclude_modules, doc="Excluded.")
    adapted_names = property(lambda self: list(self.active_spec.names), doc="Adapted modules.")

    def adapters(self) -> dict[str, SMoRELinear]:
        """``{module name in the base model: SMoRELinear}`` of the active adapter."""
        return dict(self._bank[self._active])

    def balance_loss(self) -> Tensor:
        """Sum of the active adapter's last-forward balance losses (add it to the loss)."""
        losses = [m.balance_loss for m in self.adapters().values() if m.balance_loss is not None]
        if not losses or self._disabled:
            return torch.zeros(())
        return torch.stack([loss.float() for loss in losses]).sum()

    def routing_stats(self, **kwargs: Any) -> dict[str, Any]:
        """:func:`routing_statistics` of the last forward."""
        return routing_statistics(self.adapters(), **kwargs)

    def trainable_parameters(self) -> int:
        """Number of trainable parameters (shared tensors counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable parameters, all parameters)`` of the model with the active adapter."""
        return self.trainable_parameters(), sum(p.numel() for p in self.parameters())

    def print_trainable_parameters(self) -> None:
        """Print the counts as peft does."""
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / total:.4f}"
        )


def get_smore_model(
    model: nn.Module,
    config: SMoREConfig,
    target_modules: Patterns | None = None,
    exclude_modules: Patterns | None = None,
    method: str = "smore",
    adapter_name: str = "default",
) -> SMoREModel:
    """peft's ``get_peft_model`` for S'MoRE: inject adapters into ``model`` and wrap it."""
    return SMoREModel(model, config, target_modules, exclude_modules, method, adapter_name)


def save_adapter(
    model: SMoREModel, directory: str | Path, base_model_name: str | None = None
) -> None:
    """Write the active adapter of ``model`` to ``directory``, atomically (0.1 API)."""
    if not isinstance(model, SMoREModel):
        raise TypeError(f"save_adapter expects an SMoREModel (got {type(model).__name__})")
    model._write(model.active_adapter, directory, base_model_name)


def load_adapter(model: nn.Module, directory: str | Path, trainable: bool = False) -> SMoREModel:
    """Load a saved adapter into a base model, or into the active adapter of an ``SMoREModel``.

    Everything is validated before the model is touched: on any error it is left unchanged.
    """
    if isinstance(model, SMoREModel):
        model.load_adapter(directory, model.active_adapter, is_trainable=trainable)
        return model
    return SMoREModel.from_pretrained(model, directory, is_trainable=trainable)

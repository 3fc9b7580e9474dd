"""``SMoREModel``: a base model with named S'MoRE adapters, with the API PEFT users know.

``get_smore_model``, ``SMoREModel.from_pretrained``, ``save_pretrained``, ``disable_adapter()``,
``add_adapter``/``set_adapter``/``delete_adapter`` and ``print_trainable_parameters`` behave as
their ``peft.PeftModel`` namesakes. Adapters are held as peft holds them: every adapted slot
is an :class:`~smore_gnn.hf.layer.AdaptedLinear` with the adapters of that slot by name, the
active name and a disable flag. Merging is rejected: routing depends on the input, so no
single weight matrix equals the adapter. Target matching is :mod:`smore_gnn.hf.targets`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from smore_gnn.analysis.routing import adapters_routing_stats
from smore_gnn.hf import adapters as adapters_io
from smore_gnn.hf import checkpointing
from smore_gnn.hf.adapters import ADAPTER_METHODS, AdapterSpec, adapted_modules, adapted_slots
from smore_gnn.hf.folders import AdapterFolders
from smore_gnn.hf.layer import AdaptedLinear
from smore_gnn.hf.mask import bind_inputs, pop_mask, push_mask, token_mask
from smore_gnn.hf.method import trainable_parameters
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
    "match_module_name",
    "trainable_parameters",
]
_MERGE_REASON = (
    "S'MoRE adapters cannot be merged into the base weights: each token is routed to its own "
    "experts, so the update W_proj m_root(x) depends on the input and no single weight matrix "
    "equals it. Keep the SMoREModel for inference, use disable_adapter() for the base outputs, "
    "or unload() to get the base model back without the adapters"
)


class SMoREModel(AdapterFolders, nn.Module):
    """A base model whose target linears carry S'MoRE adapters (the peft ``PeftModel`` role).

    ``forward``/``generate`` go to the base model; unknown attributes are looked up on it. Each
    forward of the base model (every ``generate`` step included) publishes its
    ``attention_mask`` (keyword or positional; validated, see :mod:`smore_gnn.hf.mask`) to the
    adapters for that forward only, so padding is left out of the balance statistics. Under
    transformers' gradient checkpointing (reentrant or not, enabled before or after wrapping)
    each recomputation routes with its own forward's mask, whatever forwards ran between the
    forward and its backward (:mod:`smore_gnn.hf.checkpointing`).

    Nothing is changed until everything is validated, and a failure while adapters are
    injected puts the model back as it was (modules and ``requires_grad``).

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
        if isinstance(model, SMoREModel) or adapted_modules(model) or adapted_slots(model):
            raise ValueError(
                "The model already holds S'MoRE adapters; add another one with "
                "SMoREModel.add_adapter(name, config) instead of wrapping it again"
            )
        spec = _spec(model, {}, adapter_name, config, target_modules, exclude_modules, method)
        self.model = model
        # plain attributes: the adapters themselves live in the model's AdaptedLinear slots
        self.__dict__.update(peft_config={}, _active=adapter_name, _disabled=False)
        self.__dict__.update(_mask_owner=object(), _hooks=[], _unloaded=False)
        self._signature = inspect.signature(model.forward)
        flags = requires_grad_flags(model)
        try:
            model.requires_grad_(False)
            self._inject(adapter_name, spec)
            self.set_adapter(adapter_name)
            self._hooks = [
                model.register_forward_pre_hook(self._push_mask, with_kwargs=True, prepend=True),
                model.register_forward_hook(self._pop_mask, always_call=True),
            ]
            self._hooks += [
                module.register_forward_pre_hook(checkpointing.record_forward_states)
                for module in checkpointing.checkpointing_modules(model)
            ]
        except BaseException:
            self._restore(flags)
            raise

    # ---- delegation ---------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's forward (active adapter included)."""
        self._check_loaded()
        return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's ``generate`` (active adapter included)."""
        self._check_loaded()
        return self.model.generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    # ---- attention mask: one forward's mask, for that forward only ----------------------
    def _push_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = token_mask(bind_inputs(self._signature, args, kwargs))  # [B, T] bool or None
        push_mask(self._mask_owner, mask)

    def _pop_mask(self, module: nn.Module, args: tuple, output: Any) -> None:
        pop_mask(self._mask_owner)

    # ---- state ----------------------------------------------------------------------------
    def _slots(self) -> dict[str, AdaptedLinear]:
        """``{module name: AdaptedLinear}`` of the adapted slots, in model order."""
        return adapted_slots(self.model)

    def _layers_of(self, adapter_name: str) -> dict[str, SMoRELinear]:
        """``{module name: SMoRELinear}`` of one adapter, in model order."""
        return {
            n: slot.adapters[adapter_name]
            for n, slot in self._slots().items()
            if adapter_name in slot.adapters
        }

    def _inject(self, adapter_name: str, spec: AdapterSpec) -> None:
        """Build the adapter's layers and place them, frozen and inactive; undone on error."""
        layers = adapters_io.make_layers(self.model, spec)
        slots, placed = self._slots(), []
        try:
            for name, layer in layers.items():
                slot = slots.get(name)
                if slot is None:
                    slot = AdaptedLinear(layer.base_layer, self._mask_owner)
                    slot.active_adapter, slot.disable_adapters = self._active, self._disabled
                    slot.train(self.training)
                    adapters_io.put(self.model, name, slot)
                placed.append((name, slot))
                slot.add_adapter(adapter_name, layer)
            self.peft_config[adapter_name] = spec
        except BaseException:
            for name, slot in reversed(placed):
                self._remove(name, slot, adapter_name)
            raise

    def _remove(self, name: str, slot: AdaptedLinear, adapter_name: str) -> None:
        """Drop one adapter from a slot; a slot left empty gets its base linear back."""
        slot.delete_adapter(adapter_name)
        if not len(slot.adapters):
            adapters_io.put(self.model, name, slot.base_layer)

    def _restore(self, flags: dict[nn.Parameter, bool]) -> None:
        """Put every base linear back, remove the hooks and restore ``requires_grad``."""
        for name, slot in self._slots().items():
            adapters_io.put(self.model, name, slot.base_layer)
        self._remove_hooks()
        for param, flag in flags.items():
            param.requires_grad_(flag)

    def _remove_hooks(self) -> None:
        """Remove the forward hooks and unwrap the checkpoint functions they wrapped."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for module in checkpointing.checkpointing_modules(self.model):
            checkpointing.unwrap(module)

    def _check_loaded(self) -> None:
        if self._unloaded:
            raise ValueError(
                "This SMoREModel was unloaded: unload() gave the base model back without the "
                "adapters; use that model, or wrap it again with get_smore_model(model, config) "
                "or SMoREModel.from_pretrained(model, folder)"
            )

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
        self._check_loaded()
        patterns = (target_modules, exclude_modules)
        spec = _spec(self.model, self.peft_config, adapter_name, config, *patterns, method)
        self._inject(adapter_name, spec)

    def _check_known(self, adapter_name: str, hint: str = "") -> None:
        """ValueError listing the adapters if there is none named ``adapter_name``."""
        if not isinstance(adapter_name, str) or adapter_name not in self.peft_config:
            known = list(self.peft_config)
            raise ValueError(f"No adapter named {adapter_name!r} (adapters: {known}){hint}")

    def set_adapter(self, adapter_name: str, inference_mode: bool = False) -> None:
        """Make ``adapter_name`` the active adapter, trainable unless ``inference_mode``."""
        self._check_loaded()
        self._check_known(adapter_name, "; add_adapter or load_adapter it first")
        for slot in self._slots().values():
            slot.set_adapter(adapter_name, trainable=not inference_mode)
        self._active = adapter_name

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter; deleting the active one activates the first remaining one."""
        self._check_loaded()
        self._check_known(adapter_name)
        if len(self.peft_config) == 1:
            raise ValueError(
                f"Cannot delete {adapter_name!r}, the only adapter; use unload() to get the "
                "base model back"
            )
        if adapter_name == self._active:
            self.set_adapter(next(n for n in self.peft_config if n != adapter_name))
        for name, slot in self._slots().items():
            self._remove(name, slot, adapter_name)
        del self.peft_config[adapter_name]

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Inside the block the adapters are switched off (a flag in each layer): base outputs."""
        self._check_loaded()
        previous = self._disabled
        self._set_disabled(True)
        try:
            yield
        finally:
            self._set_disabled(previous)

    def _set_disabled(self, disabled: bool) -> None:
        self._disabled = disabled
        for slot in self._slots().values():
            slot.disable_adapters = disabled

    def unload(self) -> nn.Module:
        """Put the base linears back and return the base model (no merging).

        The ``SMoREModel`` is spent afterwards: its forward and adapter methods raise.
        """
        self._check_loaded()
        for name, slot in self._slots().items():
            adapters_io.put(self.model, name, slot.base_layer)
        self._remove_hooks()
        self._unloaded = True
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
        self._check_loaded()
        return self._layers_of(self._active)

    def balance_loss(self) -> Tensor:
        """Sum of the active adapter's last-forward balance losses (add it to the loss)."""
        if self._disabled:
            return torch.zeros(())
        losses = [m.balance_loss for m in self.adapters().values() if m.balance_loss is not None]
        if not losses:
            return torch.zeros(())
        return torch.stack([loss.float() for loss in losses]).sum()

    def routing_stats(
        self, modules: Sequence[str] | None = None, loads: dict[str, list[Tensor]] | None = None
    ) -> dict[str, Any]:
        """:func:`~smore_gnn.analysis.routing.adapters_routing_stats` of the last forward.

        Args:
            modules: adapted module names to include, exact or as a dotted suffix (default:
                all).
            loads: per-module expert loads to use instead of the last forward's, e.g. summed
                over data-parallel ranks (:mod:`smore_gnn.train.distributed`).
        """
        return adapters_routing_stats(self.adapters(), modules, loads)

    def trainable_parameters(self) -> int:
        """Number of trainable parameters (shared tensors counted once)."""
        return trainable_parameters(self)

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable parameters, all parameters)`` (all adapters, active or not, as peft)."""
        return trainable_parameters(self), sum(p.numel() for p in self.parameters())

    def print_trainable_parameters(self) -> None:
        """Print the counts as peft does."""
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / total:.4f}"
        )


def requires_grad_flags(model: nn.Module) -> dict[nn.Parameter, bool]:
    """``{parameter: requires_grad}`` of ``model``, to put back after a failed change."""
    return {p: p.requires_grad for p in model.parameters()}


def _spec(
    model: nn.Module,
    existing: dict[str, AdapterSpec],
    adapter_name: str,
    config: SMoREConfig,
    target_modules: Patterns | None,
    exclude_modules: Patterns | None,
    method: str,
) -> AdapterSpec:
    """The checked spec of a new adapter; raises before anything is changed."""
    adapters_io.check_adapter_name(adapter_name, existing)
    adapters_io.check_spec(config, method, ADAPTER_METHODS)
    targets = default_target_modules(model) if target_modules is None else target_modules
    targets = targets if isinstance(targets, str) else list(targets)
    names = tuple(find_target_modules(model, targets, exclude_modules))
    return AdapterSpec(config, method, targets, exclude_modules, names)


def get_smore_model(
    model: nn.Module,
    config: SMoREConfig,
    target_modules: Patterns | None = None,
    exclude_modules: Patterns | None = None,
    method: str = "smore",
    adapter_name: str = "default",
) -> SMoREModel:
    """peft's ``get_peft_model`` for S'MoRE: inject adapters into ``model`` and wrap it.

    On any error the model is left as it was.
    """
    return SMoREModel(model, config, target_modules, exclude_modules, method, adapter_name)

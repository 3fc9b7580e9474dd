"""Inject S'MoRE adapters into a model: target matching, freezing, routing statistics.

Target matching follows HF peft: a string is a regex full-match on the module name; a list
matches a name exactly or as a dotted suffix. Only ``nn.Linear`` modules are adapted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from smore_gnn.analysis import load_entropy
from smore_gnn.config import SMoREConfig
from smore_gnn.layer import SMoRELinear

Patterns = str | Sequence[str]
# The paper adapts the MLP projections of every block (SPEC §9).
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    **{
        t: ["gate_proj", "up_proj", "down_proj"]
        for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "olmo")
    },
    "phi3": ["gate_up_proj", "down_proj"],
}


def match_module_name(name: str, patterns: Patterns) -> bool:
    """peft's rule: a str is a regex full-match; a list matches exactly or as a dotted suffix."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def default_target_modules(model: nn.Module) -> list[str]:
    """The paper's targets (``gate_proj``, ``up_proj``, ``down_proj``) for known model types."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEFAULT_TARGET_MODULES:
        raise ValueError(
            f"No default target_modules for model_type {model_type!r} (known: "
            f"{sorted(DEFAULT_TARGET_MODULES)}); pass target_modules=[...] explicitly"
        )
    return list(DEFAULT_TARGET_MODULES[model_type])


def find_target_modules(
    model: nn.Module, target_modules: Patterns, exclude_modules: Patterns | None = None
) -> list[str]:
    """Names of the ``nn.Linear`` modules of ``model`` selected by the patterns, in model order.

    Raises:
        ValueError: if no ``nn.Linear`` matches; the message lists the patterns and examples.
    """
    inside = [n + "." for n, m in model.named_modules() if isinstance(m, SMoRELinear)]
    linears = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and not any(n.startswith(p) for p in inside)
    ]
    names = [n for n in linears if match_module_name(n, target_modules)]
    if exclude_modules:
        names = [n for n in names if not match_module_name(n, exclude_modules)]
    if not names:
        examples = linears[:3] + linears[-2:] if len(linears) > 5 else linears
        raise ValueError(
            f"No nn.Linear module matched target_modules={target_modules!r} "
            f"(exclude_modules={exclude_modules!r}); example nn.Linear names: {examples}. "
            "Pass names (exact or dotted suffix, e.g. ['up_proj']) or one regex string"
        )
    return names


def inject_adapter(
    model: nn.Module,
    config: SMoREConfig,
    target_modules: Patterns | None = None,
    exclude_modules: Patterns | None = None,
) -> list[str]:
    """Replace the target linears of ``model`` in place by ``SMoRELinear`` and freeze the rest.

    Returns:
        The adapted module names.
    """
    if not isinstance(config, SMoREConfig):
        raise TypeError(f"inject_adapter expects an SMoREConfig (got {type(config).__name__})")
    target_modules = default_target_modules(model) if target_modules is None else target_modules
    names = find_target_modules(model, target_modules, exclude_modules)
    model.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, SMoRELinear(getattr(parent, child), config))
    return names


def adapted_modules(model: nn.Module) -> dict[str, SMoRELinear]:
    """``{name: SMoRELinear}`` of every adapter inside ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SMoRELinear)}


def routing_statistics(
    layers: dict[str, SMoRELinear], collapse_share: float = 0.9, collapse_entropy: float = 0.3
) -> dict[str, Any]:
    """Load and routing entropy of the last forward of every adapted module.

    ``share`` is the fraction of picks each expert got (valid tokens only); ``entropy`` is the
    entropy of that share normalised by ``log s`` (1 = balanced). A parent picks ``f``
    *distinct* children, so with ``f > 1`` no expert can exceed ``1/f`` of the picks and the
    entropy cannot fall below ``log f / log s``; collapse is therefore judged fanout-aware:
    an expert layer (with ``f < s``) has collapsed when its busiest expert is picked by more
    than ``collapse_share`` of the routing events (``max_load_share`` = share x f), or when
    the entropy rescaled to ``[log f, log s] -> [0, 1]`` is below ``collapse_entropy``.

    Returns:
        ``{"modules": {name: {"load": [[...] per layer], "share": ..., "entropy": [...]}},
        "mean_entropy", "min_entropy", "max_load_share", "collapsed": [(name, layer), ...]}``.
    """
    modules, entropies, shares, collapsed = {}, [], [], []
    for name, layer in layers.items():
        routing = layer.last_routing
        if routing is None:
            continue
        load = [t.double() for t in routing.load]  # per layer [s_l]
        share = [t / t.sum().clamp_min(1) for t in load]
        ent = [load_entropy(t) if t.numel() > 1 else 1.0 for t in load]
        modules[name] = {
            "load": [t.tolist() for t in load],
            "share": [t.tolist() for t in share],
            "entropy": ent,
        }
        for l, (s, e) in enumerate(zip(share, ent)):
            f, num = layer.config.fanout[l], s.numel()
            entropies.append(e)
            shares.append(min(1.0, float(s.max()) * f))  # share of events picking it
            if f < num:
                spread = (e * math.log(num) - math.log(f)) / (math.log(num) - math.log(f))
                if shares[-1] > collapse_share or spread < collapse_entropy:
                    collapsed.append((name, l))
    return {
        "modules": modules,
        "mean_entropy": sum(entropies) / len(entropies) if entropies else float("nan"),
        "min_entropy": min(entropies, default=float("nan")),
        "max_load_share": max(shares, default=float("nan")),
        "collapsed": collapsed,
    }


class SMoREModel(nn.Module):
    """A base model whose target linears carry S'MoRE adapters (the peft ``PeftModel`` role).

    ``forward``/``generate`` go to the base model; unknown attributes are looked up on it. A
    forward pre-hook hands the 2-D ``attention_mask`` to every adapter, so padding is left out
    of the balance statistics.

    Args:
        model (nn.Module): the base model, modified in place (adapters injected, base frozen).
        config (SMoREConfig): the adapter configuration.
        target_modules (str | list[str], optional): peft-style patterns (default: the model
            type's MLP projections, see :data:`DEFAULT_TARGET_MODULES`).
        exclude_modules (str | list[str], optional): patterns left out.
        method (str): recorded in ``adapter_config.json`` (``"smore"`` or ``"molre"``).
    """

    def __init__(
        self,
        model: nn.Module,
        config: SMoREConfig,
        target_modules: Patterns | None = None,
        exclude_modules: Patterns | None = None,
        method: str = "smore",
    ):
        super().__init__()
        self.model, self.smore_config, self.method = model, config, method
        if target_modules is None:
            target_modules = default_target_modules(model)
        if not isinstance(target_modules, str):
            target_modules = list(target_modules)
        self.target_modules = target_modules
        self.exclude_modules = exclude_modules
        self.adapted_names = inject_adapter(model, config, target_modules, exclude_modules)
        # a plain dict (not registered): the same modules stay reachable while disabled
        self.__dict__["_layers"] = {n: model.get_submodule(n) for n in self.adapted_names}
        self._hooks = [
            model.register_forward_pre_hook(self._set_mask, with_kwargs=True),
            model.register_forward_hook(self._clear_mask, always_call=True),
        ]

    # ---- delegation ---------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's forward (adapters included)."""
        return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's ``generate`` (adapters included)."""
        return self.model.generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    # ---- attention mask -----------------------------------------------------------------
    def _set_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask, ids = kwargs.get("attention_mask"), kwargs.get("input_ids")
        ids = args[0] if ids is None and args else ids
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if not isinstance(mask, Tensor) or mask.dim() != 2:
            return
        if ids is not None and ids.dim() >= 2 and mask.size(1) > ids.size(1):
            mask = mask[:, -ids.size(1) :]  # generation with a KV cache: the newest tokens
        for layer in self._layers.values():
            layer.attention_mask = mask

    def _clear_mask(self, *_: Any) -> None:
        for layer in self._layers.values():
            layer.attention_mask = None

    # ---- adapters -----------------------------------------------------------------------
    def adapters(self) -> dict[str, SMoRELinear]:
        """``{module name in the base model: SMoRELinear}``."""
        return dict(self._layers)

    def balance_loss(self) -> Tensor:
        """Sum of the adapters' balance losses from the last forward (with grad)."""
        losses = [m.balance_loss for m in self.adapters().values() if m.balance_loss is not None]
        if not losses:
            return torch.zeros(())
        return torch.stack([loss.float() for loss in losses]).sum()

    def routing_stats(self, **kwargs: Any) -> dict[str, Any]:
        """:func:`routing_statistics` of the last forward."""
        return routing_statistics(self.adapters(), **kwargs)

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Inside the block the frozen base linears are put back, so outputs are the base's."""
        layers = self.adapters()
        try:
            for name, layer in layers.items():
                _replace(self.model, name, layer.base_layer)
            yield
        finally:
            for name, layer in layers.items():
                _replace(self.model, name, layer)

    def trainable_parameters(self) -> int:
        """Number of trainable parameters (shared tensors counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def save_adapter(self, directory: str, **kwargs: Any) -> None:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (see ``save.py``)."""
        from smore_gnn.save import save_adapter

        save_adapter(self, directory, **kwargs)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def get_smore_model(
    model: nn.Module,
    config: SMoREConfig,
    target_modules: Patterns | None = None,
    exclude_modules: Patterns | None = None,
    method: str = "smore",
) -> SMoREModel:
    """peft's ``get_peft_model`` for S'MoRE: inject adapters into ``model`` and wrap it."""
    return SMoREModel(model, config, target_modules, exclude_modules, method)

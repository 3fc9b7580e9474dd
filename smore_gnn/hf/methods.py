"""The one registry of fine-tuning methods: S'MoRE, MoLRE and LoRA (through HF ``peft``).

Each :class:`Method` knows its configuration (the paper's settings), how to count the
parameters it adds, how to match a parameter budget, how to build an adapted model and how to
save and load it. The CLI, the trainer and the benchmarks look methods up here by name
(:func:`get_method`) instead of switching on strings.

MoLRE, the mixture of LoRA experts, is S'MoRE with one layer and the identity activation
(Proposition 3.1 of Zeng et al. 2025): ``W_proj sum_i alpha_i B^i A^i x``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from smore_gnn.hf.lora import LoRAMethod
from smore_gnn.hf.lora import lora_rank as check_lora_rank
from smore_gnn.hf.method import Budgeted, Method, Spec, linear_shapes, trainable_parameters
from smore_gnn.hf.model import ADAPTER_METHODS, Patterns, SMoREModel
from smore_gnn.hf.save import CONFIG_NAME
from smore_gnn.nn.accounting import count_parameters
from smore_gnn.nn.config import SMoREConfig

__all__ = [
    "Budgeted",
    "LoRAMethod",
    "Method",
    "SMoREMethod",
    "Spec",
    "auxiliary_loss",
    "build_for_budget",
    "get_method",
    "load_any",
    "method_names",
    "method_of",
    "molre_config",
    "read_folder_method",
    "save_any",
    "smore_paper_config",
    "trainable_parameters",
]


def smore_paper_config(**overrides: Any) -> SMoREConfig:
    """The paper's S'MoRE (4-4) setting (docs/spec.md §9): rank 8, d_down 32, relu router, tanh."""
    kwargs = dict(num_experts=[4, 4], fanout=[2, 2], rank=[8, 8], expert_act="tanh")
    kwargs.update(router_dim=32, router_act="relu", down_proj_dim=32, gate_type="switch")
    return SMoREConfig(**{**kwargs, "init_method": "w_final_zero", **overrides})


def molre_config(num_experts: int = 8, fanout: int = 2, rank: int = 8, **kw: Any) -> SMoREConfig:
    """MoLRE: one layer of ``num_experts`` LoRA experts, top-``fanout``, identity activation."""
    kwargs = {**dict(router_dim=32, router_act="relu", down_proj_dim=32, gate_type="switch"), **kw}
    return SMoREConfig(
        num_experts=[num_experts], fanout=[fanout], rank=[rank], expert_act="identity", **kwargs
    )


class SMoREMethod(Method):
    """S'MoRE or MoLRE: an :class:`~smore_gnn.hf.model.SMoREModel` (our own folder format)."""

    def __init__(self, name: str, reference: bool = False):
        if name not in ADAPTER_METHODS:
            raise ValueError(f"An SMoREModel method is one of {ADAPTER_METHODS} (got {name!r})")
        self.name, self.reference = name, reference

    def default_spec(self, smore_config: SMoREConfig) -> Spec:
        return smore_config if self.reference else molre_config()

    def default_template(self) -> Spec:
        return self.default_spec(smore_paper_config())

    def spec_for_rank(self, template: Spec, rank: int) -> Spec:
        return replace(_config(self.name, template), rank=[rank] * template.num_layers)

    def count(self, model: nn.Module, target_modules: Patterns | None, spec: Spec) -> int:
        spec = _config(self.name, spec)
        shapes = linear_shapes(model, target_modules)
        return sum(count_parameters(spec, i, o)["total"] for i, o in shapes)

    def build(self, model: nn.Module, spec: Spec, target_modules: Patterns | None = None):
        return SMoREModel(model, _config(self.name, spec), target_modules, method=self.name)

    def owns(self, model: nn.Module) -> bool:
        return isinstance(model, SMoREModel) and model.method == self.name

    def reads(self, meta: dict[str, Any]) -> bool:
        return "peft_type" not in meta and meta.get("method") == self.name

    def save(self, model: nn.Module, directory: str | Path) -> None:
        model.save_pretrained(directory)

    def load(self, model: nn.Module, directory: str | Path, is_trainable: bool = False):
        return SMoREModel.from_pretrained(model, directory, is_trainable=is_trainable)


def _config(method: str, spec: Any) -> SMoREConfig:
    if not isinstance(spec, SMoREConfig):
        raise TypeError(f"method {method!r} needs an SMoREConfig (got {type(spec).__name__})")
    return spec


_REGISTRY: dict[str, Method] = {
    m.name: m for m in (SMoREMethod("smore", reference=True), SMoREMethod("molre"), LoRAMethod())
}


def method_names() -> tuple[str, ...]:
    """The registered method names: ``("smore", "molre", "lora")``."""
    return tuple(_REGISTRY)


def get_method(name: str) -> Method:
    """The :class:`Method` registered as ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"method must be one of {list(_REGISTRY)} (got {name!r})")
    return _REGISTRY[name]


def method_of(model: nn.Module) -> Method:
    """The method that adapted ``model`` (an ``SMoREModel`` or a peft LoRA model)."""
    for method in _REGISTRY.values():
        if method.owns(model):
            return method
    raise TypeError(
        f"Expected a model adapted by one of {list(_REGISTRY)} (got {type(model).__name__}); "
        "build it with get_method(name).build(...) or build_for_budget(...)"
    )


def build_for_budget(
    name: str,
    model: nn.Module,
    smore_config: SMoREConfig,
    target_modules: Patterns | None = None,
    lora_rank: int | None = None,
    match_budget: bool = True,
    seed: int = 0,
) -> tuple[nn.Module, dict[str, Any]]:
    """Adapt ``model`` with method ``name``, sized to S'MoRE's budget under ``smore_config``.

    Args:
        name: a registered method name.
        model: the base model, modified in place.
        smore_config: the S'MoRE configuration whose parameter count is the budget.
        target_modules: peft-style patterns (default: the model type's MLP projections).
        lora_rank: a fixed LoRA rank (method ``"lora"`` only; no budget matching then).
        match_budget: size non-reference methods to the budget (else their default spec).
        seed: seeds ``torch`` before the adapter is initialised.

    Returns:
        ``(adapted model, report)``; the report gives every method's rank and trainable
        parameters at the budget: ``{name: {"rank", "trainable_parameters"}}``.
    """
    method = get_method(name)
    if lora_rank is not None and not isinstance(method, LoRAMethod):
        raise ValueError(
            f"lora_rank sets the rank of method 'lora' (got lora_rank={lora_rank!r} with "
            f"method {name!r}); drop lora_rank or use method 'lora'"
        )
    reference = next(m for m in _REGISTRY.values() if m.reference)
    budget = reference.count(model, target_modules, smore_config)
    report = {reference.name: {"rank": smore_config.rank[0], "trainable_parameters": budget}}
    for other in _REGISTRY.values():
        if not other.reference:
            match = other.match_budget(model, target_modules, budget)
            report[other.name] = {"rank": match.rank, "trainable_parameters": match.num_parameters}
    spec = method.default_spec(smore_config)
    if lora_rank is not None:
        spec = check_lora_rank(lora_rank)
    elif match_budget and not method.reference:
        spec = method.match_budget(model, target_modules, budget).spec
    torch.manual_seed(seed)
    return method.build(model, spec, target_modules), report


def read_folder_method(directory: str | Path) -> Method:
    """The method that wrote the adapter folder ``directory`` (from its config file)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"Expected an adapter folder with {CONFIG_NAME} (got no {path}); pass the "
            "--output-dir of a finetune run or a folder written by save_pretrained"
        )
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"Expected JSON in {path} (got {err}); re-save the adapter") from err
    for method in _REGISTRY.values():
        if isinstance(meta, dict) and method.reads(meta):
            return method
    found = meta.get("peft_type") or meta.get("method") if isinstance(meta, dict) else meta
    raise ValueError(
        f"The adapter in {directory} was written by an unknown method {found!r}; known: "
        f"{list(_REGISTRY)}"
    )


def load_any(model: nn.Module, directory: str | Path, is_trainable: bool = False) -> nn.Module:
    """Load an adapter folder of any registered method into the base ``model``."""
    return read_folder_method(directory).load(model, directory, is_trainable=is_trainable)


def save_any(model: nn.Module, directory: str | Path) -> None:
    """Save the adapter of a model built by any registered method (atomic folder save)."""
    method_of(model).save(model, directory)


def auxiliary_loss(model: nn.Module) -> Tensor | None:
    """The summed balance loss of an ``SMoREModel`` (``None`` for other models, e.g. LoRA)."""
    return model.balance_loss() if isinstance(model, SMoREModel) else None

"""Baselines under the S'MoRE API: LoRA (through HF ``peft``) and MoLRE, at equal budgets.

MoLRE, the mixture of LoRA experts, is S'MoRE with one layer and the identity activation
(Proposition 3.1 of Zeng et al. 2025): ``W_proj sum_i alpha_i B^i A^i x``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor, nn

from smore_gnn.config import SMoREConfig
from smore_gnn.model import Patterns, SMoREModel, default_target_modules, find_target_modules

METHODS = ("smore", "molre", "lora")


def smore_paper_config(**overrides: Any) -> SMoREConfig:
    """The paper's S'MoRE (4-4) setting (SPEC §9): rank 8, d_down 32, relu router, tanh."""
    kwargs = dict(num_experts=[4, 4], fanout=[2, 2], rank=[8, 8], expert_act="tanh")
    kwargs.update(router_dim=32, router_act="relu", down_proj_dim=32, gate_type="switch")
    return SMoREConfig(**{**kwargs, "init_method": "w_final_zero", **overrides})


def molre_config(num_experts: int = 8, fanout: int = 2, rank: int = 8, **kw: Any) -> SMoREConfig:
    """MoLRE: one layer of ``num_experts`` LoRA experts, top-``fanout``, identity activation."""
    kwargs = dict(router_dim=32, router_act="relu", down_proj_dim=32, gate_type="switch", **kw)
    return SMoREConfig(
        num_experts=[num_experts], fanout=[fanout], rank=[rank], expert_act="identity", **kwargs
    )


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)} (got {method!r})")


def _linear_shapes(model: nn.Module, target_modules: Patterns | None) -> list[tuple[int, int]]:
    targets = default_target_modules(model) if target_modules is None else target_modules
    names = find_target_modules(model, targets)
    return [
        (model.get_submodule(n).in_features, model.get_submodule(n).out_features) for n in names
    ]


def count_adapter_parameters(
    method: str, model: nn.Module, target_modules: Patterns | None, spec: SMoREConfig | int
) -> int:
    """Trainable parameters ``method`` would add to ``model`` (nothing is modified).

    ``spec`` is an ``SMoREConfig`` for smore/molre and the LoRA rank for lora.
    """
    _check_method(method)
    shapes = _linear_shapes(model, target_modules)
    if method == "lora":
        return sum(int(spec) * (d_in + d_out) for d_in, d_out in shapes)  # A r x d, B d' x r
    return sum(spec.num_parameters(d_in, d_out) for d_in, d_out in shapes)


@dataclass
class Budgeted:
    """The outcome of :func:`match_parameters`."""

    method: str
    rank: int
    spec: SMoREConfig | int  # SMoREConfig (smore/molre) or the LoRA rank
    num_parameters: int
    budget: int

    @property
    def relative_error(self) -> float:
        """``(num_parameters - budget) / budget``."""
        return (self.num_parameters - self.budget) / self.budget


def match_parameters(
    method: str,
    model: nn.Module,
    target_modules: Patterns | None,
    budget: int,
    template: SMoREConfig | None = None,
    max_rank: int = 512,
) -> Budgeted:
    """Choose the rank of ``method`` whose trainable parameters come closest to ``budget``.

    Args:
        method: ``"smore"``, ``"molre"`` or ``"lora"``.
        model: the base model (not modified).
        target_modules: peft-style patterns (default: the model type's MLP projections).
        budget: the parameter count to match, e.g. S'MoRE's.
        template: the S'MoRE/MoLRE config whose ranks are set (all layers alike); default
            :func:`smore_paper_config` / :func:`molre_config`.
        max_rank: largest rank tried.
    """
    _check_method(method)
    if budget <= 0:
        raise ValueError(f"budget must be a positive parameter count (got {budget})")
    if template is None and method != "lora":
        template = smore_paper_config() if method == "smore" else molre_config()

    def spec_of(r: int) -> SMoREConfig | int:
        return r if method == "lora" else replace(template, rank=[r] * template.num_layers)

    best = None
    for r in range(1, max_rank + 1):
        n = count_adapter_parameters(method, model, target_modules, spec_of(r))
        if best is None or abs(n - budget) < abs(best[1] - budget):
            best = (r, n)
        if n > budget:
            break
    return Budgeted(method, best[0], spec_of(best[0]), best[1], budget)


def apply_method(
    method: str,
    model: nn.Module,
    spec: SMoREConfig | int,
    target_modules: Patterns | None = None,
    lora_alpha: float | None = None,
) -> nn.Module:
    """Adapt ``model`` with ``method``: an ``SMoREModel`` (smore/molre) or a peft ``PeftModel``.

    Args:
        method: ``"smore"``, ``"molre"`` or ``"lora"``.
        model: the base model, modified in place.
        spec: ``SMoREConfig`` (smore/molre) or LoRA rank (lora).
        target_modules: peft-style patterns (default: the model type's MLP projections).
        lora_alpha: LoRA scale numerator (default ``2 * rank``).
    """
    _check_method(method)
    targets = default_target_modules(model) if target_modules is None else target_modules
    if method != "lora":
        if not isinstance(spec, SMoREConfig):
            raise TypeError(f"method {method!r} needs an SMoREConfig (got {type(spec).__name__})")
        return SMoREModel(model, spec, targets, method=method)
    from peft import LoraConfig, get_peft_model

    if isinstance(spec, bool) or not isinstance(spec, int) or spec < 1:
        raise TypeError(f"method 'lora' needs a positive int rank (got {spec!r})")
    names = find_target_modules(model, targets)  # our matching, handed to peft as exact names
    config = LoraConfig(
        r=spec,
        lora_alpha=2 * spec if lora_alpha is None else lora_alpha,
        lora_dropout=0.0,
        target_modules=names,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def trainable_parameters(model: nn.Module) -> int:
    """Trainable parameters of any model (shared tensors once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def auxiliary_loss(model: nn.Module) -> Tensor | None:
    """The summed balance loss of an ``SMoREModel`` (``None`` for other models, e.g. LoRA)."""
    return model.balance_loss() if isinstance(model, SMoREModel) else None


def load_method_adapter(model: nn.Module, directory: str, trainable: bool = False) -> nn.Module:
    """Load an adapter folder of any method: a peft LoRA folder or an S'MoRE/MoLRE one."""
    import json
    from pathlib import Path

    from smore_gnn.save import CONFIG_NAME, load_adapter

    path = Path(directory) / CONFIG_NAME
    meta = json.loads(path.read_text()) if path.is_file() else {}
    if "peft_type" not in meta:
        return load_adapter(model, directory, trainable=trainable)
    from peft import PeftModel

    return PeftModel.from_pretrained(model, directory, is_trainable=trainable)

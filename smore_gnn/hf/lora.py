"""LoRA through HF ``peft`` as a registry method: ``LoraConfig``, ``get_peft_model``, folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from smore_gnn.hf.method import Method, Spec, linear_shapes
from smore_gnn.hf.save import atomic_folder
from smore_gnn.hf.targets import Patterns, default_target_modules, find_target_modules
from smore_gnn.nn.config import SMoREConfig


class LoRAMethod(Method):
    """LoRA through HF ``peft`` (``LoraConfig``, ``get_peft_model``, peft's folder format)."""

    name = "lora"
    default_rank = 8

    def default_spec(self, smore_config: SMoREConfig) -> Spec:
        return self.default_rank

    def default_template(self) -> Spec:
        return self.default_rank

    def spec_for_rank(self, template: Spec, rank: int) -> Spec:
        return rank

    def count(self, model: nn.Module, target_modules: Patterns | None, spec: Spec) -> int:
        rank = lora_rank(spec)
        return sum(rank * (d_in + d_out) for d_in, d_out in linear_shapes(model, target_modules))

    def build(
        self,
        model: nn.Module,
        spec: Spec,
        target_modules: Patterns | None = None,
        lora_alpha: float | None = None,
    ):
        """A peft ``PeftModel``; ``lora_alpha`` defaults to ``2 * rank``."""
        from peft import LoraConfig, get_peft_model

        rank = lora_rank(spec)
        targets = default_target_modules(model) if target_modules is None else target_modules
        config = LoraConfig(
            r=rank,
            lora_alpha=2 * rank if lora_alpha is None else lora_alpha,
            lora_dropout=0.0,
            target_modules=find_target_modules(model, targets),  # exact names: same matching
            bias="none",
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, config)

    def owns(self, model: nn.Module) -> bool:
        from peft import PeftModel

        return isinstance(model, PeftModel)

    def reads(self, meta: dict[str, Any]) -> bool:
        return str(meta.get("peft_type", "")).upper() == "LORA"

    def save(self, model: nn.Module, directory: str | Path) -> None:
        atomic_folder(directory, lambda tmp: model.save_pretrained(str(tmp)))

    def load(self, model: nn.Module, directory: str | Path, is_trainable: bool = False):
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(directory), is_trainable=is_trainable)


def lora_rank(spec: Any) -> int:
    """``spec`` checked as a LoRA rank (a positive int)."""
    if isinstance(spec, bool) or not isinstance(spec, int) or spec < 1:
        raise TypeError(f"method 'lora' needs a positive int rank (got {spec!r})")
    return spec

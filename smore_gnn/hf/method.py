"""The interface every method of the registry (:mod:`smore_gnn.hf.methods`) implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from smore_gnn.hf.targets import Patterns, default_target_modules, find_target_modules
from smore_gnn.nn.config import SMoREConfig

Spec = SMoREConfig | int  # an SMoREConfig (smore/molre) or a LoRA rank (lora)


@dataclass
class Budgeted:
    """The outcome of :meth:`Method.match_budget`."""

    method: str
    rank: int
    spec: Spec
    num_parameters: int
    budget: int

    @property
    def relative_error(self) -> float:
        """``(num_parameters - budget) / budget``."""
        return (self.num_parameters - self.budget) / self.budget


def trainable_parameters(model: nn.Module) -> int:
    """Trainable parameters of any model (shared tensors once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def linear_shapes(model: nn.Module, target_modules: Patterns | None) -> list[tuple[int, int]]:
    """``(in_features, out_features)`` of every linear the patterns select."""
    targets = default_target_modules(model) if target_modules is None else target_modules
    linears = [model.get_submodule(n) for n in find_target_modules(model, targets)]
    return [(m.in_features, m.out_features) for m in linears]


class Method(ABC):
    """One fine-tuning method: configuration, counting, budget matching, build, save, load.

    Attributes:
        name: the registry key (``"smore"``, ``"molre"``, ``"lora"``).
        reference: the method whose size sets the budget the others are matched to.
    """

    name: str = ""
    reference: bool = False

    @abstractmethod
    def default_spec(self, smore_config: SMoREConfig) -> Spec:
        """The spec used when no budget is matched, given the run's S'MoRE config."""

    @abstractmethod
    def default_template(self) -> Spec:
        """The spec :meth:`match_budget` varies the rank of by default."""

    @abstractmethod
    def spec_for_rank(self, template: Spec, rank: int) -> Spec:
        """``template`` with every rank set to ``rank``."""

    @abstractmethod
    def count(self, model: nn.Module, target_modules: Patterns | None, spec: Spec) -> int:
        """Trainable parameters this method would add to ``model`` (nothing is modified)."""

    @abstractmethod
    def build(self, model: nn.Module, spec: Spec, target_modules: Patterns | None = None):
        """Adapt ``model`` in place (default targets: the model type's MLP projections)."""

    @abstractmethod
    def owns(self, model: nn.Module) -> bool:
        """Whether ``model`` was adapted by this method."""

    @abstractmethod
    def reads(self, meta: dict[str, Any]) -> bool:
        """Whether an ``adapter_config.json`` with contents ``meta`` belongs to this method."""

    @abstractmethod
    def save(self, model: nn.Module, directory: str | Path) -> None:
        """Write ``model``'s adapter to ``directory`` atomically (see :mod:`smore_gnn.hf.save`)."""

    @abstractmethod
    def load(self, model: nn.Module, directory: str | Path, is_trainable: bool = False):
        """Load a folder written by :meth:`save` into the base ``model``."""

    def match_budget(
        self,
        model: nn.Module,
        target_modules: Patterns | None,
        budget: int,
        template: Spec | None = None,
        max_rank: int = 512,
    ) -> Budgeted:
        """The rank whose parameter count comes closest to ``budget`` (all layers alike).

        Args:
            model: the base model (not modified).
            target_modules: peft-style patterns (default: the model type's MLP projections).
            budget: the parameter count to match, e.g. S'MoRE's.
            template: the spec whose ranks are set (default: :meth:`default_template`).
            max_rank: largest rank tried.
        """
        if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
            raise ValueError(f"budget must be a positive parameter count (got {budget!r})")
        template = self.default_template() if template is None else template
        best: tuple[int, int] | None = None
        for r in range(1, max_rank + 1):
            n = self.count(model, target_modules, self.spec_for_rank(template, r))
            if best is None or abs(n - budget) < abs(best[1] - budget):
                best = (r, n)
            if n > budget:
                break
        assert best is not None
        spec = self.spec_for_rank(template, best[0])
        return Budgeted(self.name, best[0], spec, best[1], budget)

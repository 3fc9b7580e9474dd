"""Which linears of a model an adapter targets: peft's own matching rule, on the base linears.

Matching is peft's public helper :func:`peft.tuners.tuners_utils.check_target_module_exists`:
a string is a regex full-match on the module name; a list matches a name exactly or as a
dotted suffix; ``exclude_modules`` follows the same rule. Only ``nn.Linear`` modules are
adapted. A slot that already holds adapters (an ``AdaptedLinear``, or an ``SMoRELinear``
placed by hand) is seen as its base linear, so a second named adapter can target the same
modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

from torch import nn

from smore_gnn.hf.layer import AdaptedLinear
from smore_gnn.nn.layer import SMoRELinear

Patterns = str | Sequence[str]
# The paper adapts the MLP projections of every block (docs/spec.md §9).
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    **{
        t: ["gate_proj", "up_proj", "down_proj"]
        for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "olmo")
    },
    "phi3": ["gate_up_proj", "down_proj"],
}


def _matches(name: str, target_modules: Patterns, exclude_modules: Patterns | None) -> bool:
    from peft.tuners.tuners_utils import check_target_module_exists

    rule = SimpleNamespace(
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        exclude_modules=exclude_modules,
        target_parameters=None,
    )
    return bool(check_target_module_exists(rule, name))  # an excluded name is falsy


def match_module_name(name: str, patterns: Patterns) -> bool:
    """peft's rule: a str is a regex full-match; a list matches exactly or as a dotted suffix."""
    return _matches(name, patterns, None)


def default_target_modules(model: nn.Module) -> list[str]:
    """The paper's targets (``gate_proj``, ``up_proj``, ``down_proj``) for known model types."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEFAULT_TARGET_MODULES:
        raise ValueError(
            f"No default target_modules for model_type {model_type!r} (known: "
            f"{sorted(DEFAULT_TARGET_MODULES)}); pass target_modules=[...] explicitly"
        )
    return list(DEFAULT_TARGET_MODULES[model_type])


def base_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """``{name: nn.Linear}`` of the model's own linears; an adapted slot gives its base."""
    inside: list[str] = []
    out = {}
    for name, module in model.named_modules():
        if any(name.startswith(p) for p in inside):
            continue  # the router and experts of an adapter are not targets
        if isinstance(module, AdaptedLinear | SMoRELinear):
            inside.append(name + ".")
            out[name] = module.base_layer
        elif isinstance(module, nn.Linear):
            out[name] = module
    return out


def check_patterns(value: object, field: str) -> None:
    """Raise ``TypeError`` unless ``value`` is a regex string or a list of names."""
    ok = isinstance(value, str) or (
        isinstance(value, Sequence) and all(isinstance(v, str) for v in value)
    )
    if not ok:
        raise TypeError(
            f"{field} must be a regex string or a list of module names (got {value!r}); "
            "e.g. ['up_proj', 'down_proj']"
        )


def find_target_modules(
    model: nn.Module, target_modules: Patterns, exclude_modules: Patterns | None = None
) -> list[str]:
    """Names of the base ``nn.Linear`` modules of ``model`` selected by the patterns, in order.

    Raises:
        TypeError: patterns that are neither a string nor a list of strings.
        ValueError: if no ``nn.Linear`` matches; the message lists the patterns and examples.
    """
    check_patterns(target_modules, "target_modules")
    if exclude_modules is not None:
        check_patterns(exclude_modules, "exclude_modules")
    linears = list(base_linears(model))
    names = [n for n in linears if _matches(n, target_modules, exclude_modules)]
    if not names:
        examples = linears[:3] + linears[-2:] if len(linears) > 5 else linears
        raise ValueError(
            f"No nn.Linear module matched target_modules={target_modules!r} "
            f"(exclude_modules={exclude_modules!r}); example nn.Linear names: {examples}. "
            "Pass names (exact or dotted suffix, e.g. ['up_proj']) or one regex string"
        )
    return names

"""The settings of ``smore-gnn finetune`` / ``eval`` / ``inspect``: typed, validated dataclasses.

One dataclass per sub-command (parsed by :mod:`smore_gnn.cli.parse`). The whole configuration,
including the ``SMoREConfig`` built from the ``smore`` mapping, is validated when the
dataclass is constructed, before any model is loaded; errors are :class:`UsageError`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smore_gnn.cli.checks import UsageError, figure_path


def _opt(default: Any, text: str) -> Any:
    """A dataclass field with a default and the ``--help`` text."""
    return field(default=default, metadata={"help": text})


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise UsageError(f"{name} must be {expected} (got {value!r})")


@dataclass
class CommonArgs:
    """Settings every sub-command takes."""

    config: str | None = _opt(None, "YAML file of settings (keys as the flags with _)")
    model: str = _opt("smollm2", "HF directory, .gguf file, 'smollm2' or 'tiny' (random)")
    seed: int = _opt(0, "random seed")
    threads: int | None = _opt(None, "torch threads; unset: 1 on <= 2 cores, else cores - 1")
    progress: bool = _opt(True, "show progress bars")

    def __post_init__(self) -> None:
        _check(self.threads is None or self.threads >= 1, "threads", self.threads, ">= 1 or null")
        _check(bool(self.model), "model", self.model, "a model path or alias")


@dataclass
class DataArgs:
    """Data and scoring settings (finetune and eval)."""

    data: str | None = _opt(None, "JSONL file, or bundled 'wordnet' (if unset) / 'multitask'")
    eval_data: str | None = _opt(None, "JSONL test file; unset: the tail of a --data file")
    n_test: int = _opt(200, "test questions")
    answer: str = _opt("letter", "'text' (score the choice text) or 'letter'")
    eval_batch_size: int = _opt(16, "questions per scoring forward")

    def __post_init__(self) -> None:
        _check(self.n_test >= 0, "n_test", self.n_test, ">= 0")
        _check(self.answer in ("letter", "text"), "answer", self.answer, "'letter' or 'text'")
        _check(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, ">= 1")


@dataclass
class AdapterArgs:
    """How a fresh adapter is built (finetune, inspect without --adapter)."""

    adapter: str | None = _opt(None, "saved adapter folder (finetune: continue training it)")
    smore: dict | str | None = _opt(None, "SMoREConfig fields, e.g. '{\"rank\": [4, 4]}'")
    target_modules: list[str] | None = _opt(None, "adapted linears; unset: the MLP projections")
    smore_config: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        smore = self.smore or {}
        if isinstance(smore, str):
            try:
                smore = json.loads(smore)
            except json.JSONDecodeError as err:
                msg = f"smore must be a JSON object (got {self.smore!r}: {err.msg})"
                raise UsageError(msg) from err
        _check(isinstance(smore, dict), "smore", self.smore, 'a mapping, e.g. {"rank": [4, 4]}')
        self.smore = smore
        if self.target_modules is not None:
            names = [n.strip() for item in self.target_modules for n in str(item).split(",")]
            _check(all(names), "target_modules", self.target_modules, "module names")
            self.target_modules = names
        if self.adapter is not None:
            conflicts = [k for k in self.from_adapter if getattr(self, k) not in (None, {})]
            if conflicts:
                raise UsageError(
                    f"--adapter {self.adapter} brings its own method and configuration; drop "
                    f"{', '.join(conflicts)} (from the flags or --config) or drop --adapter"
                )
            if not (Path(self.adapter) / "adapter_config.json").is_file():
                raise UsageError(
                    f"adapter: expected a folder with adapter_config.json (got {self.adapter!r}); "
                    "pass the --output-dir of a finetune run"
                )
        else:
            try:
                from smore_gnn.hf.methods import smore_paper_config

                self.smore_config = smore_paper_config(**smore)
            except (TypeError, ValueError) as err:
                raise UsageError(f"smore: {err}") from err

    from_adapter = ("smore", "target_modules")


@dataclass
class RoutingArgs:
    """Which routing tree to print and draw (finetune, inspect)."""

    prompt: str | None = _opt(None, "prompt routed; unset: the first test question")
    module: str | None = _opt(None, "adapted module: index or name; unset: the middle one")
    token: int = _opt(-1, "token whose tree is drawn (-1: last)")
    png: str | None = _opt(
        None, "routing tree figure (.png, .svg, ...); a folder or unset: routing_tree.png in it"
    )
    output_dir: str = _opt("runs/finetune", "where outputs are written")

    def __post_init__(self) -> None:
        if self.prompt is not None and not self.prompt.strip():
            raise UsageError(
                f"prompt must hold a non-space character (got {self.prompt!r}); drop --prompt "
                "to route the default prompt"
            )
        figure_path(self.png, self.output_dir)  # the drawing, after training, resolves it again


@dataclass
class FinetuneArgs(CommonArgs, DataArgs, RoutingArgs, AdapterArgs):
    """``smore-gnn finetune``: base accuracy, fine-tuning, adapter, tuned accuracy."""

    method: str | None = _opt(None, "smore | molre | lora; unset: smore")
    lora_rank: int | None = _opt(None, "fixed LoRA rank; unset: matched to the budget")
    match_budget: bool = _opt(True, "size molre/lora to S'MoRE's parameters")
    n_train: int = _opt(480, "training records")
    max_length: int = _opt(64, "max tokens of a training example")
    batch_size: int = _opt(8, "per-device batch size")
    grad_accum: int = _opt(1, "gradient accumulation steps")
    epochs: float = _opt(1.0, "epochs")
    max_steps: int = _opt(-1, "optimizer steps (-1: from epochs)")
    lr: float = _opt(1e-3, "learning rate")
    router_lr_scale: float = _opt(1.0, "router lr = lr * this")
    warmup: float = _opt(0.1, "warmup (fraction of steps if < 1)")
    logging_steps: int = _opt(10, "log every N steps")
    eval_before: bool = _opt(True, "score the base model first")

    from_adapter = ("smore", "target_modules", "method", "lora_rank")

    def __post_init__(self) -> None:
        CommonArgs.__post_init__(self)
        DataArgs.__post_init__(self)
        from smore_gnn.hf.methods import method_names

        names = method_names()
        _check(self.method in (None, *names), "method", self.method, f"one of {list(names)}")
        AdapterArgs.__post_init__(self)
        RoutingArgs.__post_init__(self)
        _check(self.max_length >= 2, "max_length", self.max_length, ">= 2")
        for name in ("n_train", "batch_size", "grad_accum", "logging_steps"):
            _check(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        _check(self.lora_rank is None or self.lora_rank >= 1, "lora_rank", self.lora_rank, ">= 1")
        _check(
            self.max_steps == -1 or self.max_steps >= 1, "max_steps", self.max_steps, "-1 or >= 1"
        )
        for name in ("epochs", "lr", "router_lr_scale"):
            value = getattr(self, name)
            _check(0 < value < math.inf, name, value, "a finite number > 0")
        _check(0 <= self.warmup < math.inf, "warmup", self.warmup, "a finite number >= 0")
        if self.lora_rank is not None and self.method not in ("lora", None):
            raise UsageError(f"lora_rank applies to method lora only (got method {self.method!r})")


@dataclass
class EvalArgs(CommonArgs, DataArgs):
    """``smore-gnn eval``: multiple-choice accuracy of a base model plus an optional adapter."""

    adapter: str | None = _opt(None, "saved adapter folder; unset: the base model alone")

    def __post_init__(self) -> None:
        CommonArgs.__post_init__(self)
        DataArgs.__post_init__(self)
        if self.adapter is not None and not (Path(self.adapter) / "adapter_config.json").is_file():
            raise UsageError(
                f"adapter: expected a folder with adapter_config.json (got {self.adapter!r}); "
                "pass the --output-dir of a finetune run"
            )


@dataclass
class InspectArgs(CommonArgs, RoutingArgs, AdapterArgs):
    """``smore-gnn inspect``: print and draw a token's routing tree (and routing health)."""

    health_data: str | None = _opt(None, "JSONL or 'wordnet'/'multitask': draw routing health")
    n_test: int = _opt(200, "test questions measured for --health-data")

    def __post_init__(self) -> None:
        CommonArgs.__post_init__(self)
        AdapterArgs.__post_init__(self)
        _check(self.n_test >= 1, "n_test", self.n_test, ">= 1")
        RoutingArgs.__post_init__(self)


COMMANDS: dict[str, type] = {"finetune": FinetuneArgs, "eval": EvalArgs, "inspect": InspectArgs}
USAGE = """usage: smore-gnn {finetune,eval,inspect} [--config YAML] [flags]

  finetune  fine-tune an adapter, score multiple choice before and after
  eval      multiple-choice accuracy of a model plus an optional adapter
  inspect   print and draw a token's routing tree

smore-gnn COMMAND --help lists a command's flags; YAML keys are the flags with _."""

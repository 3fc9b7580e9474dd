"""The settings of ``smore-gnn finetune`` / ``eval`` / ``inspect``: typed, validated dataclasses.

One dataclass per sub-command, parsed by ``transformers.HfArgumentParser``. A YAML file
(``--config``) supplies defaults; explicit flags win. YAML values are type-checked field by
field against the dataclass annotations (``progress: "false"`` is ``False``, ``lr: 1e-3``,
which PyYAML reads as a string, is ``0.001``; anything else names the field). The whole
configuration, including the ``SMoREConfig`` built from the ``smore`` mapping, is validated
when the dataclass is constructed, before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser


class UsageError(ValueError):
    """A user error in the command line, config file or inputs: one line, exit code 2."""


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
                from smore_gnn.methods import smore_paper_config

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
    png: str | None = _opt(None, "routing tree PNG; unset: in output_dir")
    output_dir: str = _opt("runs/finetune", "where outputs are written")


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
        from smore_gnn.methods import method_names

        names = method_names()
        _check(self.method in (None, *names), "method", self.method, f"one of {list(names)}")
        AdapterArgs.__post_init__(self)
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
    """``smore-gnn inspect``: print and draw a token's routing tree."""

    def __post_init__(self) -> None:
        CommonArgs.__post_init__(self)
        AdapterArgs.__post_init__(self)


COMMANDS: dict[str, type] = {"finetune": FinetuneArgs, "eval": EvalArgs, "inspect": InspectArgs}
USAGE = """usage: smore-gnn {finetune,eval,inspect} [--config YAML] [flags]

  finetune  fine-tune an adapter, score multiple choice before and after
  eval      multiple-choice accuracy of a model plus an optional adapter
  inspect   print and draw a token's routing tree

smore-gnn COMMAND --help lists a command's flags; YAML keys are the flags with _."""


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def _coerce(name: str, hint: Any, value: Any, where: str) -> Any:
    """``value`` from a YAML file as the type ``hint`` of field ``name`` (or UsageError)."""
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise UsageError(f"{where}: {name} cannot be null; give a value or remove the key")
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if dict in options and isinstance(value, dict):
            return value
        hint = str if str in options and isinstance(value, str) else options[0]
    if hint is bool:
        text = str(value).strip().lower() if isinstance(value, str) else None
        if isinstance(value, bool) or text in ("true", "false", "yes", "no"):
            return value if isinstance(value, bool) else text in ("true", "yes")
        raise UsageError(f"{where}: {name} must be true or false (got {value!r})")
    if hint in (int, float) and not isinstance(value, bool):
        allowed = (int,) if hint is int else (int, float)
        if isinstance(value, allowed):
            return hint(value)
        if isinstance(value, str):
            try:
                return hint(value.strip())
            except ValueError:
                pass
    if hint in (int, float):
        kind = "an integer" if hint is int else "a number"
        raise UsageError(f"{where}: {name} must be {kind} (got {value!r})")
    if typing.get_origin(hint) is list:
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, list) and all(isinstance(v, str) for v in items):
            return items
        raise UsageError(f"{where}: {name} must be a list of strings (got {value!r})")
    if not isinstance(value, str):
        raise UsageError(f"{where}: {name} must be a string (got {value!r}); quote it")
    return value


def read_config(path: str, command: str) -> tuple[dict[str, Any], list[str]]:
    """The type-checked settings of a YAML file for ``command``, and the keys it leaves to others.

    Raises:
        UsageError: If the file is missing or not a YAML mapping, a key is unknown to every
            sub-command, or a value has the wrong type.
    """
    if not Path(path).is_file():
        raise UsageError(f"config: {path!r} does not exist; pass a YAML file to --config")
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"config {path}: not valid UTF-8 YAML ({first}); fix the file") from err
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise UsageError(
            f"config {path}: expected a mapping of settings, got a {type(data).__name__}"
        )
    cls = COMMANDS[command]
    known = set().union(*(_names(c) for c in COMMANDS.values())) - {"config"}
    unknown = sorted(str(k) for k in set(data) - known)
    if unknown:
        raise UsageError(f"config {path}: unknown keys {unknown}; known keys: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    mine = {
        k: _coerce(k, hints[k], v, f"config {path}") for k, v in data.items() if k in _names(cls)
    }
    return mine, sorted(set(data) - _names(cls))


class _Parser(HfArgumentParser):
    """``HfArgumentParser`` whose errors raise :class:`UsageError` instead of exiting."""

    def error(self, message: str) -> typing.NoReturn:
        command = self.prog.split()[-1]
        if message.startswith("unrecognized arguments"):
            message += f" (not settings of `smore-gnn {command}`)"
        raise UsageError(f"{message}; see smore-gnn {command} --help")


def parse(argv: list[str]) -> tuple[str, Any, list[str]]:
    """``(command, settings dataclass, YAML keys not used by this command)`` from ``argv``.

    Raises:
        UsageError: On any bad flag, config file or value.
    """
    if not argv or argv[0] not in COMMANDS:
        got = repr(argv[0]) if argv else "nothing"
        if argv and argv[0] in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        raise UsageError(f"expected a command: {', '.join(COMMANDS)} (got {got}); see --help")
    command, rest = argv[0], argv[1:]
    parser = _Parser(COMMANDS[command], prog=f"smore-gnn {command}", allow_abbrev=False)
    pre = _Parser(CommonArgs, add_help=False, allow_abbrev=False, prog=parser.prog)
    config = pre.parse_known_args(rest)[0].config
    ignored: list[str] = []
    if config:
        settings, ignored = read_config(config, command)
        parser.set_defaults(**settings)
    args, unknown = parser.parse_args_into_dataclasses(
        rest, return_remaining_strings=True, look_for_args_file=False
    )
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return command, args, ignored

"""Command line and YAML parsing for ``smore-gnn`` (``transformers.HfArgumentParser``).

A YAML file (``--config``) supplies defaults; explicit flags win. YAML values are
type-checked field by field against the dataclass annotations of :mod:`smore_gnn.cli.args`
(``progress: "false"`` is ``False``; ``lr: 1e-3``, which PyYAML reads as a string, is
``0.001``; anything else is a :class:`UsageError` naming the field).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from smore_gnn.cli.args import COMMANDS, USAGE, CommonArgs, UsageError

__all__ = ["UsageError", "parse", "read_config"]


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def _coerce(name: str, hint: Any, value: Any, where: str, example: str = "<text>") -> Any:
    """``value`` from a YAML file as the type ``hint`` of field ``name`` (or UsageError).

    ``example`` is a valid string value shown when a list or mapping came for a string.
    """
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
        raise UsageError(
            f"{where}: {name} must be a list of strings (got {value!r}), e.g. "
            f"{name}: [q_proj, v_proj]"
        )
    if hint is dict:
        raise UsageError(
            f"{where}: {name} must be a mapping of settings (got the {type(value).__name__} "
            f"{value!r}), e.g. {name}: {{rank: [4, 4], num_experts: [4, 4]}}"
        )
    if isinstance(value, list | dict):  # quoting a whole list or mapping would not fix it
        raise UsageError(
            f"{where}: {name} must be one string (got the {type(value).__name__} {value!r}), "
            f"e.g. {name}: {example}"
        )
    if not isinstance(value, str):
        raise UsageError(f"{where}: {name} must be a string (got {value!r}); quote it")
    return value


def read_config(path: str, command: str) -> tuple[dict[str, Any], list[str]]:
    """The type-checked settings of a YAML file for ``command``, and the keys it leaves to others.

    Raises:
        UsageError: If the file is missing or not a YAML mapping, a key is unknown to every
            sub-command, or a value has the wrong type.
    """
    if Path(path).is_dir():
        raise UsageError(f"config: {path!r} is a folder; pass a YAML file to --config")
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
    examples = {f.name: f.default for f in dataclasses.fields(cls) if isinstance(f.default, str)}
    mine = {
        k: _coerce(k, hints[k], v, f"config {path}", examples.get(k, "<text>"))
        for k, v in data.items()
        if k in _names(cls)
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

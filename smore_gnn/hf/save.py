"""The adapter folder: ``adapter_config.json`` + ``adapter_model.safetensors``, saved atomically.

Only adapter tensors are stored, keyed ``<module name>.<parameter name>``. S'MoRE# registers
one expert bank in every layer; such shared tensors are stored once, under their first name,
and stay shared after loading. Reading validates the files completely before the caller
touches the model.

A folder is written as a unit (:func:`atomic_folder`): the files go to a hidden sibling
folder, are flushed to disk, and the sibling is renamed into place; an existing folder is
renamed aside first and removed last. A reader therefore sees the old adapter or the new one,
never a mix, and an interrupted save leaves the previous adapter loadable. Other entries of
an existing folder (``metrics.json``, checkpoints, ...) are carried over by renaming. The next
save into the same folder cleans up after a save whose process was killed (see
:func:`recover_killed_saves`).

Saving and loading a model live with the model (``SMoREModel.save_pretrained`` /
``SMoREModel.from_pretrained``, :mod:`smore_gnn.hf.folders`); this module only knows files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from smore_gnn.nn.config import SMoREConfig
from smore_gnn.nn.layer import SMoRELinear

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_FILES = (CONFIG_NAME, WEIGHTS_NAME)
REQUIRED_KEYS = ("method", "smore_config", "adapted_modules", "target_modules")
_IN_PROGRESS: set[str] = set()  # names of the temporary folders of this process's saves


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk (folders: where the OS allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():  # e.g. Windows cannot open a folder; its renames are still atomic
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_folder(directory: str | Path, write: Callable[[Path], Any]) -> None:
    """Write a folder as a unit: ``write(tmp)`` fills a hidden sibling, which replaces it.

    Steps: write into ``.<name>.saving-<id>``; fsync its files and itself; move the other
    entries of an existing ``directory`` (those ``write`` did not create) into it; rename
    ``directory`` aside to ``.<name>.old-<id>``; rename the new folder in; remove the old one.
    If a step raises, the new folder is removed and the old one is put back. Before the
    entries move, what killed saves into ``directory`` left behind is cleaned up
    (:func:`recover_killed_saves`); ``<id>`` is ``<pid>-<8 hex digits>``.
    """
    out = Path(os.path.abspath(directory))
    if out.exists() and not out.is_dir():
        raise ValueError(f"Expected a folder to save the adapter in (got the file {out})")
    cwd = Path.cwd()
    if out == cwd or out in cwd.parents:
        raise ValueError(
            f"Expected a folder other than the working directory or its parents (got {out}); "
            "the save replaces the folder as a whole: pass a subfolder such as ./adapter"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp, old = out.parent / f".{out.name}.saving-{tag}", out.parent / f".{out.name}.old-{tag}"
    tmp.mkdir()
    _IN_PROGRESS.add(tmp.name)
    moved: list[str] = []
    try:
        write(tmp)
        for path in sorted(tmp.rglob("*")):
            if path.is_file():
                _fsync(path)
        _fsync(tmp)
        recover_killed_saves(out, keep=tmp)
        if out.exists():
            for entry in sorted(os.listdir(out)):
                if not (tmp / entry).exists():  # keep what the writer did not replace
                    os.rename(out / entry, tmp / entry)
                    moved.append(entry)
            os.rename(out, old)
        os.rename(tmp, out)
    except BaseException:
        if old.exists() and not out.exists():
            os.rename(old, out)
        for entry in moved:
            if (tmp / entry).exists() and out.exists():
                os.rename(tmp / entry, out / entry)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _IN_PROGRESS.discard(tmp.name)
    _fsync(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def _in_progress(folder: Path, pid: int) -> bool:
    """Whether the save writing ``folder`` (named after process ``pid``) may still run here.

    True whenever that cannot be told. Our own pid counts only for the saves this process has
    in flight: a restarted job often gets the pid of the killed one (PID 1 in a container).
    """
    if pid == os.getpid():
        return folder.name in _IN_PROGRESS
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: the process exists, owned by another user
        return True
    return True


def recover_killed_saves(directory: str | Path, keep: str | Path | None = None) -> list[Path]:
    """Clean up after :func:`atomic_folder` saves into ``directory`` that were killed.

    Touched: siblings named ``.<name>.saving-<pid>-<8 hex>`` of ``directory`` whose process
    is gone (:func:`_in_progress`; saving into one folder from two machines at once is not
    supported). Such a save may have carried entries of ``directory`` (``metrics.json``, ...)
    into its folder and, killed between its last two renames, left ``directory`` as
    ``.<name>.old-<pid>-<hex>``. That old folder is renamed back, entries ``directory`` lacks
    return to it (unless ``keep``, the folder of the save now running, has the name: it
    supersedes them), and the temporary folder is removed once each entry it still holds is
    superseded (by ``directory`` or ``keep``).

    Returns:
        The temporary folders removed.
    """
    out = Path(os.path.abspath(directory))
    keep = None if keep is None else Path(keep)
    pattern = re.compile(rf"\.{re.escape(out.name)}\.saving-(\d+)-([0-9a-f]{{8}})")
    removed = []
    for stale in sorted(out.parent.iterdir()) if out.parent.is_dir() else []:
        match = pattern.fullmatch(stale.name)
        if not match or stale == keep or not stale.is_dir() or _in_progress(stale, int(match[1])):
            continue

        def superseded(entry: str) -> bool:
            return (out / entry).exists() or (keep is not None and (keep / entry).exists())

        try:
            old = out.parent / f".{out.name}.old-{match[1]}-{match[2]}"
            if not out.exists() and old.is_dir():
                os.rename(old, out)  # killed between its renames: the previous folder returns
            for entry in sorted(os.listdir(stale)):
                if out.is_dir() and not superseded(entry):
                    os.rename(stale / entry, out / entry)  # carried over by the killed save
            if all(superseded(entry) for entry in os.listdir(stale)):
                shutil.rmtree(stale)
                removed.append(stale)
        except OSError:  # best effort: a folder that cannot be cleaned now stays for later
            continue
    return removed


def adapter_parameters(layers: dict[str, SMoRELinear]) -> dict[str, nn.Parameter]:
    """``{"<module>.<param>": parameter}`` of the adapters, base layers excluded, shared once."""
    params = {}
    for name, layer in layers.items():
        for pname, p in layer.named_parameters():  # named_parameters drops shared duplicates
            if not pname.startswith("base_layer."):
                params[f"{name}.{pname}"] = p
    return params


def write_adapter(directory: str | Path, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    """Write ``meta`` (JSON) and ``tensors`` (safetensors) as one folder, atomically."""

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    atomic_folder(directory, write)


def _leftover_hint(path: Path) -> str:
    folder = path.parent.absolute()
    backups = sorted(folder.parent.glob(f".{folder.name}.old-*")) if folder.parent.is_dir() else []
    if backups:
        return f"; an interrupted save left the previous adapter in {backups[-1]}: rename it back"
    named = sorted(p.parent.name for p in folder.glob(f"*/{CONFIG_NAME}"))  # [] if no folder
    return f"; it holds the named adapters {named}: pass one of those subfolders" if named else ""


def read_adapter_config(directory: str | Path, methods: tuple[str, ...]) -> dict[str, Any]:
    """Parse and check ``adapter_config.json``; ``smore_config`` becomes an ``SMoREConfig``.

    Args:
        directory: the adapter folder.
        methods: the method names an S'MoRE folder may carry.

    Raises:
        FileNotFoundError: no config file.
        ValueError: a config that is not JSON or lacks a required key or value.
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"Expected an adapter folder with {CONFIG_NAME} and {WEIGHTS_NAME} "
            f"(got no {path}){_leftover_hint(path)}; pass the --output-dir of a finetune run"
        )
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise ValueError(f"missing keys {missing}")
        smore = dict(meta["smore_config"])
        # 0.1 wrote no ``noise_bias``: its noisy top-k routers had a noise bias
        smore.setdefault("noise_bias", smore.get("gate_type", "noisy_topk") == "noisy_topk")
        meta["smore_config"] = SMoREConfig.from_dict(smore)
        if meta["method"] not in methods:
            raise ValueError(f"method {meta['method']!r}")
        names, targets = meta["adapted_modules"], meta["target_modules"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"adapted_modules {names!r}")
        if not isinstance(targets, str | list):
            raise ValueError(f"target_modules {targets!r}")
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as err:
        raise ValueError(
            f"Expected an S'MoRE {CONFIG_NAME} with keys {list(REQUIRED_KEYS)} and method in "
            f"{list(methods)} (got an unreadable {path}: {err}); re-save the adapter"
        ) from err
    return meta


def read_weights(directory: str | Path) -> dict[str, Tensor]:
    """The tensors of ``adapter_model.safetensors`` in ``directory``."""
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"Expected {path} next to {CONFIG_NAME} (missing)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"Expected a safetensors file at {path} (got a corrupt file: {err}); re-save it"
        ) from err


def expected_shapes(base_linears: dict[str, nn.Module | None], config: SMoREConfig) -> dict:
    """``{"<module>.<param>": shape}`` the adapter needs on these base linears (meta device).

    Raises:
        ValueError: a module is missing or not an ``nn.Linear``.
    """
    shapes, cache = {}, {}
    for name, base in base_linears.items():
        if not isinstance(base, nn.Linear):
            raise ValueError(
                f"The adapter expects an nn.Linear at {name!r} (got "
                f"{type(base).__name__ if base is not None else 'no such module'}); load it "
                "into the base model it was trained on"
            )
        key = (base.in_features, base.out_features)
        if key not in cache:
            with torch.device("meta"):
                probe = SMoRELinear(nn.Linear(*key), config)
            cache[key] = {n: p.shape for n, p in adapter_parameters({"": probe}).items()}
        shapes.update({f"{name}{k}": v for k, v in cache[key].items()})
    return shapes


def check_tensors(tensors: dict[str, Tensor], shapes: dict, where: str | Path) -> None:
    """Raise ``ValueError`` unless ``tensors`` has exactly the keys and shapes of ``shapes``."""
    missing = sorted(set(shapes) - set(tensors))
    unexpected = sorted(set(tensors) - set(shapes))
    wrong = [
        f"{k}: expected {tuple(shapes[k])}, got {tuple(t.shape)}"
        for k, t in tensors.items()
        if k in shapes and t.shape != shapes[k]
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"The adapter in {where} does not fit this model: missing {missing[:3]} "
            f"({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)}), wrong shapes "
            f"{wrong[:3]} ({len(wrong)}); load it into the base model it was trained on"
        )

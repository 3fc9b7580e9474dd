"""The adapter folder: ``adapter_config.json`` + ``adapter_model.safetensors``, saved atomically.

Only adapter tensors are stored, keyed ``<module name>.<parameter name>``. S'MoRE# registers
one expert bank in every layer; such shared tensors are stored once, under their first name,
and stay shared after loading. Reading validates the files completely before the caller
touches the model.

A folder is written as a unit (:func:`smore_gnn.hf.atomic.atomic_folder`): a reader sees the
old adapter or the new one, never a mix, and an interrupted save leaves the previous adapter
loadable; a symlink is followed, and a mount point is written inside. Other entries of an
existing folder (``metrics.json``, checkpoints, ...) are kept. The next save into the same
folder cleans up after a killed save (:func:`~smore_gnn.hf.atomic.recover_killed_saves`).

Saving and loading a model live with the model (``SMoREModel.save_pretrained`` /
``SMoREModel.from_pretrained``, :mod:`smore_gnn.hf.folders`); this module only knows files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from smore_gnn.hf.atomic import CONFIG_NAME, atomic_folder, latest_backup, recover_killed_saves
from smore_gnn.nn.config import SMoREConfig
from smore_gnn.nn.layer import SMoRELinear

__all__ = [
    "ADAPTER_FILES",
    "CONFIG_NAME",
    "REQUIRED_KEYS",
    "WEIGHTS_NAME",
    "adapter_parameters",
    "atomic_folder",
    "check_tensors",
    "expected_shapes",
    "read_adapter_config",
    "read_weights",
    "recover_killed_saves",
    "write_adapter",
]
WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_FILES = (CONFIG_NAME, WEIGHTS_NAME)
REQUIRED_KEYS = ("method", "smore_config", "adapted_modules", "target_modules")


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
    folder = Path(os.path.realpath(path.parent))
    backup = latest_backup(folder)
    if backup is not None and backup[1]:
        return (
            f"; an interrupted save left the previous adapter's files in {backup[0]}: move "
            f"them back into {folder}"
        )
    if backup is not None:
        return f"; an interrupted save left the previous adapter in {backup[0]}: rename it back"
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

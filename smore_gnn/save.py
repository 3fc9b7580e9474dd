"""Save and load S'MoRE adapters: ``adapter_config.json`` + ``adapter_model.safetensors``.

Only adapter tensors are stored, keyed ``<module name>.<parameter name>``. S'MoRE# registers
one expert bank in every layer; such shared tensors are stored once, under their first name,
and stay shared after loading. Loading validates the files and the model completely before
anything is modified.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from smore_gnn import __version__
from smore_gnn.config import SMoREConfig
from smore_gnn.layer import SMoRELinear
from smore_gnn.model import SMoREModel, get_smore_model

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
METHODS = ("smore", "molre")


def adapter_parameters(layers: dict[str, SMoRELinear]) -> dict[str, nn.Parameter]:
    """``{"<module>.<param>": parameter}`` of the adapters, base layers excluded, shared once."""
    params = {}
    for name, layer in layers.items():
        for pname, p in layer.named_parameters():  # named_parameters drops shared duplicates
            if not pname.startswith("base_layer."):
                params[f"{name}.{pname}"] = p
    return params


def _base_name(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "name_or_path", None) or None


def save_adapter(
    model: SMoREModel, directory: str | Path, base_model_name: str | None = None
) -> None:
    """Write the adapter of ``model`` to ``directory`` (created if needed).

    Args:
        model: the adapted model.
        directory: output folder.
        base_model_name: recorded as ``base_model_name_or_path`` (default: the base config's).
    """
    if not isinstance(model, SMoREModel):
        raise TypeError(f"save_adapter expects an SMoREModel (got {type(model).__name__})")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "method": model.method,
        "base_model_name_or_path": base_model_name or _base_name(model.model),
        "target_modules": model.target_modules,
        "exclude_modules": model.exclude_modules,
        "adapted_modules": sorted(model.adapted_names),
        "smore_config": model.smore_config.to_dict(),
        "smore_gnn_version": __version__,
    }
    params = adapter_parameters(model.adapters())
    tensors = {k: p.detach().cpu().contiguous() for k, p in params.items()}
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt", "method": model.method})
    (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """Parse and check ``adapter_config.json`` of an S'MoRE adapter folder."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"Expected an adapter folder with {CONFIG_NAME} and {WEIGHTS_NAME} "
            f"(got no {path}); pass the --output-dir of a finetune run"
        )
    try:
        meta = json.loads(path.read_text())
        meta["smore_config"] = SMoREConfig.from_dict(meta["smore_config"])
        if meta["method"] not in METHODS or not meta["adapted_modules"]:
            raise ValueError(f"method {meta['method']!r}, modules {meta['adapted_modules']!r}")
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"Expected an S'MoRE {CONFIG_NAME} with method in {list(METHODS)}, smore_config and "
            f"adapted_modules (got an unreadable {path}: {err!r}); re-save the adapter"
        ) from err
    return meta


def _read_weights(directory: Path) -> dict[str, Tensor]:
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"Expected {path} next to {CONFIG_NAME} (missing)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"Expected a safetensors file at {path} (got a corrupt file: {err}); re-save it"
        ) from err


def _expected_shapes(
    model: nn.Module, names: list[str], config: SMoREConfig, adapted: bool
) -> dict:
    """Parameter shapes the adapter needs on ``model`` (built on the meta device)."""
    shapes, cache = {}, {}
    for name in names:
        try:
            base = model.get_submodule(name)
        except AttributeError:
            base = None
        if isinstance(base, SMoRELinear) and not adapted:
            raise ValueError(
                f"Expected a base model, but {name!r} already holds an SMoRELinear; pass the "
                "SMoREModel itself to overwrite its adapter, or a fresh base model"
            )
        base = base.base_layer if isinstance(base, SMoRELinear) else base
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


def _check_tensors(tensors: dict[str, Tensor], shapes: dict, where: Path) -> None:
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


def load_adapter(model: nn.Module, directory: str | Path, trainable: bool = False) -> SMoREModel:
    """Load a saved adapter into ``model`` (a base model, or an ``SMoREModel`` to overwrite).

    Everything is validated before the model is touched: on any error it is left unchanged.

    Args:
        model: the base model (adapters are injected) or an already adapted ``SMoREModel``
            with the same configuration (weights are copied in place).
        directory: folder written by :func:`save_adapter`.
        trainable: leave the adapter trainable (default: frozen, for inference).

    Returns:
        The adapted model.
    """
    directory = Path(directory)
    meta = read_adapter_config(directory)
    config, names = meta["smore_config"], meta["adapted_modules"]
    tensors = _read_weights(directory)
    if isinstance(model, SMoREModel):
        if model.smore_config != config or sorted(model.adapted_names) != names:
            raise ValueError(
                f"The adapter in {directory} has config {config} on {len(names)} modules; the "
                f"SMoREModel has {model.smore_config} on {len(model.adapted_names)}; load it "
                "into the base model instead"
            )
        base = model.model
    else:
        base = model
    adapted = isinstance(model, SMoREModel)
    _check_tensors(tensors, _expected_shapes(base, names, config, adapted), directory)
    if not adapted:  # inject on the folder's exact module names, then restore its patterns
        model = get_smore_model(base, config, names, method=meta["method"])
        model.target_modules = meta["target_modules"]
        model.exclude_modules = meta["exclude_modules"]
    params = adapter_parameters(model.adapters())
    with torch.no_grad():
        for key, p in params.items():
            p.copy_(tensors[key])
            p.requires_grad_(trainable)
    return model

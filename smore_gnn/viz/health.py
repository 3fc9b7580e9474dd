"""Routing-health pictures: task x expert heat-maps, a per-module summary, trees per task.

They read the dict that :func:`smore_gnn.analysis.routing_health` returns (the metric
definitions are in :mod:`smore_gnn.analysis.metrics`) or, for the trees, the routings that
:func:`smore_gnn.analysis.collect_routings` keeps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from smore_gnn.analysis import TreeLike, as_tree, typical_tokens
from smore_gnn.viz._common import grid, layer_color, save
from smore_gnn.viz.trees import draw_routing_trees


def short_name(name: str) -> str:
    """``"model.layers.3.mlp.up_proj"`` -> ``"3.up_proj"`` (block index and projection)."""
    parts = name.split(".")
    digits = [p for p in parts if p.isdigit()]
    return ".".join(digits[-1:] + parts[-1:]) if digits else name


def _modules(health: Mapping[str, Any], modules: Sequence[str] | None) -> list[str]:
    if not isinstance(health, Mapping) or "modules" not in health:
        raise TypeError("health must be the dict routing_health(...) returns (no 'modules' key)")
    names = list(health["modules"]) if modules is None else list(modules)
    unknown = [n for n in names if n not in health["modules"]]
    if unknown or not names:
        raise ValueError(
            f"modules {unknown or names} not in the health dict; known: "
            f"{list(health['modules'])[:4]}..."
        )
    return names


def plot_task_expert_heatmap(
    health: Mapping[str, Any],
    modules: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    normalize: bool = True,
    max_panels: int = 24,
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Task x expert heat-maps: which experts each task's tokens pick, per module and layer.

    One panel per (module, layer), a row of layers per module. Cell ``[task, e]`` holds the
    picks of expert ``e`` by the task's tokens; with ``normalize`` the share of the task's
    picks (each row sums to 1). The panel title gives the layer's task NMI. All panels share
    one colour scale, from 0 to the largest value shown.

    Args:
        health: :func:`~smore_gnn.analysis.routing_health`'s result, computed with tasks.
        modules: module names (default: all).
        layers: expert layers (default: all).
        normalize: show each task's share instead of counts.
        max_panels: refuse to draw more panels than this (choose ``modules``).
        path: save the figure there when given.
        title: figure title.

    Returns:
        The matplotlib :class:`Figure` (one heat-map axes per panel, one colour bar).
    """
    names = _modules(health, modules)
    first = health["modules"][names[0]]
    if "tasks" not in first:
        raise ValueError("health has no task data; call routing_health(model, batches, tasks)")
    depth = len(first["layers"])
    layers = list(range(depth)) if layers is None else list(layers)
    if len(names) * len(layers) > max_panels:
        raise ValueError(
            f"{len(names)} modules x {len(layers)} layers exceed max_panels={max_panels}; "
            "pass modules=[...] (a few names) or a larger max_panels"
        )
    tasks = first["tasks"]
    shares = {}  # one colour scale for every panel: 0 .. the largest value shown
    for name in names:
        for l in layers:
            counts = np.asarray(health["modules"][name]["layers"][l]["task_expert_counts"], float)
            total = np.maximum(counts.sum(1, keepdims=True), 1)  # [K, 1]
            shares[name, l] = counts / total if normalize else counts  # [K, s_l]
    top = max(float(v.max()) for v in shares.values()) or 1.0
    fig, axes = grid(len(names) * len(layers), len(layers), (3.4, 0.32 * len(tasks) + 1.6))
    image = None
    for i, name in enumerate(names):
        for j, l in enumerate(layers):
            ax, info = axes[i * len(layers) + j], health["modules"][name]["layers"][l]
            shown = shares[name, l]
            image = ax.imshow(
                shown, aspect="auto", cmap="viridis", vmin=0, vmax=top, interpolation="none"
            )
            ax.set_yticks(range(len(tasks)), tasks, fontsize=7)
            ax.set_xticks(range(shown.shape[1]))
            ax.set_xlabel(f"expert (layer {l})", fontsize=8)
            ax.set_title(f"{short_name(name)}, layer {l}: NMI {info['task_nmi']:.2f}", fontsize=9)
    label = "share of the task's picks" if normalize else "picks"
    fig.colorbar(image, ax=axes, label=label, shrink=0.8)
    if title is not None:
        fig.suptitle(title)
    return save(fig, path)


def plot_routing_health(
    health: Mapping[str, Any],
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Per module (model order): score spread, busiest-expert share, load entropy, task NMI.

    Panels: median within-parent score spread (layers with ``f >= 2``); top share, with each
    layer's uniform level ``f/s`` dashed; normalised load entropy, with the floor
    ``log f / log s`` dotted; and, when the health has tasks, the whole-tree task NMI next to
    its shuffled-task control. One colour per layer.

    Args:
        health: :func:`~smore_gnn.analysis.routing_health`'s result.
        path: save the figure there when given.
        title: figure title (default: the summary's headline numbers).

    Returns:
        The matplotlib :class:`Figure`: 3 axes, or 4 with tasks.
    """
    names = _modules(health, None)
    rows = [health["modules"][n] for n in names]
    has_tasks = "task_nmi_tree" in rows[0]
    fig, axes = grid(4, 2, (4.6, 2.6)) if has_tasks else grid(3, 3, (4.6, 2.6))
    x = np.arange(len(names))
    depth = max(len(r["layers"]) for r in rows)
    for l in range(depth):
        color = layer_color(l, depth)
        infos = [(i, r["layers"][l]) for i, r in enumerate(rows) if l < len(r["layers"])]
        spread = [(i, v["spread_median"]) for i, v in infos if v["fanout"] >= 2]
        if spread:
            axes[0].plot(*zip(*spread), "o-", ms=3, lw=1, color=color, label=f"layer {l}")
        axes[1].plot(
            [i for i, _ in infos],
            [v["top_share"] for _, v in infos],
            "o-",
            ms=3,
            lw=1,
            color=color,
            label=f"layer {l}",
        )
        uniform = infos[0][1]["uniform_top_share"]
        axes[1].axhline(uniform, color=color, ls="--", lw=0.8)
        axes[2].plot(
            [i for i, _ in infos],
            [v["load_entropy"] for _, v in infos],
            "o-",
            ms=3,
            lw=1,
            color=color,
            label=f"layer {l}",
        )
        f, s = infos[0][1]["fanout"], infos[0][1]["num_experts"]
        if s > 1:
            axes[2].axhline(math.log(f) / math.log(s), color=color, ls=":", lw=0.8)
    axes[0].set_ylabel("median score spread")
    axes[1].set_ylabel("busiest-expert share")
    axes[2].set_ylabel("load entropy / log s")
    axes[1].set_ylim(0, 1.05)
    axes[2].set_ylim(0, 1.05)
    if has_tasks:
        axes[3].plot(x, [r["task_nmi_tree"] for r in rows], "o-", ms=3, lw=1, label="tasks")
        if "task_nmi_tree_shuffled" in rows[0]:
            axes[3].plot(
                x,
                [r["task_nmi_tree_shuffled"] for r in rows],
                "s--",
                ms=3,
                lw=1,
                color="grey",
                label="shuffled tasks",
            )
        axes[3].set_ylabel("task NMI (whole tree)")
        axes[3].set_ylim(0, 1.05)
    for ax in axes:
        ax.legend(fontsize=7, frameon=False)
        if len(names) <= 24:
            ax.set_xticks(x, [short_name(n) for n in names], rotation=90, fontsize=6)
        else:
            ax.set_xlabel("adapted module (model order)")
    summary = health.get("summary", {})
    if title is None and summary:
        title = (
            f"median spread {summary['median_spread']:.3f}, top-layer busiest share "
            f"max {summary['max_top_share']:.2f} / median {summary['median_top_share']:.2f}"
        )
        if "task_nmi" in summary:
            title += f", task NMI {summary['task_nmi']:.3f}"
            if "task_nmi_shuffled" in summary:
                title += f" (shuffled {summary['task_nmi_shuffled']:.3f})"
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path)


def plot_health_history(
    history: Sequence[Mapping[str, Any]],
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Routing-health summaries over training (:attr:`RoutingHealthCallback.history`).

    Panels: median score spread; top-layer busiest share (max and median over modules);
    mean load entropy; and, when logged, the task NMI next to its shuffled control.

    Args:
        history: ``[{"step", **summary}]`` as :class:`~smore_gnn.analysis.RoutingHealthCallback`
            records it.
        path: save the figure there when given.
        title: figure title.

    Returns:
        The matplotlib :class:`Figure`: 3 axes, or 4 with task NMI.
    """
    if not history:
        raise ValueError("history is empty; train with RoutingHealthCallback first")
    steps = [h["step"] for h in history]
    panels = [
        ("median score spread", ["median_spread"]),
        ("top-layer busiest share", ["max_top_share", "median_top_share"]),
        ("load entropy / log s", ["mean_load_entropy"]),
    ]
    if "task_nmi" in history[0]:
        panels.append(("task NMI (whole tree)", ["task_nmi", "task_nmi_shuffled"]))
    fig, axes = grid(len(panels), 2 if len(panels) == 4 else 3, (4.2, 2.5))
    for ax, (label, keys) in zip(axes, panels):
        for key in keys:
            if key in history[0]:
                style = "s--" if key.endswith("shuffled") else "o-"
                ax.plot(steps, [h[key] for h in history], style, ms=3, lw=1, label=key)
        ax.set_ylabel(label)
        ax.set_xlabel("step")
        ax.legend(fontsize=7, frameon=False)
    if title is not None:
        fig.suptitle(title)
    return save(fig, path)


def draw_task_trees(
    tree: TreeLike,
    token_tasks: Sequence[str],
    per_task: int = 1,
    token_labels: Sequence[str] | None = None,
    ncols: int | None = None,
    path: str | Path | None = None,
    title: str | None = None,
    show_scores: bool = True,
) -> Figure:
    """Routed trees of tokens from different tasks side by side, one panel per tree.

    For each task (sorted) it draws the tokens whose structure is among the task's
    ``per_task`` most frequent (:func:`~smore_gnn.analysis.typical_tokens`), labelled with
    the task, the token (and its text) and the share of the task's tokens routed that way.

    Args:
        tree: the routed sub-trees of the measured tokens, e.g.
            ``collect_routings(model, batches, tasks).trees[name]``.
        token_tasks: each token's task (``CollectedRouting.token_tasks``).
        per_task: trees per task.
        token_labels: each token's text, shown in the panel title.
        ncols: panels per row (default: ``per_task`` times the number of tasks, one row).
        path: save the figure there when given.
        title: figure title.
        show_scores: write the gate scores on the edges.

    Returns:
        The matplotlib :class:`Figure`.
    """
    tree = as_tree(tree)
    if token_labels is not None and len(token_labels) != tree.num_tokens:
        raise ValueError(f"token_labels has {len(token_labels)} entries for {tree.num_tokens}")
    picks = typical_tokens(tree, token_tasks, per_task)
    tokens, labels = [], []
    for task, chosen in picks.items():
        for token, share in chosen:
            text = "" if token_labels is None else f" {token_labels[token]!r}"
            tokens.append(token)
            labels.append(f"{task}\ntoken {token}{text}\n{share:.0%} of the task's tokens")
    return draw_routing_trees(
        tree,
        tokens=tokens,
        labels=labels,
        ncols=ncols,
        path=path,
        title=title,
        show_scores=show_scores,
    )

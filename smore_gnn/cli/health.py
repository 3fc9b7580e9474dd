"""Routing health for the CLI: ``finetune``'s ``metrics.json`` and ``inspect --health-data``.

Thin calls into :func:`smore_gnn.analysis.health.routing_health` (measured on the prompts of
held-out multiple-choice questions, with their ``task`` when every question has one) and the
health figures of :mod:`smore_gnn.viz`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def routing_health_of(
    model: Any, tokenizer: Any, test: list[dict], batch_size: int = 16, seed: int = 0
) -> dict | None:
    """``routing_health`` of ``model`` on the prompts of ``test`` (tasks when all have one).

    ``None`` without test questions or for a model without S'MoRE adapters. The global RNG
    state is left as it was (training is unaffected).
    """
    from smore_gnn.analysis import text_batches
    from smore_gnn.analysis.health import routing_health
    from smore_gnn.data.records import mc_prompt

    if not test or not hasattr(model, "adapters"):
        return None
    tasks = [str(r["task"]) for r in test] if all("task" in r for r in test) else None
    batches = text_batches(tokenizer, [mc_prompt(r) for r in test], batch_size)
    with torch.random.fork_rng(devices=[]):
        return routing_health(model, batches, tasks, seed=seed)


def draw_health(health: dict, out: Path, module: str) -> list[Path]:
    """Draw the per-module health panels, and with tasks ``module``'s task x expert heat-map.

    Returns:
        The PNG files written (``routing_health.png``, ``routing_tasks.png``) in ``out``.
    """
    import matplotlib.pyplot as plt

    from smore_gnn.viz import plot_routing_health, plot_task_expert_heatmap

    paths = [out / "routing_health.png"]
    plt.close(plot_routing_health(health, path=paths[0]))
    if "task_nmi_tree" in health["modules"][module]:
        paths.append(out / "routing_tasks.png")
        plt.close(plot_task_expert_heatmap(health, modules=[module], path=paths[1]))
    return paths


HEALTH_KEYS = (
    ("median_spread", "median within-parent score spread"),
    ("max_top_share", "busiest expert's share, top layer, worst module"),
    ("median_top_share", "busiest expert's share, top layer, median module"),
    ("mean_load_entropy", "normalised load entropy (mean)"),
    ("task_nmi", "task NMI of the routing tree"),
    ("task_nmi_shuffled", "  shuffled-task control"),
)


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """Per-task accuracy (base -> tuned) and the routing-health summary (before -> after)."""
    lines = []
    per_task = metrics.get("per_task") or {}
    tuned, base = per_task.get("tuned") or {}, per_task.get("base") or {}
    for task in sorted(tuned):
        before = base.get(task, {}).get("accuracy")
        before = "-" if before is None else f"{before:.3f}"
        lines.append(
            f"  {task:<12} {before} -> {tuned[task]['accuracy']:.3f} "
            f"({tuned[task]['n']} questions)"
        )
    if lines:
        lines.insert(0, "accuracy per task (base -> tuned):")
    health = metrics.get("routing_health")
    if health:
        lines.append("routing health on the test prompts (before -> after training):")
        for key, label in HEALTH_KEYS:
            old, new = health["before"].get(key), health["after"].get(key)
            if new is not None:
                old = "-" if old is None else f"{old:.3f}"
                lines.append(f"  {label:<50} {old} -> {new:.3f}")
    return lines

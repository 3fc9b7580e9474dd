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

    ``None`` without test questions, for a model without S'MoRE adapters, or before the
    health module exists. The global RNG state is left as it was (training is unaffected).
    """
    try:
        from smore_gnn.analysis import text_batches
        from smore_gnn.analysis.health import routing_health
    except ImportError:
        return None
    from smore_gnn.data import mc_prompt

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

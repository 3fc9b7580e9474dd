"""Summary and Markdown table of ``bench/quality.py``'s finished runs (one JSON per run).

Mean +- standard error over seeds (``stdev / sqrt(n)``, shown only with >= 2 seeds), and the
paired S'MoRE - LoRA (and S'MoRE - MoLRE) difference per budget: the per-seed differences
of runs that saw the same training data, their mean +- standard error.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

LABELS = {"base": "base", "lora": "LoRA (peft)", "molre": "MoLRE", "smore": "S'MoRE"}


def load_runs(out_dir: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The finished runs in ``out_dir`` (``<run>.json``) made with ``settings``."""
    from bench.quality import run_config

    if not out_dir.is_dir():
        return []
    runs = [json.loads(p.read_text()) for p in sorted(out_dir.glob("[!.]*.json"))]
    return [
        r
        for r in runs
        if r.get("config") == run_config(settings, r["dataset"], r["method"], r["budget"])
    ]


def mean_se(values: list[float]) -> dict[str, Any]:
    """``{"mean", "se", "n"}``; ``se`` is None for fewer than 2 values."""
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) >= 2 else None
    return {"mean": statistics.fmean(values), "se": se, "n": len(values)}


def _paired(runs: list[dict], data: str, budget: str, a: str, b: str) -> dict | None:
    acc = {
        (r["method"], r["seed"]): r["accuracy"]
        for r in runs
        if r["dataset"] == data and r["budget"] == budget
    }
    seeds = sorted(s for (m, s) in acc if m == a and (b, s) in acc)
    if not seeds:
        return None
    return {**mean_se([acc[(a, s)] - acc[(b, s)] for s in seeds]), "seeds": seeds}


def summarise(out_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready summary of the finished runs, per dataset and budget."""
    runs = load_runs(out_dir, settings)
    out: dict[str, Any] = {"settings": settings, "runs_finished": len(runs), "datasets": {}}
    for data in settings["datasets"]:
        entry: dict[str, Any] = {"budgets": {}}
        base = [r for r in runs if r["dataset"] == data and r["method"] == "base"]
        if base:
            entry["base"] = {"accuracy": base[0]["accuracy"], "per_task": base[0]["per_task"]}
        for budget in settings["budgets"]:
            cell: dict[str, Any] = {}
            for method in ("lora", "molre", "smore"):
                mine = [
                    r
                    for r in runs
                    if (r["dataset"], r["budget"], r["method"]) == (data, budget, method)
                ]
                if not mine:
                    continue
                tasks = sorted({t for r in mine for t in r["per_task"]})
                cell[method] = {
                    **mean_se([r["accuracy"] for r in mine]),
                    "seeds": sorted(r["seed"] for r in mine),
                    "trainable_parameters": mine[0]["trainable_parameters"],
                    "rank": mine[0].get("rank"),
                    "per_task": {
                        t: statistics.fmean(
                            r["per_task"][t]["accuracy"] for r in mine if t in r["per_task"]
                        )
                        for t in tasks
                    },
                    "wall_s_mean": statistics.fmean(r["wall_s"] for r in mine),
                }
            for a, b in (("smore", "lora"), ("smore", "molre")):
                pair = _paired(runs, data, budget, a, b)
                if pair is not None:
                    cell[f"{a}_minus_{b}"] = pair
            entry["budgets"][budget] = cell
        out["datasets"][data] = entry
    out["wall_s_total"] = round(sum(r["wall_s"] for r in runs), 1)
    return out


def _pct(stat: dict[str, Any] | None, signed: bool = False) -> str:
    if stat is None:
        return "-"
    text = f"{100 * stat['mean']:+.1f}" if signed else f"{100 * stat['mean']:.1f}"
    return text + (f" ± {100 * stat['se']:.1f}" if stat.get("se") is not None else " (1 seed)")


def report(out_dir: Path, settings: dict[str, Any]) -> str:
    """Markdown for BENCHMARKS.md: accuracy tables, paired differences, per-task accuracy."""
    s = summarise(out_dir, settings)
    n_test = ", ".join(f"{d} {n}" for d, n in settings["n_test"].items())
    lines = [
        f"Settings: seeds {settings['seeds']}, {settings['n_train']} training questions "
        f"(1 epoch, batch {settings['batch_size']}, lr {settings['lr']}, router lr x "
        f"{settings['router_lr_scale']}, router options {settings['router_options'] or 'none'}), "
        f"test questions: {n_test}; {s['runs_finished']} runs finished, "
        f"{s['wall_s_total'] / 3600:.2f} h of run time. Accuracy in %, mean ± standard error "
        "over seeds; differences paired by seed (same training data).",
        "",
    ]
    for data, entry in s["datasets"].items():
        lines += [
            f"**{data}**",
            "",
            "| budget | method | trainable params | rank | seeds "
            "| accuracy | S'MoRE − this (paired) |",
            "|---|---|---|---|---|---|---|",
        ]
        if "base" in entry:
            lines.append(f"| - | base | 0 | - | - | {100 * entry['base']['accuracy']:.1f} | - |")
        for budget, cell in entry["budgets"].items():
            for m in ("lora", "molre", "smore"):
                if m not in cell:
                    continue
                c, diff = cell[m], cell.get(f"smore_minus_{m}")
                lines.append(
                    f"| {budget} | {LABELS[m]} | {c['trainable_parameters']:,} | "
                    f"{c['rank']} | {len(c['seeds'])} | {_pct(c)} | "
                    f"{_pct(diff, signed=True)} |"
                )
        lines.append("")
        tasks = sorted(
            {
                t
                for cell in entry["budgets"].values()
                for m in cell.values()
                if isinstance(m, dict) and "per_task" in m
                for t in m["per_task"]
            }
        )
        if len(tasks) > 1:
            lines += [
                "| budget | method | " + " | ".join(tasks) + " |",
                "|---|---|" + "---|" * len(tasks),
            ]
            if "base" in entry:
                base = entry["base"]["per_task"]
                lines.append(
                    "| - | base | "
                    + " | ".join(
                        f"{100 * base[t]['accuracy']:.1f}" if t in base else "-" for t in tasks
                    )
                    + " |"
                )
            for budget, cell in entry["budgets"].items():
                for m in ("lora", "molre", "smore"):
                    if m in cell:
                        per = cell[m]["per_task"]
                        lines.append(
                            f"| {budget} | {LABELS[m]} | "
                            + " | ".join(f"{100 * per[t]:.1f}" if t in per else "-" for t in tasks)
                            + " |"
                        )
            lines.append("")
    return "\n".join(lines)

"""Tables and the issue-21 verdict from ``bench.quality_v3``'s finished runs.

Accuracy in %, mean ± standard error over seeds (``stdev / sqrt(n)``, only with >= 2 seeds);
differences are paired by seed (runs of one seed saw the same training questions in the same
order). ``G_eq`` = S'MoRE - LoRA r12 (equal parameters), ``G_dL`` = S'MoRE - LoRA r8 (equal
output rank d_L = 8). The verdict rules are the issue's, applied only to complete cells (3
seeds); every other cell is named as incomplete.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from bench import quality_v3 as q

LABELS = {
    "smore": "S'MoRE (router options)",
    "smore_faithful": "S'MoRE (paper router)",
    "smore_shared": "S'MoRE + shared r2 (extension)",
    "lora12": "LoRA r12 (equal params)",
    "lora8": "LoRA r8 (= d_L)",
    "smore_paper": "S'MoRE paper budget (d_L 64)",
    "lora64": "LoRA r64 (= d_L), alpha 2r",
    "lora83": "LoRA r83 (equal params), alpha 2r",
    "lora64_a1": "LoRA r64, alpha r",
    "lora83_a1": "LoRA r83, alpha r",
}
SMORE_ARMS = ("smore", "smore_faithful", "smore_shared")


def mean_se(values: list[float]) -> dict[str, Any]:
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) >= 2 else None
    return {"mean": statistics.fmean(values), "se": se, "n": len(values)}


def _pct(stat: dict | None, signed: bool = False) -> str:
    if stat is None:
        return "-"
    text = f"{100 * stat['mean']:+.1f}" if signed else f"{100 * stat['mean']:.1f}"
    return text + (f" ± {100 * stat['se']:.1f}" if stat["se"] is not None else " (1 seed)")


def load_all(out_dir: Path, settings: dict[str, Any]) -> tuple[dict, dict[str, dict]]:
    """``(lr choice, {run id: run})`` of the runs finished with the current settings."""
    lrs = q.choose_lrs(out_dir, settings)
    runs = {}
    for run_id in q.run_ids():
        run = q.load_run(out_dir / f"{run_id}.json", settings, lrs)
        if run is not None:
            runs[run_id] = run
    return lrs, runs


def paired(runs: dict, stage: str, a: str, b: str) -> dict | None:
    """Mean ± SE of the per-seed differences ``a - b`` in ``stage`` (seeds both finished)."""
    diffs = [
        runs[f"{stage}-{a}-s{s}"]["accuracy"] - runs[f"{stage}-{b}-s{s}"]["accuracy"]
        for s in q.SEEDS
        if f"{stage}-{a}-s{s}" in runs and f"{stage}-{b}-s{s}" in runs
    ]
    return {**mean_se(diffs), "seeds": len(diffs)} if diffs else None


def _rank_text(run_list: list[dict]) -> str:
    ranks = [r["rank"] for r in run_list if r.get("rank")]
    if not ranks:
        return "-"
    upd = statistics.fmean(v["update_rank"] for rank in ranks for v in rank.values())
    jac = statistics.fmean(v["jacobian_rank"] for rank in ranks for v in rank.values())
    return f"{upd:.1f} / {jac:.1f}"


def _cell_table(runs: dict, stage: str, arms: tuple[str, ...]) -> list[str]:
    lines = [
        "| arm | trainable params | seeds | accuracy | update rank / Jacobian rank |",
        "|---|---|---|---|---|",
    ]
    for arm in arms:
        mine = [runs[f"{stage}-{arm}-s{s}"] for s in q.SEEDS if f"{stage}-{arm}-s{s}" in runs]
        if not mine:
            lines.append(f"| {LABELS[arm]} | - | 0 | not run yet | - |")
            continue
        acc = mean_se([r["accuracy"] for r in mine])
        lines.append(
            f"| {LABELS[arm]} | {mine[0]['trainable_parameters']:,} | {len(mine)} | "
            f"{_pct(acc)} | {_rank_text(mine)} |"
        )
    return lines


def gaps(runs: dict) -> dict[str, dict[str, dict[str, dict | None]]]:
    """``{smore arm: {stage: {"G_eq", "G_dL"}}}`` (paired; ``None`` where nothing finished)."""
    return {
        arm: {
            stage: {
                "G_eq": paired(runs, stage, arm, "lora12"),
                "G_dL": paired(runs, stage, arm, "lora8"),
            }
            for stage in q.SIZES
            if arm in q.SIZE_ARMS[stage]
        }
        for arm in SMORE_ARMS
    }


def _complete(stat: dict | None) -> bool:
    return stat is not None and stat["seeds"] == len(q.SEEDS)


def verdict(g: dict[str, dict], wordnet_gap: dict | None) -> list[str]:
    """The issue's three readings for one S'MoRE arm's ``{stage: {"G_eq", "G_dL"}}``, in
    percentage points; a reading needing an incomplete cell says so."""
    pts = {
        s: {
            k: (
                None
                if not _complete(v)
                else {"mean": 100 * v["mean"], "se": 100 * (v["se"] or 0.0)}
            )
            for k, v in c.items()
        }
        for s, c in g.items()
    }
    out = []
    g640 = pts.get("mt640", {}).get("G_eq")
    if g640 is None:
        out.append("recipe (G_eq >= 0 at 640 with own lrs): **incomplete** (640 cell)")
    else:
        met = "met" if g640["mean"] >= 0 else "not met"
        out.append(f"recipe (G_eq >= 0 at 640 with own lrs): {met} ({g640['mean']:+.1f})")
    larger = [s for s in ("mt1920", "mtfull") if pts.get(s, {}).get("G_eq") is not None]
    if g640 is None or not larger:
        out.append("regime (G_eq rises > 2 SE with size, or >= 0 at full): **incomplete**")
    else:
        parts, met = [], False
        for s in larger:
            gs = pts[s]["G_eq"]
            rise, se = gs["mean"] - g640["mean"], math.hypot(gs["se"], g640["se"])
            met |= rise > 2 * se or (s == "mtfull" and gs["mean"] >= 0)
            parts.append(f"{s}: {gs['mean']:+.1f}, rise {rise:+.1f} vs 2 SE {2 * se:.1f}")
        todo = "" if "mtfull" in larger else "; full size incomplete"
        out.append(f"regime: {'met' if met else 'not met so far'} ({'; '.join(parts)}{todo})")
    sizes = [s for s in pts if pts[s]["G_eq"] is not None and pts[s]["G_dL"] is not None]
    broken = [  # one complete size outside the rule decides it before the others finish
        f"{s}: G_eq {pts[s]['G_eq']['mean']:+.1f}, G_dL {pts[s]['G_dL']['mean']:+.1f}"
        for s in sizes
        if pts[s]["G_eq"]["mean"] > -1.5 or abs(pts[s]["G_dL"]["mean"]) > 1
    ]
    if broken and len(sizes) < len(pts):
        out.append(
            "property of the method (G_eq <= -1.5 at every size, |G_dL| <= 1): not met "
            f"({'; '.join(broken)}), whatever the other sizes give"
        )
    elif len(sizes) < len(pts):
        out.append(
            "property of the method (G_eq <= -1.5 at every size, |G_dL| <= 1): "
            f"**incomplete** (complete sizes: {sizes or 'none'})"
        )
    else:
        met = all(
            pts[s]["G_eq"]["mean"] <= -1.5 and abs(pts[s]["G_dL"]["mean"]) <= 1 for s in sizes
        )
        out.append(f"property of the method: {'met' if met else 'not met'}")
    if wordnet_gap is not None:
        out.append(
            f"WordNet S'MoRE - LoRA r83 (alpha 2r): {_pct(wordnet_gap, True)} "
            f"({wordnet_gap['seeds']} seeds; the issue's reading: near -4)"
        )
    return out


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it."""
    root = Path(__file__).resolve().parents[1]
    path = Path(path).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def report(out_dir: Path, settings: dict[str, Any]) -> str:
    """Markdown: lr choice, the size cells with G_eq/G_dL, WordNet, the verdict, what is left."""
    lrs, runs = load_all(out_dir, settings)
    total = len(q.run_ids())
    lines = [
        f"{len(runs)} of {total} runs finished (results in {_shown(out_dir)}).",
        "",
        "**Learning rate per arm** (seed 0, 640 training questions, validation accuracy "
        f"on {q.N_VAL} questions carved from train by key; ties: the smaller lr)",
        "",
        "| arm | " + " | ".join(f"lr {q.lr_tag(lr)}" for lr in q.LRS) + " | chosen |",
        "|---|" + "---|" * (len(q.LRS) + 1),
    ]
    for arm in q.SMALL_ARMS:
        cells = []
        for lr in q.LRS:
            run = runs.get(f"val-{arm}-lr{q.lr_tag(lr)}-s0")
            cells.append(f"{100 * run['accuracy']:.1f}" if run else "not run yet")
        chosen = lrs[arm]["lr"] if arm in lrs else "incomplete"
        lines.append(f"| {LABELS[arm]} | " + " | ".join(cells) + f" | {chosen} |")
    g = gaps(runs)
    for stage, n in q.SIZES.items():
        size = n or "all 3,624 non-validation"
        lines += [
            "",
            f"**Multi-task, small budget, {size} training questions** (test: 700 questions)",
            "",
        ] + _cell_table(runs, stage, q.SIZE_ARMS[stage])
        lines += [
            "",
            "| S'MoRE arm | G_eq = S'MoRE - LoRA r12 | G_dL = S'MoRE - LoRA r8 |",
            "|---|---|---|",
        ]
        for arm in SMORE_ARMS:
            if stage in g[arm]:
                c = g[arm][stage]
                lines.append(
                    f"| {LABELS[arm]} | {_pct(c['G_eq'], True)} | {_pct(c['G_dL'], True)} |"
                )
    lines += ["", "**WordNet, paper budget, all 2,000 training questions** (test: 500)", ""]
    lines += _cell_table(runs, "wn", q.WN_ARMS)
    lines += ["", "| S'MoRE paper budget minus | paired |", "|---|---|"]
    for arm in q.WN_ARMS[1:]:
        lines.append(f"| {LABELS[arm]} | {_pct(paired(runs, 'wn', 'smore_paper', arm), True)} |")
    wn = paired(runs, "wn", "smore_paper", "lora83")
    lines += ["", "**Verdict (issue 21's rules; complete cells only)**", ""]
    for arm in SMORE_ARMS[:2]:
        lines += [f"- {LABELS[arm]}:"] + [f"  - {t}" for t in verdict(g[arm], wn)]
    best = [
        (arm, s, c["G_eq"])
        for arm in SMORE_ARMS
        for s, c in g[arm].items()
        if _complete(c["G_eq"]) and c["G_eq"]["mean"] >= 0
    ]
    lines.append(
        "- goal (some S'MoRE configuration >= LoRA r12 with 3 seeds): "
        + (
            ", ".join(f"{LABELS[a]} at {s} ({_pct(v, True)})" for a, s, v in best)
            if best
            else "not reached in the complete cells"
        )
    )
    stages = ("val", "mt640", "mt1920", "wn", "mtfull")
    left = {
        s: sum(1 for r in q.run_ids() if r.startswith(f"{s}-") and r not in runs) for s in stages
    }
    lines += ["", "Unfinished runs per stage: " + ", ".join(f"{s} {n}" for s, n in left.items())]
    return "\n".join(lines)

"""Render ``BENCHMARKS.md`` from the results of :mod:`bench.run` (every figure, and the goals).

The hand-written findings (optimisation log, profiles, graph breaks) live in
``bench/NOTES.md`` and are appended verbatim.
"""

from __future__ import annotations

from pathlib import Path

NOTES = Path(__file__).resolve().parent / "NOTES.md"
HEADLINE = ("(4-4)", 576, 2048)


def _fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _row(cells: list[object]) -> str:
    return "| " + " | ".join(_fmt(c) for c in cells) + " |"


def _headline(results: dict) -> dict | None:
    for case in results.get("adapter_speed", []):
        if (case["config"], case["d"], case["tokens"]) == HEADLINE:
            return case
    return None


def goals(results: dict) -> list[tuple[str, str, str]]:
    """``(goal, measured, verdict)`` for every goal of the issue that was measured."""
    rows = []

    def add(goal: str, value: float | None, ok: bool | None, unit: str = "") -> None:
        verdict = "not measured" if ok is None else ("met" if ok else "NOT met")
        rows.append((goal, "-" if value is None else f"{value:.3g}{unit}", verdict))

    h = _headline(results)
    if h is not None:
        add(
            "(4-4) layer fwd+bwd <= 2x equal-param LoRA layer",
            h["gnn_over_lora"],
            h["gnn_over_lora"] <= 2,
            "x",
        )
        ref = h.get("reference_over_gnn")
        add(
            ">= 10x faster than the reference formulation",
            ref,
            None if ref is None else ref >= 10,
            "x",
        )
        dense = h.get("gnn_over_dense")
        add(
            "GNN fwd+bwd <= 1.25x dense oracle",
            dense,
            None if dense is None else dense <= 1.25,
            "x",
        )
        rate = h["adapter_flop_rate_vs_matmul"]
        add("adapter >= 50% of plain-matmul FLOP rate", 100 * rate, rate >= 0.5, "%")
        share = h["graph_build_share_of_adapter"]
        add("graph building < 5% of adapter time", 100 * share, share < 0.05, "%")
    step = results.get("train_step", {}).get("methods", {}).get("smore")
    if step is not None:
        t, m = step["median_step_ms_over_lora"], step["train_peak_rss_mb_over_lora"]
        add("train step <= 1.5x LoRA (equal params)", t, t <= 1.5, "x")
        add("peak RSS <= 1.3x LoRA (equal params)", m, m <= 1.3, "x")
    _issue13_goals(results, add)
    theory = results.get("theory", {})
    if "total_s" in theory:
        add("theory count L=3, s=4, f=2 < 60 s", theory["total_s"], theory["total_s"] < 60, " s")
    _quality_goals(results.get("quality"), rows)
    return rows


def _case(results: dict, key: tuple) -> dict | None:
    return next(
        (c for c in results.get("adapter_speed", []) if (c["config"], c["d"], c["tokens"]) == key),
        None,
    )


def _issue13_goals(results: dict, add) -> None:
    """Issue 13's goals (decode, L=3, training step, GPU); rows go through ``add``."""
    for batch in results.get("generate", {}).get("batches", []):
        r = batch.get("time_over_lora", {}).get("smore")
        if r is not None:
            add(
                f"decode (greedy, KV cache) S'MoRE <= 1.3x unmerged LoRA, batch {batch['batch']}",
                r,
                r <= 1.3,
                "x",
            )
    for key in (HEADLINE, ("L=3 (4-4-4)", 576, 2048)):
        case = _case(results, key)
        if case is not None:
            r = case["gnn_over_lora"]
            add(
                f"{key[0]} layer fwd+bwd <= 1.15x equal-param LoRA (d=576, 2048 tokens)",
                r,
                r <= 1.15,
                "x",
            )
    step = results.get("train_step", {}).get("methods", {}).get("smore")
    if step is not None:
        t, m = step["median_step_ms_over_lora"], step["train_peak_rss_mb_over_lora"]
        add("train step <= 1.15x LoRA (equal params)", t, t <= 1.15, "x")
        add("peak RSS <= 1.1x LoRA (equal params)", m, m <= 1.1, "x")
    add(
        "GPU: layer <= 1.3x LoRA, theory count < 5 s (no GPU was lent: nothing measured)",
        None,
        None,
    )


def _generate_table(gen: dict) -> list[str]:
    methods = list(gen["batches"][0]["tokens_per_s"])
    head = ["batch", *[f"{m} tok/s" for m in methods], *[f"{m} / LoRA" for m in methods]]
    lines = [_row(head), "|" + "---|" * len(head)]
    for b in gen["batches"]:
        ratios = b.get("time_over_lora", {})
        lines.append(
            _row(
                [
                    b["batch"],
                    *[b["tokens_per_s"][m] for m in methods],
                    *[ratios.get(m) for m in methods],
                ]
            )
        )
    prof = gen.get("profile_smore_batch1")
    if prof:
        lines += [
            "",
            f"Where S'MoRE's batch-1 decode time goes (`torch.profiler`, one generate, "
            f"{prof['aten_calls_per_adapted_layer_per_step']} aten calls per adapted layer "
            "per step):",
            "",
            _row(["op", "calls", "self ms", "share"]),
            "|---|---|---|---|",
        ]
        lines += [_row([o["op"], o["calls"], o["self_ms"], o["share"]]) for o in prof["top_ops"]]
    return lines


def _adapter_table(cases: list[dict]) -> list[str]:
    head = [
        "config",
        "d",
        "tokens",
        "params",
        "LoRA r",
        "GNN ms",
        "dense ms",
        "LoRA ms",
        "base ms",
        "GNN/LoRA",
        "adapter/LoRA-adapter",
        "GNN/dense",
        "graph build %",
        "FLOPs/token",
        "adapter GFLOP/s",
        "matmul GFLOP/s",
        "rate/matmul",
        "torch_scatter/native",
    ]
    lines = [_row(head), "|" + "---|" * len(head)]
    for c in cases:
        ms = c["ms"]
        lines.append(
            _row(
                [
                    c["config"],
                    c["d"],
                    c["tokens"],
                    c["trainable_parameters"],
                    c["lora_rank"],
                    ms["gnn"],
                    ms.get("dense"),
                    ms["lora"],
                    ms["base"],
                    c["gnn_over_lora"],
                    c["adapter_over_lora_adapter"],
                    c.get("gnn_over_dense"),
                    100 * c["graph_build_share_of_adapter"],
                    c["flops_per_token"]["total"],
                    c["adapter_gflops"],
                    c["matmul_gflops"],
                    c["adapter_flop_rate_vs_matmul"],
                    c.get("torch_scatter_over_native", "not installed"),
                ]
            )
        )
    return lines


def _train_table(step: dict) -> list[str]:
    head = [
        "method",
        "rank",
        "trainable params",
        "step ms (median)",
        "step / LoRA",
        "train peak RSS MiB",
        "RSS / LoRA",
        "process max RSS MiB",
    ]
    lines = [_row(head), "|" + "---|" * len(head)]
    for name, m in step["methods"].items():
        lines.append(
            _row(
                [
                    name,
                    m["rank"],
                    m["trainable"],
                    m["median_step_ms"],
                    m.get("median_step_ms_over_lora", 1.0),
                    m["train_peak_rss_mb"],
                    m.get("train_peak_rss_mb_over_lora", 1.0),
                    m["process_max_rss_mb"],
                ]
            )
        )
    return lines


def _quality_goals(quality: dict | None, rows: list[tuple[str, str, str]]) -> None:
    """Issue 10's quality goals per dataset and budget, from ``bench.quality_report``'s summary:
    S'MoRE >= MoLRE >= LoRA (means) and, at the small budget, S'MoRE - LoRA >= +2 points."""
    if not quality:
        rows.append(("quality: S'MoRE >= MoLRE >= LoRA", "-", "not run"))
        return
    for data, entry in quality["summary"]["datasets"].items():
        for budget, cell in entry["budgets"].items():
            missing = [m for m in ("lora", "molre", "smore") if m not in cell]
            acc = {m: cell[m]["mean"] for m in cell if m in ("lora", "molre", "smore")}
            goal = f"quality {data}/{budget}: S'MoRE >= MoLRE >= LoRA"
            if missing:
                rows.append((goal, "-", f"incomplete (no {', '.join(missing)})"))
            else:
                ok = acc["smore"] >= acc["molre"] >= acc["lora"]
                seeds = min(len(cell[m]["seeds"]) for m in acc)
                measured = " / ".join(f"{100 * acc[m]:.1f}" for m in ("smore", "molre", "lora"))
                rows.append(
                    (goal, f"{measured} % (min. {seeds} seed(s))", "met" if ok else "NOT met")
                )
            diff = cell.get("smore_minus_lora")
            if budget == "small" and diff is not None:
                se = "" if diff["se"] is None else f" ± {100 * diff['se']:.1f}"
                rows.append(
                    (
                        f"quality {data}/small: S'MoRE - LoRA >= +2 points (paired)",
                        f"{100 * diff['mean']:+.1f}{se} (seeds {diff['seeds']})",
                        "met" if diff["mean"] >= 0.02 else "NOT met",
                    )
                )


def _quality(quality: dict | None) -> list[str]:
    if not quality:
        return [
            "Not run in this report (`python -m bench.quality [--quick]` writes one JSON per "
            "run under `bench/results/quality[_quick]/`; the full study takes hours on 2 "
            "cores)."
        ]
    return quality["markdown"].splitlines()


def render(results: dict) -> str:
    """The whole ``BENCHMARKS.md`` text."""
    m = results["machine"]
    out = [
        "# Benchmarks",
        "",
        "Generated by `python -m bench.run"
        + (" --quick" if results.get("quick") else "")
        + "` (`make bench`): the speed figures of the generated tables come from "
        "`bench/results/latest.json` (the date below), the quality figures from "
        "`bench/results/quality/`. The sections from 'How to read these numbers' on are "
        "`bench/NOTES.md`, measured by hand later: where a goal row differs from them, the "
        "latest such section holds the newer figure.",
        "",
        f"- date: {m['date']}; machine: {m['cpu']}, {m['cpu_count']} cores, {m['platform']}",
        f"- torch {m['torch']}, torch_geometric {m['torch_geometric']}, transformers "
        f"{m['transformers']}, peft {m['peft']}, python {m['python']}, torch-scatter "
        f"{'installed' if m['torch_scatter'] else 'not installed'}",
        f"- torch threads {m['torch_threads']}; load average (1 min) {m['load_avg_1min']} at "
        f"start, {m.get('load_avg_1min_end', '-')} at the end (the machine is shared)",
        "- timings: interleaved rounds, best of 3 calls per round, median over rounds; "
        "ratios are medians of per-round ratios (same run)",
        "",
        "## Goals",
        "",
        _row(["goal", "measured", "verdict"]),
        "|---|---|---|",
    ]
    out += [_row(list(g)) for g in goals(results)]
    if "adapter_speed" in results:
        out += [
            "",
            "## One adapted linear layer, forward + backward (`bench/adapter_speed.py`)",
            "",
            "`d -> d`, switch gate, training mode, input requiring grad; `adapter` = "
            "layer - frozen base; FLOPs from `smore_gnn.flops_per_token` (x3 for "
            "fwd+bwd); LoRA = peft `LoraLayer` with the rank of equal trainable "
            "parameters.",
            "",
        ]
        out += _adapter_table(results["adapter_speed"])
        h = _headline(results)
        if h is not None and "reference_ms" in h:
            out += [
                "",
                f"Reference formulation (per-token per-expert tiny matmuls, "
                f"`bench/reference.py`), (4-4), d=576, 2048 tokens: {h['reference_ms']:.1f} "
                f"ms, {h['reference_over_gnn']:.1f}x the GNN layer.",
            ]
    two = results.get("adapter_speed_2_threads")
    if two is not None:
        out += [
            "",
            "The same headline case with 2 torch threads (the machine's default; OpenMP "
            "spin-waits, so it is fast only while the other core is idle):",
            "",
        ]
        out += _adapter_table([two])
    if "batches" in results.get("generate", {}):
        g = results["generate"]
        out += [
            "",
            "## Greedy decoding (`bench/generate.py`)",
            "",
            f"{g['model']}; {g['batches'][0]['new_tokens']} new tokens per prompt with the "
            f"KV cache; {g['rounds']} interleaved rounds; time ratios to unmerged peft LoRA "
            "(medians of per-round ratios).",
            "",
        ]
        out += _generate_table(g)
    if "train_step" in results:
        t = results["train_step"]
        model = next(iter(t["methods"].values()))["model"]
        out += [
            "",
            "## Training step (`bench/train_step.py`)",
            "",
            f"{model}; batch {t['batch']} x {t['seq']} tokens; adapters on gate/up/down "
            "projections; AdamW; each method in its own subprocess.",
            "",
        ]
        out += _train_table(t)
    if "theory" in results:
        th = results["theory"]
        out += ["", "## Theory count (`bench/theory_speed.py`)", ""]
        if "error" in th:
            out.append(f"Failed: `{th['error'][-300:]}`")
        else:
            out.append(
                f"L=3, s=4, f=2: {th['trees']:,} structures, {th['distinct']:,} distinct "
                f"outputs, {th['total_s']} s (enumerate {th['enumerate_s']} s, GNN "
                f"{th['gnn_s']} s, distinct {th['distinct_s']} s), max RSS "
                f"{th['max_rss_mb']} MiB."
            )
    out += ["", "## Fine-tuning quality (`bench/quality.py`)", ""] + _quality(
        results.get("quality")
    )
    if NOTES.exists():
        out += ["", NOTES.read_text().rstrip()]
    return "\n".join(out) + "\n"


def write_report(results: dict, path: Path) -> None:
    """Write :func:`render` to ``path``."""
    path.write_text(render(results))

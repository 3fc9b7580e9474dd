"""Render ``BENCHMARKS.md`` from the results of :mod:`bench.run`: one table of the current goals,
then the generated tables behind them.

Every figure here comes from the last ``make bench`` (``bench/results/latest.json``) or from the
quality study's finished runs; nothing is typed in by hand. The history (optimisation logs,
profiles, earlier rounds' hand measurements) lives in ``bench/NOTES.md``.
"""

from __future__ import annotations

from pathlib import Path

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


GPU_GOALS = (
    "GPU (H200, bf16): SmolLM2-shape training step <= 1.5x LoRA; Llama-3.2-1B shape <= 1.3x",
    "GPU: layer fwd+bwd <= 1.5x LoRA (d=2048, 4096 tokens); <= 40 CUDA kernels per (4-4) step",
    "GPU: decode <= 1.3x unmerged LoRA; all of tests/test_cuda.py passes",
)


#: The same goals measured on 0.2 (commit 9543b28) by the issue that set them (a quiet machine,
#: one thread; decode and the training step from the last 0.2 session's BENCHMARKS.md): the
#: "before" column, fixed history rather than a measurement of this run.
BEFORE = {
    "(4-4) layer training step": "341",
    "L=3 (4-4-4) layer training step": "519",
    "(4-4) layer fwd+bwd": "1.22x",
    "L=3 (4-4-4) layer fwd+bwd": "1.62x",
    "SmolLM2 training step <=": "1.25x",
    "greedy decode (KV cache) <= 1.3x unmerged LoRA, batch 1": "1.21x",
    "greedy decode (KV cache) <= 1.3x unmerged LoRA, batch 8": "1.19x",
}


def before(goal: str) -> str:
    """The 0.2 figure of ``goal`` (:data:`BEFORE`), ``-`` where none was measured."""
    return next((v for k, v in BEFORE.items() if goal.startswith(k)), "-")


def goals(results: dict) -> list[tuple[str, str, str]]:
    """``(goal, measured, verdict)`` for every current goal (the latest issue's thresholds)."""
    rows = []

    def add(goal: str, value: float | None, ok: bool | None, unit: str = "") -> None:
        verdict = "not measured" if ok is None else ("met" if ok else "NOT met")
        rows.append((goal, "-" if value is None else f"{value:.3g}{unit}", verdict))

    for key, limit in (("(4-4)", 80), ("L=3 (4-4-4)", 110)):
        count = results.get("op_count", {}).get(key)
        add(
            f"{key} layer training step: top-level aten calls <= {limit} (d=576, 1024 tokens;"
            f" LoRA {results.get('op_count', {}).get('lora', '-')})",
            count,
            None if count is None else count <= limit,
        )
    for key in (HEADLINE, ("L=3 (4-4-4)", 576, 2048)):
        case = _case(results, key)
        r = None if case is None else case["gnn_over_lora"]
        add(
            f"{key[0]} layer fwd+bwd <= 1.10x equal-param LoRA (d=576, 2048 tokens)",
            r,
            None if r is None else r <= 1.10,
            "x",
        )
    step = results.get("train_step", {}).get("methods", {}).get("smore")
    t = None if step is None else step["median_step_ms_over_lora"]
    add("SmolLM2 training step <= 1.15x LoRA, eager (equal params)", t, _le(t, 1.15), "x")
    m = None if step is None else step["train_peak_rss_mb_over_lora"]
    add("SmolLM2 training step peak RSS <= 1.1x LoRA", m, _le(m, 1.1), "x")
    batches = results.get("generate", {}).get("batches", [])
    for batch in batches or [{"batch": 1}, {"batch": 8}]:
        r = batch.get("time_over_lora", {}).get("smore")
        add(
            f"greedy decode (KV cache) <= 1.3x unmerged LoRA, batch {batch['batch']}",
            r,
            _le(r, 1.3),
            "x",
        )
    h = _headline(results)
    if h is not None:
        ref = h.get("reference_over_gnn")
        add(">= 10x faster than the reference formulation", ref, _ge(ref, 10), "x")
        dense = h.get("gnn_over_dense")
        add("GNN fwd+bwd <= 1.25x the dense oracle", dense, _le(dense, 1.25), "x")
        share = h["graph_build_share_of_adapter"]
        add("graph building < 5% of adapter time", 100 * share, share < 0.05, "%")
    theory = results.get("theory", {}).get("total_s")
    add("theory count L=3, s=4, f=2 < 60 s", theory, _le(theory, 60), " s")
    for goal in GPU_GOALS:
        rows.append((goal, "-", "not measured: no GPU available"))
    _quality_goals(results.get("quality"), rows)
    return rows


def _flags(results: dict) -> str:
    return " --goals" if results.get("goals") else (" --quick" if results.get("quick") else "")


def _le(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def _ge(value: float | None, limit: float) -> bool | None:
    return None if value is None else value >= limit


def _case(results: dict, key: tuple) -> dict | None:
    return next(
        (c for c in results.get("adapter_speed", []) if (c["config"], c["d"], c["tokens"]) == key),
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


def _quality_v3() -> list[str]:
    """The issue-21 study's tables and verdict from its finished runs (none: a pointer)."""
    from bench import quality_v3
    from bench.quality_v3_report import report

    if not any(quality_v3.OUT_DIR.glob("*-s[0-9].json")):
        return ["No finished run yet (`python -m bench.quality_v3`; restartable)."]
    return report(quality_v3.OUT_DIR, quality_v3.settings_for()).splitlines()


def render(results: dict) -> str:
    """The whole ``BENCHMARKS.md`` text."""
    m = results["machine"]
    out = [
        "# Benchmarks",
        "",
        "Generated by `python -m bench.run"
        + _flags(results)
        + ("` (`make bench-goals`)" if results.get("goals") else "` (`make bench`)")
        + ": every speed figure comes from `bench/results/latest.json` "
        "(measured on the date below, by the command in each table's heading), the quality "
        "figures from the study's finished runs. How to read the numbers, and the history of "
        "every earlier round, is in `bench/NOTES.md`.",
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
        f"Measured {m['date']} by `python -m bench.run"
        + _flags(results)
        + "`, except the quality rows (`python -m bench.quality --report`).",
        "",
        _row(["goal", "0.2 (before)", "measured", "verdict"]),
        "|---|---|---|---|",
    ]
    out += [_row([g[0], before(g[0]), g[1], g[2]]) for g in goals(results)]
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
    out += ["", "## Why S'MoRE trails LoRA: the equal-rank study (`bench/quality_v3.py`)", ""]
    out += _quality_v3()
    out += [
        "",
        "## Fine-tuning quality, the 0.2 study (`bench/quality.py`)",
        "",
        "Its goal rows are in the table above; the whole table (base, LoRA, MoLRE, S'MoRE at two "
        "budgets, 3 seeds, both sets) is printed by `python -m bench.quality --report`.",
    ]
    return "\n".join(out) + "\n"


def write_report(results: dict, path: Path) -> None:
    """Write :func:`render` to ``path``."""
    path.write_text(render(results))

"""Run the benchmarks and write ``bench/results/latest.json`` and ``BENCHMARKS.md``.

``--quick`` (what ``make bench`` runs, a few minutes): the aten calls per layer training step
(``bench.op_count``, independent of load), the quick adapter-speed cases, the
quick training-step comparison (one subprocess per method), greedy decoding on SmolLM2
(``bench.generate``, with a profile of S'MoRE's decode step) and the theory count. Fine-tuning
quality (``bench.quality``) takes far longer and is run on its own; its finished runs
(``bench/results/quality/``, else ``quality_quick/``) are folded into the report.

    .venv/bin/python -m bench.run [--quick] [--threads 1] [--skip train_step ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench import adapter_speed, generate, op_count, train_step
from bench.common import RESULTS_DIR, machine_info
from bench.report import write_report

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("op_count", "adapter_speed", "train_step", "generate", "theory")


def run_theory(threads: int) -> dict:
    """``bench/theory_speed.py`` (the theory package's own timing script) in a subprocess."""
    cmd = [sys.executable, str(ROOT / "bench" / "theory_speed.py"), "--threads", str(threads)]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = round(time.perf_counter() - start, 2)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:], "wall_s": wall}
    return {**json.loads(done.stdout), "process_wall_s": wall}


def _with_quality(results: dict) -> dict:
    """Adds the summary and Markdown of ``bench.quality``'s finished runs (the full study wins
    over ``--quick``); nothing when neither has a finished run."""
    from bench.quality import results_dir, settings_for
    from bench.quality_report import report, summarise

    for quick in (False, True):
        settings, out_dir = settings_for(quick), results_dir(quick)
        summary = summarise(out_dir, settings)
        if summary["runs_finished"]:
            results["quality"] = {"summary": summary, "markdown": report(out_dir, settings)}
            break
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the quick version of every part")
    parser.add_argument(
        "--goals",
        action="store_true",
        help="the goals' settings (make bench-goals): the quick layer cases at 15 rounds, the "
        "SmolLM2 training step at 4 x 128 tokens (LoRA and S'MoRE), quick decoding",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS)
    parser.add_argument("--out", default=str(RESULTS_DIR / "latest.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="re-render BENCHMARKS.md from --out (e.g. after bench.quality)",
    )
    args = parser.parse_args(argv)
    if args.report_only:
        results = _with_quality(json.loads(Path(args.out).read_text()))
        write_report(results, Path(args.report))
        return results
    torch.set_num_threads(args.threads)
    quick = ["--quick"] if args.quick or args.goals else []
    threads = ["--threads", str(args.threads)]
    layer_args = quick + (["--rounds", "15"] if args.goals else [])
    step_args = ["--methods", "lora", "smore"] if args.goals else quick
    results: dict = {"quick": args.quick, "goals": args.goals, "machine": machine_info()}
    start = time.perf_counter()
    if "op_count" not in args.skip:
        print("== top-level aten calls per layer training step", flush=True)
        counts = op_count.main(["--json", str(RESULTS_DIR / "op_count.json")])["cases"]
        results["op_count"] = {c["config"]: c["smore_calls"] for c in counts}
        results["op_count"]["lora"] = counts[0]["lora_calls"]
    if "adapter_speed" not in args.skip:
        print("== adapter speed", flush=True)
        results["adapter_speed"] = adapter_speed.main(layer_args + threads)["cases"]
        if args.threads == 1:
            print("== headline case with 2 torch threads", flush=True)
            torch.set_num_threads(2)
            name, d, n = adapter_speed.HEADLINE
            results["adapter_speed_2_threads"] = adapter_speed.bench_case(name, d, n, 5)
            torch.set_num_threads(args.threads)
    if "train_step" not in args.skip:
        print("== training step", flush=True)
        step = train_step.main(step_args + threads)
        results["train_step"] = {k: v for k, v in step.items() if k != "machine"}
    if "generate" not in args.skip:
        print("== greedy decoding", flush=True)
        try:
            gen = generate.main(quick + threads + ["--profile"])
            results["generate"] = {k: v for k, v in gen.items() if k != "machine"}
        except (FileNotFoundError, ImportError, OSError) as err:  # no SmolLM2 GGUF installed
            results["generate"] = {"error": f"{type(err).__name__}: {err}"}
    if "theory" not in args.skip:
        print("== theory count", flush=True)
        results["theory"] = run_theory(args.threads)
        print(json.dumps(results["theory"]), flush=True)
    results = _with_quality(results)
    results["machine"]["load_avg_1min_end"] = machine_info()["load_avg_1min"]
    results["total_s"] = round(time.perf_counter() - start, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, Path(args.report))
    print(f"wrote {args.out} and {args.report} ({results['total_s']} s)")
    return results


if __name__ == "__main__":
    main()

"""Fine-tuning quality: LoRA vs MoLRE vs S'MoRE at equal trainable parameters, several seeds.

SmolLM2-135M-Instruct on the bundled WordNet multiple-choice set, each run through the
``smore-gnn finetune`` command (``smore_gnn.cli``: the settings of
``smore_gnn/configs/demo.yaml``, MoLRE and LoRA ranks matched to S'MoRE's budget) in its own
subprocess; the test accuracy of every run is read from its ``metrics.json``. The base
model's accuracy (same test questions) is measured once, in the first run.

    .venv/bin/python -m bench.quality            # 3 methods x 3 seeds (hours on 2 cores)
    .venv/bin/python -m bench.quality --quick    # 3 methods x 1 seed, fewer questions
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS_DIR, machine_info

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("lora", "molre", "smore")
DEMO = ROOT / "smore_gnn" / "configs" / "demo.yaml"


def run_one(method: str, seed: int, args: argparse.Namespace, eval_before: bool) -> dict:
    """One ``smore-gnn finetune`` run in a subprocess; its ``metrics.json``."""
    out = Path(args.output_dir) / f"{method}_seed{seed}"
    cmd = [sys.executable, "-m", "smore_gnn.cli", "finetune", "--config", str(DEMO),
           "--method", method, "--seed", str(seed), "--output-dir", str(out),
           "--n-train", str(args.n_train), "--n-test", str(args.n_test),
           "--eval-before" if eval_before else "--no-eval-before", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.time()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:  # recorded, so that one broken method does not hide the others
        last = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:]
        return {"method": method, "seed": seed, "error": (last or ["?"])[0][:500],
                "command": " ".join(cmd), "base_accuracy": None}  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    keep = ("base_accuracy", "tuned_accuracy", "trainable_parameters", "train_loss", "n_test")
    return {"method": method, "seed": seed, "wall_s": round(time.time() - start, 1),
            **{k: metrics.get(k) for k in keep}}  # fmt: skip


def summarise(runs: list[dict]) -> dict:
    """Mean, spread (population std, min, max) of the tuned accuracy per method."""
    out: dict = {}
    for method in METHODS:
        acc = [r["tuned_accuracy"] for r in runs if r["method"] == method and "error" not in r]
        if acc:
            out[method] = {
                "mean": round(statistics.fmean(acc), 4),
                "std": round(statistics.pstdev(acc), 4),
                "min": min(acc),
                "max": max(acc),
                "seeds": len(acc),
                "trainable_parameters": next(
                    r["trainable_parameters"]
                    for r in runs
                    if r["method"] == method and "error" not in r
                ),
            }
    failed = [f"{r['method']} seed {r['seed']}: {r['error']}" for r in runs if "error" in r]
    if failed:
        out["failed"] = failed
    base = [r["base_accuracy"] for r in runs if r["base_accuracy"] is not None]
    out["base"] = {"accuracy": base[0] if base else None}
    if all(m in out for m in METHODS) and base:
        s, m, lo = (out[k]["mean"] for k in ("smore", "molre", "lora"))
        out["ordering_smore_ge_molre_ge_lora_gt_base"] = s >= m >= lo > base[0]
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 240 train / 120 test")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    parser.add_argument("--output-dir", default=str(ROOT / "runs" / "bench_quality"))
    parser.add_argument("--json", default=None, help="default: bench/results/quality*.json")
    args = parser.parse_args(argv)
    args.json = args.json or str(
        RESULTS_DIR / ("quality_quick.json" if args.quick else "quality.json")
    )
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.n_train = args.n_train or (240 if args.quick else 480)
    args.n_test = args.n_test or (120 if args.quick else 200)
    runs = []
    for seed in args.seeds:
        for method in METHODS:
            first = not any(r.get("base_accuracy") is not None for r in runs)
            runs.append(run_one(method, seed, args, eval_before=first))
            print(json.dumps(runs[-1]), flush=True)
    out = {"machine": machine_info(), "settings": {k: v for k, v in vars(args).items()},
           "runs": runs, "summary": summarise(runs)}  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["summary"], indent=2))
    return out


if __name__ == "__main__":
    main()

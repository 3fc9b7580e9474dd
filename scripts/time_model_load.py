"""Time ``load_model_and_tokenizer`` with and without the GGUF load caches, one thread.

Reports wall and CPU seconds (CPU time is less disturbed by other processes on a shared
machine). Each load runs in a fresh Python process (nothing warm but the OS file cache); the two
variants alternate, so both see the same machine load. ``uncached`` is exactly the loading
path before the caches (``smore_gnn.hf.loading._gguf_load_caches`` replaced by a no-op).

    .venv/bin/python scripts/time_model_load.py [--model smollm2] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = """
import contextlib, json, sys, time
import torch
torch.set_num_threads(1)
from smore_gnn.hf import loading
if sys.argv[2] == "uncached":
    loading._gguf_load_caches = contextlib.nullcontext
start, cpu = time.perf_counter(), time.process_time()
loading.load_model_and_tokenizer(sys.argv[1])
print(json.dumps([time.perf_counter() - start, time.process_time() - cpu]))
"""


def time_once(model: str, variant: str) -> tuple[float, float]:
    """``(wall, CPU)`` seconds of one load in a fresh process (``cached`` or ``uncached``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, model, variant],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    wall, cpu = json.loads(out.strip().splitlines()[-1])
    return wall, cpu


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {"uncached": [], "cached": []}
    cpu: dict[str, list[float]] = {"uncached": [], "cached": []}
    for _ in range(args.runs):
        for variant in times:
            wall, used = time_once(args.model, variant)
            times[variant].append(round(wall, 2))
            cpu[variant].append(round(used, 2))
            print(f"{variant}: wall {wall:.1f} s, CPU {used:.1f} s", flush=True)
    result = {
        "model": args.model,
        "wall_s": times,
        "cpu_s": cpu,
        "median_wall_s": {k: statistics.median(v) for k, v in times.items()},
        "median_cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

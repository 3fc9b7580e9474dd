"""Time the largest Figure 2 count: ``s = 4``, ``f = 2``, ``L = 3`` (279,936 routing trees).

Every structure goes through :meth:`smore_gnn.SMoRELinear.propagate_tree` in one batched pass
(``--chunk-size`` splits it), then the outputs are deduplicated. Prints one JSON object.

    .venv/bin/python bench/theory_speed.py [--propagation smore] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smore_gnn.nn.counting import num_structures, uniform_layers  # noqa: E402
from theory.count import generic_layer  # noqa: E402
from theory.distinct import distinct_rows  # noqa: E402
from theory.enumerate import iter_structures  # noqa: E402


def run(num_experts: int, fanout: int, num_layers: int, propagation: str, chunk: int | None):
    s, f = uniform_layers(num_experts, fanout, num_layers)
    layer = generic_layer(s, f, propagation)
    x = torch.randn(layer.in_features, generator=torch.Generator().manual_seed(1)).double()
    times = {"enumerate_s": 0.0, "gnn_s": 0.0}
    outs = []
    start = time.perf_counter()
    trees = iter_structures(s, f, chunk)
    while True:
        t0 = time.perf_counter()
        tree = next(trees, None)
        t1 = time.perf_counter()
        times["enumerate_s"] += t1 - t0
        if tree is None:
            break
        with torch.no_grad():
            outs.append(layer.proj(layer.propagate_tree(x.expand(tree.num_tokens, -1), tree)))
        times["gnn_s"] += time.perf_counter() - t1
    t2 = time.perf_counter()
    res = distinct_rows(torch.cat(outs))
    times["distinct_s"] = time.perf_counter() - t2
    times["total_s"] = time.perf_counter() - start
    return {
        "config": {"s": num_experts, "f": fanout, "L": num_layers, "propagation": propagation},
        "trees": num_structures(s, f),
        "passes": len(outs),
        "distinct": res.count,
        "min_gap": res.min_gap,
        "max_within": res.max_within,
        **{k: round(v, 3) for k, v in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--propagation", default="smore", choices=["smore", "momor", "smore_star"])
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--profile", action="store_true", help="torch.profiler table to stderr")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(4, 2, 3, args.propagation, args.chunk_size)
    result["torch_threads"] = torch.get_num_threads()
    result["load_avg_1min"] = os.getloadavg()[0]
    result["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(result, indent=2))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(4, 2, 3, args.propagation, args.chunk_size)
        print(
            prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), file=sys.stderr
        )


if __name__ == "__main__":
    main()

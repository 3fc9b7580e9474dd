"""Top-level aten calls of one adapted layer's training step (forward + backward), on the CPU.

An aten call is *top-level* when no other aten call encloses it (``torch.profiler``'s event
tree): what the dispatcher launches per step, and on a GPU roughly the kernels launched. The
count does not depend on machine load, unlike a time. Candidates: S'MoRE configs of
:mod:`bench.adapter_speed` (GNN backend, training mode, switch gate) and a peft LoRA layer of
equal parameters.

    .venv/bin/python -m bench.op_count [--d 576] [--tokens 1024] [--json out.json] [--top 0]
    .venv/bin/python -m bench.op_count --device cuda --d 2048 --tokens 4096

``--device cuda`` also counts the CUDA kernels launched per step (bf16 autocast).
"""

from __future__ import annotations

import argparse
import collections
import copy
import json

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from bench.adapter_speed import CONFIGS, make_layer
from bench.adapter_speed import _step as adapter_step
from bench.common import (
    RESULTS_DIR,
    add_device_argument,
    check_device,
    lora_rank_for,
    peft_lora_layer,
    save_json,
)
from smore_gnn import count_parameters


def top_level_aten(run, warmup: int = 2, kernels: dict | None = None) -> collections.Counter:
    """Names of the top-level aten calls of one ``run()`` (after ``warmup`` runs); with a
    ``kernels`` dict, its ``"cuda_kernels"`` entry is set to the CUDA kernels launched."""
    for _ in range(warmup):
        run()
    activities = [ProfilerActivity.CPU]
    if kernels is not None:
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        run()
        if kernels is not None:
            torch.cuda.synchronize()
    if kernels is not None:
        cuda = torch.autograd.DeviceType.CUDA
        kernels["cuda_kernels"] = sum(1 for e in prof.events() if e.device_type == cuda)
    counts: collections.Counter = collections.Counter()
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is None:
            counts[event.name] += 1
    return counts


def _step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, device: str = "cpu"):
    """:func:`bench.adapter_speed._step`, with the gradients cleared first (as a trainer does)."""
    step = adapter_step(module, x, grad, device)

    def run() -> None:
        x.grad = None
        module.zero_grad(set_to_none=True)
        step()

    return run


def count_case(name: str, d: int, n: int, device: str = "cpu", **overrides: object) -> dict:
    """Top-level aten calls per training step of config ``name`` and of equal-size LoRA."""
    layer = make_layer(name, d, **overrides).to(device)
    rank = lora_rank_for(count_parameters(layer.config, d, d)["total"], d, d)
    lora = peft_lora_layer(copy.deepcopy(layer.base_layer), rank).to(device)
    x = torch.randn(n, d, device=device, requires_grad=True)
    grad = torch.randn(n, d, device=device)
    cuda = device == "cuda"
    smore_k: dict | None = {} if cuda else None
    lora_k: dict | None = {} if cuda else None
    smore = top_level_aten(_step(layer, x, grad, device), kernels=smore_k)
    base = top_level_aten(_step(lora, x, grad, device), kernels=lora_k)
    out = {
        "config": name,
        "d": d,
        "tokens": n,
        "device": device,
        "smore_calls": sum(smore.values()),
        "lora_calls": sum(base.values()),
    }
    if cuda:
        out.update(
            smore_cuda_kernels=smore_k["cuda_kernels"], lora_cuda_kernels=lora_k["cuda_kernels"]
        )
    return {**out, "smore_by_name": dict(smore.most_common())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=int, default=576)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--configs", nargs="*", default=["(4-4)", "L=3 (4-4-4)"])
    parser.add_argument("--top", type=int, default=0, help="also print the N commonest calls")
    parser.add_argument("--json", default=str(RESULTS_DIR / "op_count.json"))
    add_device_argument(parser)
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    torch.set_num_threads(1)
    cases = []
    for name in args.configs:
        if name not in CONFIGS:
            parser.error(f"--configs must be in {list(CONFIGS)} (got {name!r})")
        case = count_case(name, args.d, args.tokens, args.device)
        cases.append(case)
        brief = {k: v for k, v in case.items() if k != "smore_by_name"}
        print(json.dumps(brief), flush=True)
        for op, k in list(case["smore_by_name"].items())[: args.top]:
            print(f"  {k:4d} {op}")
    out = {"cases": cases}
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()

"""One adapted linear layer, forward + backward: S'MoRE (GNN) vs dense oracle vs peft LoRA.

For every config, width ``d`` and token count ``N``: the layer ``d -> d`` in training mode,
the input requiring grad (as inside a network), a fixed random output gradient. Candidates:
``gnn`` (``backend="gnn"``), ``dense`` (the oracle), ``gnn_torch_scatter`` (if installed),
``lora`` (a peft LoRA layer whose rank matches S'MoRE's trainable parameters) and ``base``
(the frozen linear alone, so ``adapter = layer - base``). Also: the share of the GNN layer's
time spent building the routing graph, FLOPs per token and the achieved FLOP rate against one
plain ``torch.matmul`` of equal FLOPs, and (one case) the paper's reference formulation.

    .venv/bin/python -m bench.adapter_speed [--quick] [--threads 1] [--json out.json]
    .venv/bin/python -m bench.adapter_speed --case "(4-4)" 576 2048   # one row
    .venv/bin/python -m bench.adapter_speed --device cuda --case "(4-4)" 2048 4096

``--device cuda``: the layers on the GPU, bf16 autocast, CUDA events; only ``gnn``, ``lora``
and ``base`` (no oracle, no FLOP rates).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics

import torch
from torch import nn

from bench.common import (
    add_device_argument,
    autocast,
    check_device,
    has_torch_scatter,
    interleaved,
    lora_rank_for,
    machine_info,
    matmul_rate,
    median_ms,
    peft_lora_layer,
    ratio,
    save_json,
)
from bench.reference import reference_delta
from smore_gnn import RoutingTree, SMoREConfig, SMoRELinear, count_parameters, flops_per_token

CONFIGS = {
    "(4-4)": dict(num_experts=[4, 4], fanout=[2, 2], rank=[8, 8]),
    "(2-2)": dict(num_experts=[2, 2], fanout=[2, 2], rank=[8, 8]),
    "L=3 (4-4-4)": dict(num_experts=[4, 4, 4], fanout=[2, 2, 2], rank=[8, 8, 8]),
}
HEADLINE = ("(4-4)", 576, 2048)  # the goal's case, also timed against the reference code
FULL = [(c, d, n) for c in CONFIGS for d in (576, 2048) for n in (512, 2048, 8192)]
QUICK = [HEADLINE, ("(2-2)", 576, 2048), ("L=3 (4-4-4)", 576, 2048), ("(4-4)", 2048, 512)]
DENSE_LIMIT_BYTES = 1 << 30  # the oracle gathers [N, F_l, r, d] expert matrices


def make_layer(name: str, d: int, seed: int = 0, **overrides: object) -> SMoRELinear:
    """The adapted ``d -> d`` layer of config ``name`` (switch gate, as the paper's best run).

    ``W_proj`` (zero at init) is made random so that every backward product is non-trivial.
    """
    torch.manual_seed(seed)
    cfg = SMoREConfig(**CONFIGS[name], gate_type="switch", **overrides)
    layer = SMoRELinear(nn.Linear(d, d), cfg).train()
    with torch.no_grad():
        nn.init.normal_(layer.proj.weight, std=0.02)
    return layer


def _dense_bytes(cfg: SMoREConfig, d: int, n: int) -> int:
    nodes = cfg.nodes_per_layer
    return max(4 * n * nodes[l] * cfg.rank[l] * d for l in range(cfg.num_layers))


def _step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, device: str = "cpu"):
    def run() -> None:
        with autocast(device):
            y = module(x)
        loss = getattr(module, "balance_loss", None)
        if loss is None:
            y.backward(grad)
        else:
            torch.autograd.backward([y, loss], [grad, torch.ones_like(loss)])

    return run


def _graph_build(layer: SMoRELinear, x: torch.Tensor):
    routing = layer.router(x.detach())
    momor = layer.config.propagation == "momor"

    def run() -> None:
        tree = RoutingTree.from_routing(routing)
        for l in range(tree.num_layers):
            tree.layer_edge_index(l), tree.layer_edge_weight(l)
            if momor:
                tree.first_use(l)

    return run


def bench_device(name: str, d: int, n: int, rounds: int, device: str) -> dict:
    """``gnn``, ``lora`` and ``base`` on ``device`` under bf16 autocast, CUDA events."""
    gnn = make_layer(name, d).to(device)
    rank = lora_rank_for(count_parameters(gnn.config, d, d)["total"], d, d)
    lora = peft_lora_layer(copy.deepcopy(gnn.base_layer), rank).to(device)
    x = torch.randn(n, d, device=device, requires_grad=True)
    grad = torch.randn(n, d, device=device, dtype=torch.bfloat16)
    modules = {"gnn": gnn, "lora": lora, "base": gnn.base_layer}
    fns = {key: _step(m, x, grad, device) for key, m in modules.items()}

    def drop_grads() -> None:
        x.grad = None
        for m in modules.values():
            m.zero_grad(set_to_none=True)

    times = interleaved(fns, rounds=rounds, after=drop_grads, device=device)
    return {
        "config": name,
        "d": d,
        "tokens": n,
        "device": torch.cuda.get_device_name() if device == "cuda" else device,
        "lora_rank": rank,
        "ms": {key: median_ms(t) for key, t in times.items()},
        "gnn_over_lora": ratio(times, "gnn", "lora"),
    }


def bench_case(name: str, d: int, n: int, rounds: int, reference: bool = False) -> dict:
    """Every candidate on one (config, d, N) case, interleaved; medians and ratios."""
    gnn = make_layer(name, d)
    cfg = gnn.config
    params = count_parameters(cfg, d, d)["total"]
    rank = lora_rank_for(params, d, d)
    lora = peft_lora_layer(copy.deepcopy(gnn.base_layer), rank)
    x = torch.randn(n, d, requires_grad=True)
    grad = torch.randn(n, d)
    modules: dict[str, nn.Module] = {"gnn": gnn}
    if _dense_bytes(cfg, d, n) <= DENSE_LIMIT_BYTES:
        modules["dense"] = copy.deepcopy(gnn)
        modules["dense"].config = SMoREConfig.from_dict({**cfg.to_dict(), "backend": "dense"})
    if has_torch_scatter():
        modules["gnn_torch_scatter"] = fast = copy.deepcopy(gnn)
        for conv in [*fast.convs, fast.root]:
            conv.scatter = "torch_scatter"
    modules["lora"], modules["base"] = lora, gnn.base_layer
    fns = {key: _step(m, x, grad) for key, m in modules.items()}
    fns["graph_build"] = _graph_build(gnn, x)

    def drop_grads() -> None:
        x.grad = None
        for m in modules.values():
            m.zero_grad(set_to_none=True)

    times = interleaved(fns, rounds=rounds, after=drop_grads)
    adapter = [a - b for a, b in zip(times["gnn"], times["base"])]
    lora_adapter = [a - b for a, b in zip(times["lora"], times["base"])]
    flops = flops_per_token(cfg, d, d, training=True)
    work = 3 * flops["total"] * n  # forward + backward ~ 3 x forward
    peak = matmul_rate(work, n, d)
    rate = work / statistics.median(adapter)
    lora_rate = 3 * 2 * rank * (2 * d) * n / statistics.median(lora_adapter)
    out = {
        "config": name,
        "d": d,
        "tokens": n,
        "trainable_parameters": params,
        "lora_rank": rank,
        "lora_parameters": rank * 2 * d,
        "ms": {key: median_ms(t) for key, t in times.items()},
        "adapter_ms": median_ms(adapter),
        "lora_adapter_ms": median_ms(lora_adapter),
        "gnn_over_lora": ratio(times, "gnn", "lora"),
        "adapter_over_lora_adapter": round(
            statistics.median(a / b for a, b in zip(adapter, lora_adapter)), 3
        ),
        "graph_build_share_of_adapter": round(
            statistics.median(g / a for g, a in zip(times["graph_build"], adapter)), 4
        ),
        "flops_per_token": flops,
        "adapter_gflops": round(rate / 1e9, 2),
        "lora_adapter_gflops": round(lora_rate / 1e9, 2),
        "matmul_gflops": round(peak / 1e9, 2),
        "adapter_flop_rate_vs_matmul": round(rate / peak, 3),
    }
    if "dense" in times:
        out["gnn_over_dense"] = ratio(times, "gnn", "dense")
    else:
        out["dense_skipped"] = f"oracle would gather > {DENSE_LIMIT_BYTES >> 20} MiB"
    if "gnn_torch_scatter" in times:
        out["torch_scatter_over_native"] = ratio(times, "gnn_torch_scatter", "gnn")
    if reference:
        out.update(bench_reference(gnn, x, grad, times))
    return out


def bench_reference(layer: SMoRELinear, x: torch.Tensor, grad: torch.Tensor, times) -> dict:
    """The reference formulation on the same routing, checked equal to the GNN path."""
    routing = layer.router(x.detach())
    with torch.no_grad():
        torch.testing.assert_close(
            reference_delta(layer, x, routing),
            layer.adapter_delta(x, routing),
            rtol=1e-4,
            atol=1e-4,
        )

    def run() -> None:
        y = layer.base_layer(x) + reference_delta(layer, x, layer.router(x))
        y.backward(grad)

    def gnn() -> None:
        _step(layer, x, grad)()

    def drop() -> None:
        x.grad = None
        layer.zero_grad(set_to_none=True)

    ref = interleaved({"reference": run, "gnn": gnn}, rounds=3, inner=1, warmup=1, after=drop)
    return {
        "reference_ms": median_ms(ref["reference"]),
        "reference_over_gnn": ratio(ref, "reference", "gnn"),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 cases, 5 rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument(
        "--case",
        nargs=3,
        metavar=("CONFIG", "D", "N"),
        default=None,
        help=f"only this row, CONFIG in {list(CONFIGS)}",
    )
    add_device_argument(parser)
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    torch.set_num_threads(args.threads)
    cases = QUICK if args.quick else FULL
    if args.case:
        if args.case[0] not in CONFIGS:
            parser.error(f"--case CONFIG must be one of {list(CONFIGS)} (got {args.case[0]!r})")
        cases = [(args.case[0], int(args.case[1]), int(args.case[2]))]
    rounds = args.rounds or (5 if args.quick else 9)
    results = []
    for name, d, n in cases:
        if args.device != "cpu":
            res = bench_device(name, d, n, rounds, args.device)
        else:
            res = bench_case(name, d, n, rounds, reference=(name, d, n) == HEADLINE)
        print(json.dumps({k: v for k, v in res.items() if k != "flops_per_token"}), flush=True)
        results.append(res)
    out = {"machine": machine_info(), "cases": results}
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()

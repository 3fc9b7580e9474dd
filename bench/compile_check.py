"""Does routing + propagation compile with ``torch.compile`` without graph breaks?

For several configurations, ``torch._dynamo.explain`` runs over ``SMoRELinear.forward`` (router,
routing tree, ``SMoREConv`` message passing, projection) and over ``propagate_tree`` alone;
the graph and graph-break counts and the break reasons are reported. ``--fullgraph`` also
compiles forward + backward with ``fullgraph=True`` and checks the output and the gradients
(balance loss included) against eager (same router noise:
``torch._inductor.config.fallback_random``).

    .venv/bin/python -m bench.compile_check [--fullgraph] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from bench.common import save_json
from smore_gnn import RoutingTree, SMoREConfig, SMoRELinear

CASES = {
    "(4-4) switch": dict(gate_type="switch"),
    "(4-4) noisy_topk": dict(gate_type="noisy_topk"),
    "(4-4) dense gate": dict(gate_type="dense", fanout=[4, 4]),
    "(4-4) momor": dict(gate_type="switch", propagation="momor"),
    "(4-4) smore_star, lora_alpha": dict(propagation="smore_star", lora_alpha=16.0),
    "S'MoRE# shared pool": dict(shared_pool=True),
    "L=3 (4-4-4)": dict(num_experts=[4, 4, 4], fanout=[2, 2, 2], rank=[8, 8, 8]),
    "MoLRE (8, top-2, identity)": dict(
        num_experts=[8], fanout=[2], rank=[8], expert_act="identity", gate_type="switch"
    ),
}


def _layer(overrides: dict, d: int = 64) -> SMoRELinear:
    torch.manual_seed(0)
    kwargs = {**dict(num_experts=[4, 4], fanout=[2, 2], rank=[8, 8]), **overrides}
    layer = SMoRELinear(nn.Linear(d, d), SMoREConfig(**kwargs)).train()
    nn.init.normal_(layer.proj.weight, std=0.02)
    return layer


def _explain(fn, *args) -> dict:
    torch._dynamo.reset()
    out = torch._dynamo.explain(fn)(*args)
    reasons = []
    for br in out.break_reasons:
        where = br.user_stack[-1] if br.user_stack else None
        place = f" ({where.filename.split('/')[-1]}:{where.lineno})" if where else ""
        reasons.append(br.reason.splitlines()[0][:160] + place)
    return {"graphs": out.graph_count, "graph_breaks": out.graph_break_count, "reasons": reasons}


def check(name: str, overrides: dict, fullgraph: bool) -> dict:
    """Explain forward (with a padding mask) and ``propagate_tree``; optionally compile."""
    layer = _layer(overrides)
    x = torch.randn(3, 5, 64)
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[0, 3:] = 0
    result = {"case": name, "forward": _explain(layer, x, mask)}
    flat = x.reshape(-1, 64)
    tree = RoutingTree.from_routing(layer.router(flat))
    result["propagate_tree"] = _explain(layer.propagate_tree, flat, tree)
    if fullgraph:
        torch._dynamo.reset()
        torch._inductor.config.fallback_random = True  # the eager RNG: same router noise
        compiled = torch.compile(layer, fullgraph=True)
        start = time.perf_counter()
        torch.manual_seed(1)
        y = compiled(x, mask)
        (y.square().sum() + layer.balance_loss).backward()
        result["compile_s"] = round(time.perf_counter() - start, 1)
        grads = {n: p.grad for n, p in layer.named_parameters() if p.grad is not None}
        layer.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        ref = layer(x, mask)
        (ref.square().sum() + layer.balance_loss).backward()  # eager, balance loss included
        result["max_abs_diff_vs_eager"] = float((y.detach() - ref.detach()).abs().max())
        eager = dict(layer.named_parameters())
        result["max_abs_grad_diff_vs_eager"] = max(
            float((g - eager[n].grad).abs().max()) for n, g in grads.items()
        )
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fullgraph", action="store_true", help="also compile fwd+bwd")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    results = [check(name, kw, args.fullgraph) for name, kw in CASES.items()]
    for r in results:
        print(json.dumps(r))
    out = {"torch": torch.__version__, "cases": results}
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()

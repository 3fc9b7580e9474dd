"""One adapted layer before/after in ONE process: ``SMoRELinear`` built by an older copy of the
package (``--before``, see :func:`bench.common.import_before`) and by the current one, with the
same weights, next to peft LoRA at the same parameter budget, interleaved.

Cases (d = 576 -> 1536, SmolLM2's ``gate_proj``, or ``--d-out 576``, the layer goals' case;
S'MoRE (4-4) rank 8 or (4-4-4), the paper's router): ``decode`` is a no-grad eval forward of
1 or 8 tokens (a generation step), ``train`` a forward plus backward of 2048 tokens. The old
and new outputs must agree.

    .venv/bin/python -m bench.layer_ab --before <commit> [--cases decode train] [--d-out 576]
                                       [--json out.json]
"""

from __future__ import annotations

import json

import torch
from torch import nn

from bench.common import (
    before_after_parser,
    import_before,
    interleaved,
    lora_rank_for,
    machine_info,
    median_ms,
    peft_lora_layer,
    ratio,
    save_json,
)

D_IN, D_OUT = 576, 1536
SHAPES = {"44": dict(), "444": dict(num_experts=[4, 4, 4], fanout=[2, 2, 2], rank=[8, 8, 8])}


def _layer(api, shape: str, d_out: int) -> nn.Module:
    methods = api.methods
    torch.manual_seed(0)
    layer = api.layer.SMoRELinear(
        nn.Linear(D_IN, d_out), methods.smore_paper_config(**SHAPES[shape])
    )
    with torch.no_grad():
        nn.init.normal_(layer.proj.weight, std=0.02)  # W_proj starts at 0: make it count
    return layer


def _pair(old, new, shape: str, d_out: int) -> dict[str, nn.Module]:
    before, after = _layer(old, shape, d_out), _layer(new, shape, d_out)
    after.load_state_dict(before.state_dict())
    params = sum(p.numel() for p in after.parameters() if p.requires_grad)
    torch.manual_seed(1)
    lora = peft_lora_layer(nn.Linear(D_IN, d_out), lora_rank_for(params, D_IN, d_out))
    return {"lora": lora, "smore": after, "smore_before": before}


def _case(models: dict, kind: str, tokens: int, rounds: int) -> dict:
    x = torch.randn(tokens, D_IN)
    if kind == "decode":
        for m in models.values():
            m.eval()

        def make(m):
            def run():
                with torch.inference_mode():
                    return m(x)

            return run
    else:
        xg = x.requires_grad_(True)
        for m in models.values():
            m.train()

        def make(m):
            def run():
                out = m(xg)
                loss = out.square().mean()
                if getattr(m, "balance_loss", None) is not None:
                    loss = loss + m.balance_loss
                loss.backward()
                return out

            return run

    fns = {name: make(m) for name, m in models.items()}
    a, b = fns["smore"](), fns["smore_before"]()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-4, atol=1e-5)

    def drop_grads() -> None:
        for m in models.values():
            m.zero_grad(set_to_none=True)

    times = interleaved(fns, rounds=rounds, inner=5 if kind == "decode" else 1, after=drop_grads)
    return {
        "median_ms": {k: median_ms(v) for k, v in times.items()},
        "time_over_lora": {k: ratio(times, k, "lora") for k in times},
        "after_over_before": ratio(times, "smore", "smore_before"),
    }


class _Api:
    def __init__(self, package: str):
        import importlib

        self.layer = importlib.import_module(f"{package}.nn.layer")
        self.methods = importlib.import_module(f"{package}.hf.methods")


def main(argv: list[str] | None = None) -> dict:
    parser = before_after_parser(__doc__, rounds=7)
    parser.add_argument("--cases", nargs="*", default=["decode", "train"])
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES))
    parser.add_argument("--d-out", type=int, default=D_OUT, help="output width (576: the goals)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import_before(args.before)
    old, new = _Api("smore_gnn_before"), _Api("smore_gnn")
    out: dict = {"machine": machine_info(), "rounds": args.rounds, "d": [D_IN, args.d_out]}
    for shape in args.shapes:
        models = _pair(old, new, shape, args.d_out)
        for kind in args.cases:
            for tokens in (1, 8) if kind == "decode" else (2048,):
                name = f"{kind}_{shape}_n{tokens}"
                out[name] = _case(models, kind, tokens, args.rounds)
                print(name, json.dumps(out[name]), flush=True)
    out["machine_after"] = {"load_avg_1min": machine_info()["load_avg_1min"]}
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()

"""Training-step before/after in ONE process: S'MoRE built by an older copy of the package
(``--before``: a git commit or a directory, see :func:`bench.common.import_before`), S'MoRE now and
peft LoRA at the same budget, on SmolLM2-135M, interleaved step by step, AdamW fused as in the
Hugging Face Trainer unless ``--optim`` says otherwise (peak RSS: see
:mod:`bench.train_step`, which runs each method in its own process).

    .venv/bin/python -m bench.train_step_ab --before <commit> [--rounds 6] [--optim fused]
                                            [--compile] [--json out.json]
"""

from __future__ import annotations

import copy
import json
import statistics
import time

import torch

from bench.common import (
    adamw,
    add_optim_argument,
    before_after_parser,
    import_before,
    machine_info,
    save_json,
)


def _stepper(model, old_api, ids: torch.Tensor, optim: str):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, optim)
    model.train()

    def step() -> float:
        start = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        aux = old_api.auxiliary_loss(model)
        (loss if aux is None else loss + aux).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return step


def main(argv: list[str] | None = None) -> dict:
    parser = before_after_parser(__doc__, rounds=6)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    add_optim_argument(parser)
    parser.add_argument(
        "--compile", action="store_true", help="also S'MoRE now under smore_gnn.compile_adapters"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    old = import_before(args.before)
    from smore_gnn.hf import methods as new
    from smore_gnn.hf.loading import load_model_and_tokenizer
    from smore_gnn.nn.runtime import compile_adapters

    base, _ = load_model_and_tokenizer("smollm2")
    ids = torch.randint(
        3,
        base.config.vocab_size,
        (args.batch, args.seq),
        generator=torch.Generator().manual_seed(0),
    )
    steps = {}
    runs = [("lora", new, "lora"), ("smore", new, "smore"), ("smore_before", old, "smore")]
    for name, api, method in runs + ([("smore_compiled", new, "smore")] if args.compile else []):
        model, _ = api.build_for_budget(method, copy.deepcopy(base), api.smore_paper_config())
        if name == "smore_compiled":
            compile_adapters(model)  # compiles in the warm-up (tens of seconds)
        steps[name] = _stepper(model, api, ids, args.optim)
    for fn in steps.values():  # warm-up
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for name, fn in steps.items():
            times[name].append(fn())
    out = {
        "machine": machine_info(),
        "tokens_per_step": args.batch * args.seq,
        "optimizer": f"AdamW ({args.optim})",
        "rounds": args.rounds,
        "median_step_ms": {k: round(statistics.median(v) * 1e3, 1) for k, v in times.items()},
        "time_over_lora": {
            k: round(statistics.median(a / b for a, b in zip(v, times["lora"])), 3)
            for k, v in times.items()
        },
        "after_over_before": round(
            statistics.median(a / b for a, b in zip(times["smore"], times["smore_before"])), 3
        ),
    }
    print(
        json.dumps(out["median_step_ms"]),
        json.dumps(out["time_over_lora"]),
        out["after_over_before"],
    )
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()

"""Greedy decoding speed: base, LoRA (unmerged, merged), MoLRE and S'MoRE on SmolLM2-135M.

Every method is built at the S'MoRE (4-4) rank-8 parameter budget of ``make demo``'s adapter
(``smore_gnn.hf.methods.build_for_budget``; adapters on ``gate_proj``, ``up_proj``, ``down_proj``
of every block) on its own copy of the same base model. Each ``generate`` call decodes
``max_new_tokens`` (24) new tokens greedily with the KV cache (``min_new_tokens`` equal, so no
sequence stops early) from the same prompts, at batch 1 and batch 8 (left padding). Rounds are
interleaved (every method once per round); the reported ratios are medians of per-round
ratios to unmerged peft LoRA. Trainable weights that start at zero (LoRA's ``B``, S'MoRE's
``W_proj``) are made small and random so every adapter changes the output, as after training.

``--compile`` adds ``smore_compiled``: the S'MoRE model with
``smore_gnn.nn.runtime.compile_adapters`` (``torch.compile`` of every adapter layer; the warm-up
call of each batch size compiles, outside the timed rounds).

``--profile`` adds a ``torch.profiler`` table of one S'MoRE ``generate`` at batch 1: the top
operators by self CPU time and the operator calls per adapted layer per decode step.

    .venv/bin/python -m bench.generate [--quick] [--threads 1] [--json out.json] [--profile]
        [--compile] [--device cuda]

``--device cuda``: a random-init Llama of SmolLM2-135M's shape (no download; ``--shape``
another, also on the CPU) on the GPU, bf16 weights, random prompts of 8 tokens; times with CUDA
events.

Before/after of a code change in one process: :mod:`bench.generate_ab`.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from bench.common import (
    LLAMA_SHAPES,
    RESULTS_DIR,
    add_device_argument,
    check_device,
    machine_info,
    random_llama,
    save_json,
    timer,
)

PROMPTS = [
    "The capital of France is",
    "Write one sentence about the sea.",
    "A synonym of 'happy' is",
    "Question: what is two plus three? Answer:",
    "The opposite of 'cold' is",
    "List three colours:",
    "In one word, the colour of grass is",
    "Translate 'good morning' into German:",
]
METHODS = ("base", "lora", "lora_merged", "molre", "smore")
BASELINE = "lora"  # unmerged peft LoRA
MAX_NEW_TOKENS = 24


def _randomise_zero_weights(model: nn.Module, seed: int = 0) -> None:
    """Give trainable tensors that are exactly zero a small random value (``std`` 0.02)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.dim() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def build_models(
    base: nn.Module, methods: tuple[str, ...], compiled: bool = False
) -> tuple[dict[str, nn.Module], dict]:
    """``{method: model in eval mode}`` and ``{method: trainable parameters}``."""
    from smore_gnn.hf.methods import build_for_budget, smore_paper_config, trainable_parameters

    models: dict[str, nn.Module] = {}
    sizes: dict[str, int] = {}
    for name in methods:
        if name == "base":
            models[name] = base
            continue
        method = "lora" if name == "lora_merged" else name
        adapted, _ = build_for_budget(method, copy.deepcopy(base), smore_paper_config(), seed=0)
        _randomise_zero_weights(adapted)
        sizes[name] = trainable_parameters(adapted)
        if name == "lora_merged":
            adapted = adapted.merge_and_unload()
        models[name] = adapted.eval()
    if compiled and "smore" in models:
        from smore_gnn.nn.runtime import compile_adapters

        models["smore_compiled"] = copy.deepcopy(models["smore"])
        compile_adapters(models["smore_compiled"])
    return models, sizes


def encode(tokenizer, batch: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The first ``batch`` prompts, left-padded (decoder-only generation); without a tokenizer
    (the random-init GPU model) ``batch`` random prompts of 8 tokens."""
    if tokenizer is None:
        ids = torch.randint(3, 1000, (batch, 8), generator=torch.Generator().manual_seed(batch))
        return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
    tokenizer.padding_side = "left"
    return dict(tokenizer(PROMPTS[:batch], return_tensors="pt", padding=True))


def generate_fn(model: nn.Module, inputs: dict, new_tokens: int, pad_id: int) -> Callable:
    """One greedy ``generate`` call of exactly ``new_tokens`` new tokens with the KV cache."""

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model.generate(
                **inputs,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=pad_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )

    return run


def timed_rounds(
    fns: dict[str, Callable], rounds: int, device: str = "cpu"
) -> dict[str, list[float]]:
    """Seconds per call, one call per method per round (after one warm-up call each)."""
    for fn in fns.values():
        fn()
    time_one = timer(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(time_one(fn))
    return times


def bench_batch(
    models: dict, tokenizer, batch: int, rounds: int, new_tokens: int, device: str = "cpu"
) -> dict:
    """Tokens/s of every method at ``batch`` prompts, and ratios to unmerged LoRA."""
    inputs = encode(tokenizer, batch, device)
    pad_id = 0 if tokenizer is None else tokenizer.pad_token_id
    fns = {name: generate_fn(m, inputs, new_tokens, pad_id) for name, m in models.items()}
    times = timed_rounds(fns, rounds, device)
    prompt = inputs["input_ids"].shape[1]
    out: dict = {"batch": batch, "new_tokens": new_tokens, "prompt_tokens": prompt}
    out["seconds_per_generate"] = {k: round(statistics.median(v), 4) for k, v in times.items()}
    out["tokens_per_s"] = {
        k: round(batch * new_tokens / statistics.median(v), 2) for k, v in times.items()
    }
    if BASELINE in times:
        out[f"time_over_{BASELINE}"] = {
            k: round(statistics.median(a / b for a, b in zip(v, times[BASELINE])), 3)
            for k, v in times.items()
        }
    if "base" in times:
        out["time_over_base"] = {
            k: round(statistics.median(a / b for a, b in zip(v, times["base"])), 3)
            for k, v in times.items()
        }
    return out


def profile_decode(model: nn.Module, tokenizer, new_tokens: int, top: int = 15) -> dict:
    """Where one batch-1 ``generate`` spends its CPU time: the top operators (self time)."""
    from torch.profiler import ProfilerActivity, profile

    inputs = encode(tokenizer, 1)
    run = generate_fn(model, inputs, new_tokens, tokenizer.pad_token_id)
    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    calls = sum(e.count for e in events if e.key.startswith("aten::"))
    adapters = getattr(model, "adapters", None)
    num_adapted = len(adapters()) if callable(adapters) else 0
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {
        "wall_s_under_profiler": round(wall, 3),
        "aten_calls": calls,
        "adapted_layers": num_adapted,
        "aten_calls_per_adapted_layer_per_step": (
            round(calls / (num_adapted * new_tokens), 1) if num_adapted else None
        ),
        "top_ops": [
            {
                "op": e.key,
                "calls": e.count,
                "self_ms": round(e.self_cpu_time_total / 1e3, 2),
                "share": round(e.self_cpu_time_total / total_us, 3),
            }
            for e in rows
        ],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=MAX_NEW_TOKENS)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--profile", action="store_true", help="profile S'MoRE at batch 1")
    parser.add_argument("--compile", action="store_true", help="also S'MoRE compiled")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument(
        "--shape",
        choices=list(LLAMA_SHAPES),
        default=None,
        help="a random-init Llama of this shape (default on cuda: smollm2)",
    )
    add_device_argument(parser)
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    torch.set_num_threads(args.threads)
    if BASELINE not in args.methods:
        parser.error(f"--methods must include the baseline {BASELINE!r}")
    if any(b < 1 or b > len(PROMPTS) for b in args.batches):
        parser.error(f"--batches must lie in 1..{len(PROMPTS)} (got {args.batches})")
    from smore_gnn.hf.loading import load_model_and_tokenizer

    shape = args.shape or ("smollm2" if args.device == "cuda" else None)
    if shape is not None:
        base, tokenizer, name = random_llama(shape), None, f"random-init Llama ({shape} shape)"
    else:
        base, tokenizer = load_model_and_tokenizer("smollm2")
        name = "SmolLM2-135M-Instruct"
    models, sizes = build_models(base, tuple(args.methods), compiled=args.compile)
    if args.device == "cuda":
        models = {k: m.to(device=args.device, dtype=torch.bfloat16) for k, m in models.items()}
    rounds = args.rounds or (3 if args.quick else 5)
    out: dict = {"machine": machine_info(), "model": name, "rounds": rounds}
    out["trainable_parameters"] = sizes
    out["batches"] = []
    for batch in args.batches:
        res = bench_batch(models, tokenizer, batch, rounds, args.new_tokens, args.device)
        print(json.dumps(res), flush=True)
        out["batches"].append(res)
    if args.profile and "smore" in models:
        out["profile_smore_batch1"] = profile_decode(models["smore"], tokenizer, args.new_tokens)
        print(json.dumps(out["profile_smore_batch1"], indent=1), flush=True)
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    RESULTS_DIR.mkdir(exist_ok=True)
    main()

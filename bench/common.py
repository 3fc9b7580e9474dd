"""Shared helpers of the benchmarks: interleaved timing, machine facts, memory, LoRA layers.

The benchmark machine is shared and noisy, so every comparison is *interleaved*: each round
runs every candidate once (best of ``inner`` calls), and the reported figure is the median
over rounds; ratios are medians of the per-round ratios, i.e. measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

RESULTS_DIR = Path(__file__).resolve().parent / "results"


DEVICES = ("cpu", "cuda")
#: Random-init Llama shapes for GPU runs (``transformers.LlamaConfig``; no weights needed).
LLAMA_SHAPES = {
    "smollm2": dict(  # SmolLM2-135M
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    ),
    "llama1b": dict(  # Llama-3.2-1B
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        tie_word_embeddings=True,
    ),
    "tiny": dict(  # a dry run of the GPU commands on a CPU (bench/gpu_check.sh --dry-run)
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
        tie_word_embeddings=True,
    ),
}


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device {cpu,cuda}``: cuda times with CUDA events under bf16 autocast."""
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="cpu (default) or cuda (CUDA events, bf16 autocast, random-init Llama shapes)",
    )


def check_device(parser: argparse.ArgumentParser, device: str) -> None:
    """Exit 2 with one line when ``device`` is cuda and no GPU is there."""
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU (torch.cuda.is_available() is False)")


def random_llama(shape: str, device: str = "cpu", seed: int = 0) -> nn.Module:
    """A random-init ``LlamaForCausalLM`` of ``LLAMA_SHAPES[shape]`` on ``device`` (float32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**LLAMA_SHAPES[shape], max_position_embeddings=4096)
    with torch.device(device):  # initialised where it runs (a 1B model in seconds on a GPU)
        return LlamaForCausalLM(config)


def autocast(device: str):
    """bf16 autocast on cuda, nothing on the CPU (the CPU figures stay float32)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")


def timer(device: str) -> Callable[[Callable[[], object]], float]:
    """``time(fn) -> seconds`` of one call: CUDA events on cuda, ``perf_counter`` on the CPU."""
    if device != "cuda":

        def cpu_time(fn: Callable[[], object]) -> float:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start

        return cpu_time

    def cuda_time(fn: Callable[[], object]) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    return cuda_time


def interleaved(
    fns: dict[str, Callable[[], object]],
    rounds: int = 7,
    inner: int = 3,
    warmup: int = 2,
    after: Callable[[], object] | None = None,
    device: str = "cpu",
) -> dict[str, list[float]]:
    """Seconds per call of every function: ``rounds`` values each (best of ``inner`` calls).

    ``after`` runs after every call, outside the timed region (e.g. to drop gradients);
    ``device="cuda"`` times with CUDA events (:func:`timer`).
    """
    time_one = timer(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
            if after is not None:
                after()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best = float("inf")
            for _ in range(inner):
                best = min(best, time_one(fn))
                if after is not None:
                    after()
            times[name].append(best)
    return times


def median_ms(values: list[float]) -> float:
    """Median of seconds, in milliseconds (3 significant decimals)."""
    return round(statistics.median(values) * 1e3, 3)


def ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of ``num / den`` (both timed in the same round)."""
    return round(statistics.median(a / b for a, b in zip(times[num], times[den])), 3)


def use_threads(requested: int | None) -> int:
    """Set this benchmark's torch threads and print the choice (``None``: the machine default).

    Goes through :func:`smore_gnn.nn.runtime.choose_threads`: 1 thread on <= 2 physical cores, else
    physical cores - 1, so a benchmark measures the same setting a user gets by default.
    """
    from smore_gnn.nn.runtime import choose_threads

    return choose_threads(requested)


def machine_info() -> dict[str, object]:
    """Where and with what the figures were measured."""
    import peft
    import torch_geometric
    import transformers

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "torch_scatter": has_torch_scatter(),
    }


def has_torch_scatter() -> bool:
    """Whether the optional ``torch_scatter`` package imports."""
    try:
        import torch_scatter  # noqa: F401
    except ImportError:
        return False
    return True


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs`` 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_mb(field: str = "VmRSS") -> float:
    """``VmRSS`` (current) or ``VmHWM`` (peak since start or the last reset) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"/proc/self/status has no {field}")


class _Wrapped(nn.Module):
    def __init__(self, base: nn.Linear):
        super().__init__()
        self.lin = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def peft_lora_layer(base: nn.Linear, rank: int) -> nn.Module:
    """``base`` wrapped in a genuine peft LoRA layer of ``rank`` (alpha ``2 rank``, frozen base).

    ``lora_B`` (zero at init in peft) is made random so the backward pass does real work.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=["lin"])
    model = inject_adapter_in_model(config, _Wrapped(base))
    with torch.no_grad():
        nn.init.normal_(model.lin.lora_B["default"].weight, std=0.02)
    return model


def lora_rank_for(params: int, in_features: int, out_features: int) -> int:
    """LoRA rank whose ``r (d_in + d_out)`` parameters come closest to ``params``."""
    return max(1, round(params / (in_features + out_features)))


def matmul_rate(flops: float, rows: int, inner: int, rounds: int = 5) -> float:
    """FLOP/s of one plain ``torch.matmul`` ``[rows, inner] @ [inner, cols]`` of ``flops``."""
    cols = max(1, round(flops / (2 * rows * inner)))
    a, b = torch.randn(rows, inner), torch.randn(inner, cols)
    times = interleaved({"mm": lambda: torch.matmul(a, b)}, rounds=rounds, inner=3)
    return 2 * rows * inner * cols / statistics.median(times["mm"])


def save_json(path: str | None, result: dict) -> None:
    """Write a benchmark's ``result`` to ``path`` as indented JSON (nothing when it is None)."""
    if path:
        Path(path).write_text(json.dumps(result, indent=2) + "\n")


BEFORE = "smore_gnn_before"  # the package name an older copy is imported under

#: ``--optim`` of the training-step benchmarks: ``fused`` is the Hugging Face Trainer's
#: default (``adamw_torch_fused``, what ``SMoRETrainer`` uses); ``loop`` is torch's CPU default
#: (one small op sequence per parameter tensor: S'MoRE has 12x LoRA's tensors)
ADAMW = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}


def adamw(params: list, kind: str = "fused") -> torch.optim.AdamW:
    """``torch.optim.AdamW(params, lr=1e-4)`` implemented as ``kind`` (:data:`ADAMW`)."""
    return torch.optim.AdamW(params, lr=1e-4, **ADAMW[kind])


def before_after_parser(doc: str, rounds: int) -> argparse.ArgumentParser:
    """The arguments every before/after benchmark shares: ``--before``, ``--rounds``,
    ``--threads``, ``--json`` (:func:`import_before` reads ``--before``)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument(
        "--before",
        required=True,
        help=f"a git commit, or a directory holding {BEFORE} (the old smore_gnn, renamed)",
    )
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    return parser


def add_optim_argument(parser: argparse.ArgumentParser) -> None:
    """``--optim`` of the training-step benchmarks (:data:`ADAMW`, default ``fused``)."""
    parser.add_argument(
        "--optim",
        choices=list(ADAMW),
        default="fused",
        help="AdamW implementation (fused: the HF Trainer's default)",
    )


def export_before(commit: str, directory: str | None = None) -> str:
    """Write ``smore_gnn`` as of ``commit`` to ``directory/smore_gnn_before`` with its imports
    renamed, so it imports next to the current package; returns ``directory`` (a new temporary
    one when None). Equivalent to ``git archive`` plus a ``sed`` of ``smore_gnn``."""
    root = Path(__file__).resolve().parent.parent
    directory = directory or tempfile.mkdtemp(prefix="smore_gnn_before_")
    files = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", commit, "smore_gnn"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    pattern = re.compile(r"\bsmore_gnn\b")
    for name in files:
        blob = subprocess.run(
            ["git", "show", f"{commit}:{name}"], cwd=root, check=True, capture_output=True
        ).stdout
        target = Path(directory) / BEFORE / Path(name).relative_to("smore_gnn")
        target.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".py"):
            blob = pattern.sub(BEFORE, blob.decode()).encode()
        target.write_bytes(blob)
    return directory


def import_before(before: str, module: str = "hf.methods") -> ModuleType:
    """``smore_gnn_before.<module>``: the package as it was, from ``before`` (a directory holding
    ``smore_gnn_before``, or a git commit exported with :func:`export_before`)."""
    if not (Path(before) / BEFORE).is_dir():
        before = export_before(before)
    sys.path.insert(0, before)
    return importlib.import_module(f"{BEFORE}.{module}")

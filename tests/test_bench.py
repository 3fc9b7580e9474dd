"""Smoke tests of the benchmark code (tiny sizes, no timing asserts)."""

import os
import subprocess
import sys

import pytest
import torch

from bench.adapter_speed import bench_case, make_layer
from bench.common import ADAMW, adamw
from bench.reference import reference_delta
from bench.report import goals, render


def test_reference_formulation_equals_gnn_path():
    layer = make_layer("L=3 (4-4-4)", 16)
    x = torch.randn(5, 16)
    routing = layer.router(x)
    torch.testing.assert_close(
        reference_delta(layer, x, routing), layer.adapter_delta(x, routing), rtol=1e-5, atol=1e-5
    )


def test_bench_case_and_report_render():
    case = bench_case("(2-2)", 16, 8, rounds=1, reference=True)
    assert case["lora_rank"] >= 1 and case["ms"]["gnn"] > 0 and "gnn_over_dense" in case
    assert case["reference_over_gnn"] > 0
    results = {
        "quick": True,
        "machine": {
            k: "-"
            for k in (
                "date",
                "cpu",
                "cpu_count",
                "platform",
                "torch",
                "torch_geometric",
                "transformers",
                "peft",
                "python",
                "torch_threads",
                "load_avg_1min",
            )
        },
        "adapter_speed": [case],
        "theory": {
            "total_s": 1.0,
            "trees": 6,
            "distinct": 6,
            "enumerate_s": 0.1,
            "gnn_s": 0.1,
            "distinct_s": 0.1,
            "max_rss_mb": 1,
        },
    }
    results["machine"]["torch_scatter"] = False
    text = render(results)
    assert "| (2-2) | 16 | 8 |" in text and "theory count" in text
    verdicts = {g[0]: g[2] for g in goals(results)}
    assert verdicts["theory count L=3, s=4, f=2 < 60 s"] == "met"
    assert verdicts["quality: S'MoRE >= MoLRE >= LoRA"] == "not run"
    assert all(v == "not measured: no GPU available" for k, v in verdicts.items() if "GPU" in k)
    assert "bench/NOTES.md" in text and "Optimisation log" not in text  # history stays out


@pytest.mark.parametrize("kind", list(ADAMW))
def test_training_step_optimizers_step_alike(kind):
    """``--optim``: each AdamW implementation makes the same step (fused is the HF default)."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    p.grad = torch.randn(5)
    ref = torch.nn.Parameter(p.detach().clone())
    ref.grad = p.grad.clone()
    torch.optim.AdamW([ref], lr=1e-4, foreach=False).step()
    opt = adamw([p], kind)
    opt.step()
    assert opt.defaults["fused"] is (True if kind == "fused" else None)
    torch.testing.assert_close(p.detach(), ref.detach())


def test_op_count_counts_top_level_aten_calls():
    from bench.op_count import count_case

    case = count_case("(2-2)", 16, 8)
    assert case["lora_calls"] > 0 and case["smore_calls"] > case["lora_calls"]
    assert sum(case["smore_by_name"].values()) == case["smore_calls"]


def test_bench_device_and_random_llama_on_cpu():
    from bench.adapter_speed import bench_device
    from bench.common import random_llama

    case = bench_device("(2-2)", 16, 8, rounds=1, device="cpu")
    assert case["gnn_over_lora"] > 0 and set(case["ms"]) == {"gnn", "lora", "base"}
    model = random_llama("tiny")
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2


def test_gpu_check_rejects_unknown_arguments():
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--now"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr


@pytest.mark.slow  # about 3 minutes on a busy 2-core CPU
def test_gpu_check_dry_run_runs_on_cpu():
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--dry-run"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "# commands (device cpu" in done.stdout and "FAILED" not in done.stderr

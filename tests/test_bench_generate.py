"""Smoke test of the generation benchmark on a tiny Llama (no timing asserts)."""

from __future__ import annotations

import torch

from bench.generate import bench_batch, build_models, encode, generate_fn
from bench.report import goals, render
from smore_gnn.hf.testing import tiny_llama


def test_generate_bench_runs_every_method_and_renders():
    base, tokenizer = tiny_llama(seed=0)
    models, sizes = build_models(base, ("base", "lora", "lora_merged", "molre", "smore"))
    assert set(sizes) == {"lora", "lora_merged", "molre", "smore"} and sizes["smore"] > 0
    inputs = encode(tokenizer, 2)
    pad = tokenizer.pad_token_id
    out = generate_fn(models["smore"], inputs, 3, pad)()
    assert out.shape == (2, inputs["input_ids"].shape[1] + 3)  # exactly 3 new tokens
    merged = generate_fn(models["lora_merged"], inputs, 3, pad)()
    torch.testing.assert_close(merged, generate_fn(models["lora"], inputs, 3, pad)())
    res = bench_batch(models, tokenizer, batch=2, rounds=1, new_tokens=3)
    assert res["time_over_lora"]["lora"] == 1.0 and set(res["tokens_per_s"]) == set(models)
    machine = dict.fromkeys(
        (
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
            "torch_scatter",
        ),
        "-",
    )
    results = {"machine": machine, "generate": {"model": "tiny", "rounds": 1, "batches": [res]}}
    text = render(results)
    assert "## Greedy decoding" in text and "| 2 |" in text
    assert any(g[0].startswith("greedy decode (KV cache)") for g in goals(results))

"""``torch.compile`` of the adapter layers (issue 13): the switch, and compiled = eager."""

from __future__ import annotations

import copy

import pytest
import torch

from smore_gnn.nn.layer import SMoRELinear
from smore_gnn.nn.runtime import compile_adapters
from tests.conftest import make_layer


def test_compile_adapters_compiles_every_layer_lazily():
    from smore_gnn.hf.methods import build_for_budget, smore_paper_config
    from smore_gnn.hf.testing import tiny_llama

    base, _ = tiny_llama(seed=0)
    model, _ = build_for_budget("smore", base, smore_paper_config(rank=[2, 2]), seed=0)
    layers = [m for m in model.modules() if isinstance(m, SMoRELinear)]
    assert compile_adapters(model) == len(layers) == 6  # 2 blocks x 3 MLP projections
    assert all(m._compiled_call_impl is not None for m in layers)  # compiled on first call
    with pytest.raises(ValueError, match="no SMoRELinear"):
        compile_adapters(torch.nn.Linear(3, 3))


@pytest.mark.slow  # compiling forward + backward takes 1-2 min on a busy 2-core CPU
def test_compiled_layer_equals_eager():
    torch._dynamo.reset()
    eager = make_layer(
        torch.float32,
        in_features=16,
        out_features=12,
        gate_type="switch",
        num_experts=[4, 4],
        fanout=[2, 2],
        rank=[2, 2],
    ).train()
    compiled = copy.deepcopy(eager)
    assert compile_adapters(compiled, fullgraph=True) == 1
    x = torch.randn(2, 5, 16)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool()
    outs = []
    for layer in (compiled, eager):
        y = layer(x, mask)
        (y.square().sum() + layer.balance_loss).backward()
        outs.append((y.detach(), layer.balance_loss.detach()))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-5)
    assert outs[0][0].abs().max() > 0
    grads = dict(eager.named_parameters())
    for name, p in compiled.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-5, msg=name)
    with torch.no_grad():  # a decode step: one token per sequence, no autograd
        step = torch.randn(3, 1, 16)
        torch.testing.assert_close(compiled(step), eager(step), rtol=1e-5, atol=1e-5)


def test_collator_buckets_lengths_for_compiled_runs():
    # pad to multiples of 64: a compiled model sees one shape for lengths 1..64, not 64
    from smore_gnn.data.records import collate

    short = {"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "labels": [1, 2, 3]}
    long = {"input_ids": list(range(70))}
    batch = collate([short], 0, pad_to_multiple_of=64)
    assert batch["input_ids"].shape == (1, 64) and batch["labels"][0, 3:].eq(-100).all()
    assert batch["attention_mask"].sum() == 3
    assert collate([long], 0, pad_to_multiple_of=64)["input_ids"].shape == (1, 128)
    assert collate([short], 0)["input_ids"].shape == (1, 3)  # unchanged by default

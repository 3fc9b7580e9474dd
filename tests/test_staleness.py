"""Cached no-autograd weights (decode tables, stacked GEMM weight) follow *fused* optimizer
steps, which update parameters in place without moving their version counters (the Hugging
Face Trainer's default optimizer is ``adamw_torch_fused``)."""

from __future__ import annotations

import pytest
import torch

from smore_gnn.nn import staleness
from smore_gnn.nn.decode import SMALL_MAX_TOKENS
from tests.conftest import make_layer

SIZES = {"decode path": 3, "stacked GEMM path": SMALL_MAX_TOKENS + 6}


def test_a_fused_step_leaves_the_version_counters_alone():
    """The premise: if torch ever bumps versions in fused steps, this file guards nothing new."""
    p = torch.nn.Parameter(torch.randn(4))
    p.grad = torch.randn(4)
    version = p._version
    torch.optim.AdamW([p], lr=0.1, fused=True).step()
    assert p._version == version


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "foreach"])
@pytest.mark.parametrize("gate_type", ["switch", "noisy_topk"])
@pytest.mark.parametrize("num_tokens", list(SIZES.values()), ids=list(SIZES))
def test_eval_after_an_optimizer_step_uses_the_new_weights(num_tokens, gate_type, fused):
    layer = make_layer(
        dtype=torch.float32, gate_type=gate_type, router_input_norm=True, logit_scale=10.0
    )
    x = torch.randn(num_tokens, 8)
    layer.eval()
    with torch.no_grad():
        before = layer(x)  # builds the caches
    opt = torch.optim.AdamW(
        [p for p in layer.parameters() if p.requires_grad], lr=0.05, fused=fused
    )
    layer.train()
    torch.manual_seed(0)
    (layer(torch.randn(num_tokens, 8)).square().sum() + layer.balance_loss).backward()
    opt.step()
    layer.eval()
    with torch.no_grad():
        cached = layer(x)
    general = layer(x).detach()  # autograd on: no cache is read
    assert not torch.allclose(general, before, atol=1e-4), "the step changed nothing"
    torch.testing.assert_close(cached, general, rtol=1e-5, atol=1e-6)


def test_the_hooks_count_steps_of_any_optimizer():
    make_layer()  # building an adapter installs the hooks
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.ones(3)
    steps = staleness.optimizer_steps()
    torch.optim.SGD([p], lr=0.1).step()
    torch.optim.AdamW([p], lr=0.1, fused=True).step()
    assert staleness.optimizer_steps() == steps + 2

"""Cached no-autograd weights (decode tables, stacked GEMM weight) follow *fused* optimizer
steps, which update parameters in place without moving their version counters (the Hugging
Face Trainer's default optimizer is ``adamw_torch_fused``), with no process-wide hook: the
layer drops its caches on a forward with autograd, on ``train()``/``eval()`` and on
``load_state_dict``."""

from __future__ import annotations

import pytest
import torch

from smore_gnn.nn.settings import SpeedSettings
from tests.conftest import make_layer

SIZES = {"decode path": 3, "stacked GEMM path": SpeedSettings().small_max_tokens + 6}


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


@pytest.mark.parametrize("num_tokens", list(SIZES.values()), ids=list(SIZES))
def test_a_fused_step_taken_in_eval_mode_is_seen(num_tokens):
    # training with the layer in eval mode (no train()/eval() switch to drop the caches): the
    # forward with autograd that makes the gradients drops them
    layer = make_layer(dtype=torch.float32, gate_type="switch").eval()
    x = torch.randn(num_tokens, 8)
    with torch.no_grad():
        before = layer(x)  # builds the caches
    opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], fused=True)
    (layer(torch.randn(num_tokens, 8)).square().sum()).backward()
    opt.step()
    with torch.no_grad():
        cached = layer(x)
    general = layer(x).detach()
    assert not torch.allclose(general, before, atol=1e-4), "the step changed nothing"
    torch.testing.assert_close(cached, general, rtol=1e-5, atol=1e-6)


def test_load_state_dict_drops_the_caches():
    layer = make_layer(dtype=torch.float32, gate_type="switch").eval()
    other = make_layer(dtype=torch.float32, gate_type="switch", seed=1).eval()
    x = torch.randn(3, 8)
    with torch.no_grad():
        layer(x)
        layer.load_state_dict(other.state_dict(), assign=True)
        torch.testing.assert_close(layer(x), other(x), rtol=1e-6, atol=1e-6)


def test_the_package_installs_no_global_torch_hook():
    from pathlib import Path

    import smore_gnn

    root = Path(smore_gnn.__file__).parent
    banned = ("register_module_", "register_optimizer_step_post_hook")
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert not any(b in text for b in banned), path

"""The decode-step forward of ``SMoRELinear`` (``smore_gnn.nn.decode``).

An eval forward of up to ``settings.small_max_tokens`` tokens without autograd takes the decode
path (one GEMM with the router's ``W_u D`` rows, folded biases and scales, batched child sums).
It must equal the general GNN path (the same layer with autograd on) and the dense oracle, balance
statistics included, for every propagation and option it serves, padding included.
"""

from __future__ import annotations

import pytest
import torch

import smore_gnn.nn.decode as decode_layer
from smore_gnn.nn.reference import dense_delta
from tests.conftest import make_layer

CONFIGS = [
    dict(gate_type="switch"),
    dict(gate_type="noisy_topk", lora_alpha=[4.0, 2.0]),
    dict(gate_type="dense", num_experts=[3, 2], fanout=[3, 2], rank=[2, 3]),
    dict(num_experts=[3, 4, 2], fanout=[2, 2, 2], rank=[2, 3, 2], gate_type="switch"),
    dict(num_experts=[3, 4, 2], fanout=[2, 1, 2], rank=[2, 3, 2], propagation="smore_star"),
    dict(gate_type="switch", shared_pool=True, num_experts=[4, 4], rank=[2, 2]),
    dict(gate_type="switch", bias=False, expert_act="relu"),
    dict(gate_type="switch", router_input_norm=True, logit_scale=10.0, z_loss_weight=0.1),
    dict(gate_type="noisy_topk", down_proj_dim=None, expert_act="prelu"),
    dict(num_experts=[3], fanout=[2], rank=[2], expert_act="identity", gate_type="switch"),
]


def _general(layer, x, mask):
    with torch.enable_grad():  # autograd on: the general GNN path
        y = layer(x, mask)
    return y.detach(), layer.balance_loss.detach(), layer.last_routing


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_decode_step_equals_the_general_path(config, dtype, monkeypatch):
    layer = make_layer(dtype, **config).eval()
    x = torch.randn(2, 3, 8, dtype=dtype)
    mask = torch.tensor([[True, True, True], [False, True, True]])
    calls = []
    real = decode_layer.small_forward
    monkeypatch.setattr("smore_gnn.nn.layer.small_forward", lambda *a: calls.append(1) or real(*a))
    for m in (None, mask):
        if m is not None:
            x[1, 0] = float("nan")  # padding: must reach nothing
        with torch.no_grad():
            fast = layer(x, m)
            routing = layer.last_routing
            assert routing.is_lazy  # the statistics wait until read
            loss = layer.balance_loss
        want, want_loss, general = _general(layer, x, m)
        tol = 1e-5 if dtype == torch.float32 else 1e-6  # routing and tables run in float32
        torch.testing.assert_close(fast, want, rtol=tol, atol=tol, equal_nan=True)
        assert fast[0].isfinite().all() and fast[1, 1:].isfinite().all()  # NaN stays put
        torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
        for a, b in zip(routing.experts, general.experts):
            assert torch.equal(a, b)
        for a, b in zip(routing.load, general.load):
            torch.testing.assert_close(a, b)
        flat = (
            x.reshape(-1, 8) if m is None else torch.where(m.reshape(-1, 1), x.reshape(-1, 8), 0)
        )
        with torch.no_grad():  # the dense oracle on the same routing
            oracle = layer.base_layer(x.reshape(-1, 8)) + dense_delta(layer, flat, routing)
        torch.testing.assert_close(fast.reshape(-1, 6), oracle, rtol=tol, atol=tol, equal_nan=True)
    assert len(calls) == 2


def test_where_the_decode_step_applies(monkeypatch):
    layer = make_layer(torch.float64, gate_type="switch").eval()
    calls = []
    real = decode_layer.small_forward
    monkeypatch.setattr("smore_gnn.nn.layer.small_forward", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        layer(torch.randn(layer.settings.small_max_tokens, 8, dtype=torch.float64))
        assert len(calls) == 1
        layer(torch.randn(layer.settings.small_max_tokens + 1, 8, dtype=torch.float64))
        layer.train()(torch.randn(3, 8, dtype=torch.float64))  # training mode: general
        assert len(calls) == 1
    layer.eval()(torch.randn(3, 8, dtype=torch.float64))  # autograd on: general
    assert len(calls) == 1
    momor = make_layer(torch.float64, propagation="momor", expert_act="identity").eval()
    assert not decode_layer.small_forward_applies(momor, 1)


def test_decode_weights_follow_updates():
    layer = make_layer(torch.float32, gate_type="switch").eval()
    x = torch.randn(4, 8)
    with torch.no_grad():
        layer(x)
        layer.experts[1].lora_B.mul_(2.0)  # an optimizer step between two evaluations
        layer.convs[1].lin.bias.add_(0.5)
        layer.router.down_proj.weight.mul_(-1.0)
        got = layer(x)
    torch.testing.assert_close(got, _general(layer, x, None)[0], rtol=1e-5, atol=1e-5)
    layer.router.layers[0].fc1 = torch.nn.Linear(64, 32)  # a replaced submodule
    other = make_layer(torch.float32, gate_type="switch", seed=3)
    layer.experts[0].load_state_dict(other.experts[0].state_dict(), assign=True)  # replaced
    with torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got, _general(layer, x, None)[0], rtol=1e-5, atol=1e-5)


def test_a_stored_mask_is_resolved_once_and_follows_changes(monkeypatch):
    import smore_gnn.nn.decode as dl

    layers = [make_layer(torch.float64, gate_type="switch", seed=s).eval() for s in (0, 1)]
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    mask = torch.ones(2, 3, dtype=torch.bool)
    calls = []
    real = dl.resolve_mask
    monkeypatch.setattr(dl, "resolve_mask", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        for layer in layers:  # what SMoREModel does before a model forward
            layer.attention_mask = mask
        outs = [layer(x) for layer in layers]
        assert len(calls) == 2  # resolved once per layer
        outs = [layer(x) for layer in layers]
        assert len(calls) == 2  # and reused by the next decode step
        mask[1, 0] = False  # changed in place: resolved again, padding now masked
        for layer, out in zip(layers, outs):
            got = layer(x)
            torch.testing.assert_close(got, layer(x, mask.clone()))
            assert not torch.equal(got[1, 0], out[1, 0])
            torch.testing.assert_close(got[0], out[0])
        assert layers[0].last_routing.load[-1].sum() == 5 * 2  # 5 real tokens, 2 top picks
        with pytest.raises(ValueError, match="attention_mask"):
            layers[0](torch.randn(3, 2, 8, dtype=torch.float64))  # a mask of another shape


def test_replaced_modules_and_parameters_invalidate_the_caches():
    layer = make_layer(torch.float32, gate_type="switch").eval()
    x = torch.randn(3, 8)
    with torch.no_grad():
        layer(x)  # builds the caches
    layer.convs[1].lin = torch.nn.Linear(32, 64)  # a replacement inside the adapter
    with torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got, _general(layer, x, None)[0], rtol=1e-5, atol=1e-5)
    layer.convs[1].lin.weight = torch.nn.Parameter(torch.randn(64, 32))  # inside the new one
    with torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got, _general(layer, x, None)[0], rtol=1e-5, atol=1e-5)


def test_a_mask_made_in_inference_mode_is_accepted():
    layer = make_layer(torch.float64, gate_type="switch").eval()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    want = layer(x, torch.tensor([[True, True, True], [False, True, True]])).detach()
    with torch.inference_mode():  # as in generate(): the wrapper's mask is an inference tensor
        layer.attention_mask = torch.tensor([[True, True, True], [False, True, True]])
        torch.testing.assert_close(layer(x), want, rtol=1e-6, atol=1e-6)  # float32 routing
        torch.testing.assert_close(layer(x), want, rtol=1e-6, atol=1e-6)  # the kept resolution

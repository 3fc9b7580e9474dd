"""The small-N decode path: every shortcut equals the general path it replaces.

Pinned: the fused propagation (``SMoREConv.message_and_aggregate`` on a routed tree layer's
``regular_adjacency``, the default) equals one message per edge (``message_passing="edges"``);
the tiny-N residual choice equals the one-hot GEMM; an all-real mask equals no mask; the
no-grad stacked-weight cache follows in-place updates, dtype and device moves; cached edge
indices made under ``inference_mode`` can be saved for a later backward.
"""

from __future__ import annotations

import copy

import pytest
import torch

from smore_gnn import SMoREConv
from smore_gnn.nn.conv import regular_adjacency
from smore_gnn.nn.experts import GATHER_MAX_NODES, ResidualExperts
from smore_gnn.nn.fused import PickedExperts, picked_rows
from smore_gnn.nn.settings import SpeedSettings
from smore_gnn.nn.tree import RoutingTree
from tests.conftest import make_layer

CONFIGS = [
    dict(num_experts=[3, 4], fanout=[2, 2], rank=[2, 3], gate_type="switch"),
    dict(num_experts=[3, 4], fanout=[2, 2], rank=[2, 3], gate_type="noisy_topk"),
    dict(num_experts=[3, 4], fanout=[3, 4], rank=[2, 3], gate_type="dense"),
    dict(num_experts=[3, 4, 2], fanout=[2, 2, 2], rank=[2, 3, 2], propagation="smore_star"),
    dict(
        num_experts=[3, 4], fanout=[2, 2], rank=[2, 3], propagation="momor", expert_act="identity"
    ),
    dict(num_experts=[3], fanout=[2], rank=[2], shared_pool=False, expert_act="identity"),
]


def _step(layer, x, grad_out, mask=None, seed=7):
    layer.zero_grad()
    torch.manual_seed(seed)  # same router noise
    x = x.detach().clone().requires_grad_(True)
    y = layer(x, mask)
    loss = layer.balance_loss
    ((y * grad_out).sum() + loss).backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    return y.detach(), loss.detach(), x.grad, grads


def _close(a, b, tol=1e-12):
    for u, v in zip(a[:3], b[:3]):
        torch.testing.assert_close(u, v, rtol=tol, atol=tol)
    assert a[3].keys() == b[3].keys()
    for name, grad in a[3].items():
        t = 1e-5 if name.startswith("router") else tol  # routing runs in float32
        torch.testing.assert_close(grad, b[3][name], rtol=t, atol=t, msg=name)


@pytest.mark.parametrize("fanout", [1, 2, 4])
@pytest.mark.parametrize("root", [False, True])
@pytest.mark.parametrize("picked", [False, True], ids=["residual tensor", "fused hop"])
def test_regular_adjacency_equals_message_passing(fanout, root, picked):
    torch.manual_seed(0)
    parents, d, s, r = 3, 5, 4, 2
    conv = SMoREConv(0 if root else d, d, root=root).double()
    x = torch.randn(parents * fanout, d, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(parents * fanout, dtype=torch.float64, requires_grad=True)
    src = torch.arange(parents * fanout)
    edges = torch.stack([src, src // fanout])
    adjacency = regular_adjacency(parents * fanout, fanout, x.device)
    hidden = torch.randn(parents, s * r, dtype=torch.float64, requires_grad=True)
    experts = PickedExperts(
        hidden,
        picked_rows(torch.randint(0, s, (parents, 1))),
        torch.randn(s, d, r, dtype=torch.float64),
        torch.randn(s, d, dtype=torch.float64),
        1.0,
    )
    res = None if root else (experts if picked else torch.randn(parents, d, dtype=torch.float64))
    inputs = [x, weight] if root else [x, weight, hidden]
    if root:
        want = conv(x, None, edges, weight, num_parents=parents)
        got = conv(x, None, adjacency, weight, num_parents=parents)
    else:  # a middle layer: children of width d
        want = conv(x, res, edges, weight)
        got = conv(x, res, adjacency, weight)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)
    g = torch.randn_like(want)
    got_grads = torch.autograd.grad(got, inputs, g, allow_unused=True)
    want_grads = torch.autograd.grad(want, inputs, g, allow_unused=True)
    for a, b in zip(got_grads, want_grads):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.filterwarnings("ignore:SMoREConfig.expert_act:UserWarning")
@pytest.mark.parametrize("batch", [3, 40], ids=["6 tokens", "80 tokens"])
@pytest.mark.parametrize("config", CONFIGS)
def test_tiny_n_paths_equal_the_general_paths(config, batch, monkeypatch):
    layer = make_layer(torch.float64, **config).train()
    x = torch.randn(batch, 2, 8, dtype=torch.float64)
    grad_out = torch.randn(batch, 2, 6, dtype=torch.float64)
    fast = _step(layer, x, grad_out)  # fused hops (momor: reshape-and-sum)
    layer.settings = SpeedSettings(message_passing="edges")
    for bank in layer.experts:
        bank.path = "masked"
    _close(_step(layer, x, grad_out), fast)  # message passing, one-hot GEMM


@pytest.mark.parametrize("message_passing", ["fused", "edges"])
def test_training_forward_is_message_passing(message_passing):
    # the default training forward goes through SMoREConv.propagate and, fused, through
    # message_and_aggregate for every hop (L - 1 convs plus the root); "edges" through message
    layer = make_layer(gate_type="switch").train()
    layer.settings = SpeedSettings(message_passing=message_passing)
    calls = {"propagate": 0, "message_and_aggregate": 0, "message": 0}
    for conv in [*layer.convs, layer.root]:
        for name in calls:
            register = getattr(conv, f"register_{name}_forward_hook")
            register(lambda *a, _name=name: calls.__setitem__(_name, calls[_name] + 1))
    x = torch.randn(100, 8, dtype=torch.float64, requires_grad=True)
    layer(x).sum().backward()
    hops = layer.config.num_layers  # L - 1 hops between layers, plus the root
    fused = message_passing == "fused"
    assert calls == {
        "propagate": hops,
        "message_and_aggregate": hops if fused else 0,
        "message": 0 if fused else hops,
    }
    assert x.grad.abs().sum() > 0


def test_tiny_n_takes_the_gather_residuals():
    bank = ResidualExperts(8, num_experts=4, rank=8, out_features=16)
    assert bank.choose_path(GATHER_MAX_NODES, 2) == "gather"  # tiny: fewest ops
    assert bank.choose_path(GATHER_MAX_NODES + 1, 2) == "masked"  # CPU cost model
    bank.path = "masked"
    assert bank.choose_path(1, 2) == "masked"  # a forced path wins


def test_all_real_mask_equals_no_mask():
    layer = make_layer(torch.float64, gate_type="switch").train()
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    grad_out = torch.randn(2, 4, 6, dtype=torch.float64)
    ones = torch.ones(2, 4, dtype=torch.bool)
    _close(_step(layer, x, grad_out, ones), _step(layer, x, grad_out))
    padded = ones.clone()
    padded[1, 3] = False
    loss_padded = _step(layer, x, grad_out, padded)[1]
    assert not torch.equal(loss_padded, _step(layer, x, grad_out)[1])  # padding still masks


@pytest.mark.parametrize(("tokens", "entry"), [(5, "decode"), (100, "stacked")])
def test_stacked_weight_cache_follows_updates(tokens, entry):
    layer = make_layer(torch.float32, gate_type="switch").eval()
    x = torch.randn(tokens, 8)
    with torch.no_grad():
        layer(x)
        assert any(k.startswith(entry) for k in layer._cache)  # no grad: the weight is kept
        for bank in layer.experts:
            bank.lora_A.weight.add_(0.5)  # an optimizer step (in place)
        layer.router.down_proj.bias.mul_(2.0)
        cached = layer(x)
    torch.testing.assert_close(cached, layer(x).detach())  # with grad: stacked per call
    double = copy.deepcopy(layer).double()
    with torch.no_grad():
        out = double(x.double())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), cached, rtol=1e-5, atol=1e-5)


def test_cached_adjacency_made_in_inference_mode_serves_a_backward():
    layer = make_layer(
        torch.float64, gate_type="switch", num_experts=[3, 4], fanout=[2, 2], rank=[2, 2]
    ).train()
    x = torch.randn(100, 8, dtype=torch.float64)  # over the tiny-N limit: message passing
    with torch.inference_mode():
        layer(x)  # caches the regular adjacency of this size
        tree = RoutingTree.from_routing(layer.router(x))
        edges = tree.layer_edge_index(0)
    assert edges.tolist() == torch.stack([torch.arange(400), torch.arange(400) // 2]).tolist()
    assert layer._adjacency and not any(a.is_inference() for a in layer._adjacency.values())
    layer(x.requires_grad_(True)).sum().backward()  # would fail on an inference tensor
    assert x.grad is not None


def test_last_routing_is_detached_only_under_autograd():
    layer = make_layer(torch.float64, gate_type="switch").train()
    x = torch.randn(4, 8, dtype=torch.float64)
    layer(x)
    assert not layer.last_routing.balance_loss.requires_grad
    with torch.no_grad():
        layer(x)
    assert not layer.last_routing.scores[0].requires_grad


def test_set_speed_settings_reaches_every_layer():
    from smore_gnn.hf.methods import build_for_budget, smore_paper_config
    from smore_gnn.hf.testing import tiny_llama
    from smore_gnn.nn.layer import SMoRELinear
    from smore_gnn.nn.runtime import set_speed_settings

    base, _ = tiny_llama(seed=0)
    model, _ = build_for_budget("smore", base, smore_paper_config(rank=[2, 2]), seed=0)
    edges = SpeedSettings(message_passing="edges")
    assert set_speed_settings(model, edges) == 6
    assert all(m.settings is edges for m in model.modules() if isinstance(m, SMoRELinear))
    with pytest.raises(ValueError, match="no SMoRELinear"):
        set_speed_settings(torch.nn.Linear(2, 2), edges)

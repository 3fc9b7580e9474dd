"""The router's fast path (``smore_gnn.nn.routing``, issue 13) equals the paper's formulation,
:meth:`SMoRERouter.route_reference` (layer routers on concatenated inputs).

The forward splits ``fc1`` (and the noise layer) by input blocks and folds the head; in eval
mode with autograd off it caches its tables and leaves the statistics to be computed on
first access. Every way must pick the same experts with the same scores as the reference,
with the same statistics (balance loss, z-loss, load, importance; padding excluded) and, with
autograd, the same gradients; in training the noisy top-k gate draws the same noise.
"""

from __future__ import annotations

import pytest
import torch

from smore_gnn import SMoREConfig, SMoRERouter
from smore_gnn.nn.routing import build_tables, routing_tables

CONFIGS = [
    dict(gate_type="switch"),
    dict(gate_type="switch", fanout=[1, 1]),
    dict(gate_type="noisy_topk"),
    dict(gate_type="noisy_topk", fanout=[1, 2]),
    dict(gate_type="dense", num_experts=[3, 2], fanout=[3, 2]),
    dict(gate_type="switch", num_experts=[3, 4, 5], fanout=[2, 3, 2], rank=[1, 1, 1]),
    dict(gate_type="noisy_topk", num_experts=[3, 4, 5], fanout=[2, 1, 2], rank=[1, 1, 1]),
    dict(gate_type="switch", logit_scale=10.0, z_loss_weight=0.1, router_input_norm=True),
    dict(gate_type="noisy_topk", learn_logit_scale=True, logit_scale=3.0, z_loss_weight=0.1),
    dict(gate_type="switch", down_proj_dim=None, router_act="tanh"),
    dict(gate_type="switch", router_act="identity", balance_loss_weight=0.5),
]


def _router(config: dict, seed: int = 0) -> SMoRERouter:
    torch.manual_seed(seed)
    cfg = SMoREConfig(**{"rank": [2] * len(config.get("num_experts", [4, 4])), **config})
    router = SMoRERouter(6, cfg).eval()
    with torch.no_grad():  # non-zero biases so every folded term counts
        for name, p in router.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.3)
    return router


def _assert_same(fast, general, tol=1e-5):
    for a, b in zip(fast.experts, general.experts):
        assert torch.equal(a, b)
    for a, b in zip(fast.scores, general.scores):
        torch.testing.assert_close(a, b.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(
        fast.balance_loss, general.balance_loss.detach(), rtol=tol, atol=tol
    )
    for name in ("load", "importance", "layer_losses"):
        for a, b in zip(getattr(fast, name), getattr(general, name)):
            torch.testing.assert_close(a, b.detach(), rtol=tol, atol=tol, msg=name)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("masked", [False, True])
def test_no_autograd_routing_equals_the_general_router(config, masked):
    router = _router(config)
    x = torch.randn(9, 6)
    mask = None
    if masked:
        mask = torch.ones(9, dtype=torch.bool)
        mask[[2, 7]] = False
        x[2] = float("nan")  # a padding token must not reach anything
    with torch.no_grad():
        fast = router(x, mask)
    assert fast.is_lazy  # nothing computed yet
    general = router.route_reference(x, mask)
    assert not general.is_lazy and general.scores[0].requires_grad
    _assert_same(fast, general)
    assert not fast.is_lazy


def _gradients(router: SMoRERouter, routing) -> dict[str, torch.Tensor]:
    router.zero_grad()
    weights = [torch.linspace(0.5, 1.5, s.numel()).view_as(s) for s in routing.scores]
    total = routing.balance_loss + sum((w * s).sum() for w, s in zip(weights, routing.scores))
    total.backward()
    return {n: p.grad.clone() for n, p in router.named_parameters() if p.grad is not None}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_autograd_routing_equals_the_reference(config, training):
    router = _router(config).train(training)
    x = torch.randn(9, 6)
    mask = torch.ones(9, dtype=torch.bool)
    mask[[2, 7]] = False
    x[2] = float("nan")
    torch.manual_seed(5)  # the same router noise (noisy top-k, training)
    fast = router(x, mask)
    torch.manual_seed(5)
    general = router.route_reference(x, mask)
    assert not fast.is_lazy and fast.scores[0].requires_grad
    _assert_same(fast, general)
    got, want = _gradients(router, fast), _gradients(router, general)
    assert got.keys() == want.keys() and got
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_training_mode_takes_the_general_path():
    router = _router(dict(gate_type="noisy_topk")).train()  # noise: sampled in the gate
    with torch.no_grad():
        out = router(torch.randn(5, 6))
    assert not out.is_lazy


def test_tables_split_fc1_exactly():
    """fc1(concat(u, k_top, k_parent)) = token part + the two key tables' rows."""
    router = _router(dict(num_experts=[3, 4, 5], fanout=[2, 2, 2], rank=[1, 1, 1]))
    tables = build_tables(router)
    layer, d_g = router.layers[0], tables["d_g"]
    u = torch.randn(d_g)
    top, parent = router.layers[2].passed_keys[4], router.layers[1].passed_keys[1]
    want = layer.fc1(torch.cat([u, top, parent]))
    token = tables["token_w"][:d_g] @ u + tables["token_b"][:d_g]
    ancestors = tables["plan"][0][2]  # layer 0's key tables: top layer, then the parent's
    got = token + ancestors[0][4] + ancestors[1][1]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_tables_follow_in_place_updates_and_replacement():
    router = _router(dict(gate_type="switch"))
    x = torch.randn(7, 6)
    with torch.no_grad():
        before = router(x)
        first = routing_tables(router, router._tables)
        router.layers[1].keys.mul_(-1.0)  # an optimizer step: the version counter moves
        router.layers[0].fc1.bias.add_(1.0)
        fast = router(x)
        assert routing_tables(router, router._tables) is not first
    _assert_same(fast, router.route_reference(x))
    assert not all(torch.equal(a, b) for a, b in zip(before.scores, fast.scores))
    second = routing_tables(router, router._tables)
    router.layers[0].fc2.weight = torch.nn.Parameter(torch.randn(32, 32))  # replaced
    with torch.no_grad():
        fast = router(x)
        assert routing_tables(router, router._tables) is not second
    _assert_same(fast, router.route_reference(x))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("num_tables", [0, 1, 2])
def test_switch_step_gradcheck_and_equals_autograd(masked, num_tables):
    # one top-down layer of the switch router as one Function, against the same plain ops
    from smore_gnn.nn.gates import switch_gate
    from smore_gnn.nn.routing import _SwitchStep

    torch.manual_seed(0)
    n, parents, c, s, f = 3, 1 if num_tables == 0 else 2, 5, 4, 2
    opts = dict(dtype=torch.float64, requires_grad=True)
    token, head_w, head_b = (
        torch.randn(n, c, **opts),
        torch.randn(s, c, **opts),
        torch.randn(s, **opts),
    )
    tables = [torch.randn(3, c, **opts) for _ in range(num_tables)]
    ids = [torch.randint(0, 3, (n * parents,)) for _ in range(num_tables)]
    valid = torch.tensor([1, 0, 1] * parents).bool()[: n * parents] if masked else None

    def fused(token, head_w, head_b, *tables):
        out = _SwitchStep.apply(
            token, head_w, head_b, valid, f, 0.3, False, parents, num_tables, *tables, *ids
        )
        return out[1], out[2]

    def plain(token, head_w, head_b, *tables):
        h = token.repeat_interleave(parents, 0)
        for table, picked in zip(tables, ids):
            h = h + table[picked]
        out = switch_gate(torch.relu(h) @ head_w.t() + head_b, f, valid, 0.3)
        return out.scores, out.loss

    args = (token, head_w, head_b, *tables)
    for got, want in zip(fused(*args), plain(*args)):
        torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(lambda *a: fused(*a)[0].sum() + fused(*a)[1], args)

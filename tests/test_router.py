"""Hierarchical routing and the three gates' balance losses (docs/spec.md §3)."""

import pytest
import torch
from torch import nn

from smore_gnn import SMoREConfig, SMoRERouter
from smore_gnn.nn.gates import cv_squared


def _constant_router(cfg: SMoREConfig, query: list[float], keys: list[list[float]]):
    """Every token gets query ``q`` (fc2 weight 0, bias q) against the given keys."""
    router = SMoRERouter(4, cfg)
    layer = router.layers[0]
    with torch.no_grad():
        layer.fc2.weight.zero_()
        layer.fc2.bias.copy_(torch.tensor(query))
        layer.keys.copy_(torch.tensor(keys))
    return router


def test_top_down_shapes_and_distinct_siblings():
    cfg = SMoREConfig(num_experts=[5, 4, 3], fanout=[3, 2, 2], rank=[1, 1, 1], router_dim=8)
    router = SMoRERouter(10, cfg)
    out = router(torch.randn(7, 10))
    assert [e.shape for e in out.experts] == [(7, 12), (7, 4), (7, 2)]
    assert [s.shape for s in out.scores] == [(7, 12), (7, 4), (7, 2)]
    for l, f in enumerate(cfg.fanout):
        groups = out.experts[l].view(7, -1, f)  # siblings of one parent
        assert (groups.sort(-1).values.diff(dim=-1) > 0).all()  # siblings are distinct
        assert int(out.experts[l].max()) < cfg.num_experts[l]
    assert [r.fc1.in_features for r in router.layers] == [32 + 16, 32 + 8, 32]


def test_children_depend_on_parent_key():
    """Each chosen parent picks its own children: swapping two parents' keys swaps them."""
    cfg = SMoREConfig(num_experts=[6, 2], fanout=[2, 2], rank=[1, 1], gate_type="switch")
    router = SMoRERouter(4, cfg)
    x = torch.randn(50, 4)
    out = router(x)
    differs = out.experts[0][:, :2].sort(-1).values != out.experts[0][:, 2:].sort(-1).values
    assert differs.any()  # cousins may differ (and may repeat)


def test_switch_uniform_routing_gives_weight_times_fanout():
    """The authors' scale: tokens-per-expert sums to f, so uniform routing gives w * f."""
    cfg = SMoREConfig(
        num_experts=[3, 4],
        fanout=[2, 1],
        rank=[1, 1],
        gate_type="switch",
        balance_loss_weight=0.03,
    )
    router = SMoRERouter(4, cfg)
    with torch.no_grad():
        for layer in router.layers:
            layer.fc2.weight.zero_()
            layer.fc2.bias.zero_()  # q = 0 -> uniform probabilities
    out = router(torch.randn(9, 4))
    assert [loss.item() for loss in out.layer_losses] == pytest.approx([0.06, 0.03], rel=1e-6)
    assert out.balance_loss.item() == pytest.approx(0.09, rel=1e-6)


def test_switch_loss_hand_computed():
    cfg = SMoREConfig(
        num_experts=[2],
        fanout=[1],
        rank=[1],
        gate_type="switch",
        router_dim=2,
        balance_loss_weight=0.5,
    )
    router = _constant_router(cfg, [1.0, 0.0], [[2.0, 0.0], [0.0, 0.0]])
    out = router(torch.randn(3, 4))
    p0 = torch.tensor([2.0, 0.0]).softmax(0)[0].item()  # every token: probs (p0, 1 - p0)
    # frac = (1, 0), mean_prob = (p0, 1 - p0): w * s * sum = 0.5 * 2 * p0
    assert out.balance_loss.item() == pytest.approx(p0, rel=1e-6)
    assert out.load[0].tolist() == [3.0, 0.0]
    assert out.importance[0].tolist() == pytest.approx([3.0 * p0, 0.0])


def test_noisy_topk_loss_hand_computed():
    cfg = SMoREConfig(
        num_experts=[3],
        fanout=[1],
        rank=[1],
        gate_type="noisy_topk",
        router_dim=2,
        balance_loss_weight=0.1,
    )
    router = _constant_router(cfg, [1.0, 1.0], [[1.0, 1.0], [1.0, 0.0], [-1.0, 0.0]]).eval()
    out = router(torch.randn(4, 4))
    c = 1.0  # cosine of q with key 0; f = 1 -> the score is the raw logit
    assert out.scores[0].flatten().tolist() == pytest.approx([c] * 4)
    # importance (4c, 0, 0) and load (4, 0, 0): mean 4/3, unbiased var (64/9 + 2 * 16/9) / 2
    # = 16/3, so cv^2 = 3 each (the population variance would give 2)
    assert out.balance_loss.item() == pytest.approx(0.1 * (3 + 3), rel=1e-5)
    assert cv_squared(torch.tensor([4.0, 0.0, 0.0])).item() == pytest.approx(3.0)


def test_noisy_topk_scores_softmax_over_picks_and_noise_in_training():
    cfg = SMoREConfig(num_experts=[5], fanout=[3], rank=[1], gate_type="noisy_topk")
    router = SMoRERouter(6, cfg)
    x = torch.randn(20, 6)
    out = router.eval()(x)
    torch.testing.assert_close(out.scores[0].view(20, 3).sum(-1), torch.ones(20))
    again = router(x)
    assert torch.equal(out.experts[0], again.experts[0])  # eval: no noise
    router.train()
    torch.manual_seed(0)
    a = router(x)
    torch.manual_seed(1)
    b = router(x)
    assert not torch.equal(a.scores[0], b.scores[0])  # training: noisy


def test_dense_gate_routes_to_all():
    cfg = SMoREConfig(num_experts=[3, 2], fanout=[3, 2], rank=[1, 1], gate_type="dense")
    out = SMoRERouter(4, cfg)(torch.randn(5, 4))
    assert out.experts[1].tolist() == [[0, 1]] * 5
    assert out.experts[0].tolist() == [[0, 1, 2, 0, 1, 2]] * 5
    torch.testing.assert_close(out.scores[0].view(5, 2, 3).sum(-1), torch.ones(5, 2))
    assert out.balance_loss.item() == 0.0


@pytest.mark.parametrize("gate", ["noisy_topk", "switch", "dense"])
def test_padding_changes_no_statistic(gate):
    fanout = [3, 2] if gate == "dense" else [2, 1]
    cfg = SMoREConfig(num_experts=[3, 2], fanout=fanout, rank=[1, 1], gate_type=gate)
    router = SMoRERouter(4, cfg).eval()
    x = torch.randn(6, 4)
    ref = router(x)
    padded = torch.cat([x, 10 * torch.randn(5, 4)])
    mask = torch.cat([torch.ones(6), torch.zeros(5)])
    out = router(padded, mask)
    torch.testing.assert_close(out.balance_loss, ref.balance_loss)
    for a, b in zip(out.load + out.importance, ref.load + ref.importance):
        torch.testing.assert_close(a, b)
    unmasked = router(padded)
    assert not torch.equal(unmasked.load[0], ref.load[0]) or gate == "dense"


def test_routing_math_is_float32_for_float64_and_bf16_weights():
    cfg = SMoREConfig(num_experts=[3], fanout=[2], rank=[1], gate_type="switch")
    router = SMoRERouter(4, cfg).to(torch.bfloat16)
    out = router(torch.randn(3, 4, dtype=torch.bfloat16))
    assert out.scores[0].dtype == torch.float32 and out.balance_loss.dtype == torch.float32
    assert isinstance(router.layers[0].fc1, nn.Linear)


def _nan_padding_case(gate: str, train: bool):
    fanout = [3, 2] if gate == "dense" else [2, 1]
    cfg = SMoREConfig(num_experts=[3, 2], fanout=fanout, rank=[1, 1], gate_type=gate)
    torch.manual_seed(0)
    router = SMoRERouter(4, cfg).train(train)
    with torch.no_grad():  # a noise projection that depends on the input
        for layer in router.layers:
            if layer.noise is not None:
                layer.noise.weight.normal_(0, 0.5)
    return router


def _loss_and_grads(router, x, mask=None):
    """Balance loss, and the gradients of it plus a fixed function of the valid tokens' scores."""
    router.zero_grad()
    torch.manual_seed(1)  # the same router noise in both runs
    out = router(x, mask)
    keep = torch.ones(x.size(0), dtype=torch.bool) if mask is None else mask.bool()
    task = sum(
        (s[keep] * torch.linspace(-1, 1, s[keep].numel()).view_as(s[keep])).sum()
        for s in out.scores
    )  # what a task loss that ignores padding sees
    (out.balance_loss + task).backward()
    grads = {n: p.grad.clone() for n, p in router.named_parameters() if p.grad is not None}
    return out.balance_loss.detach(), grads


@pytest.mark.parametrize("gate", ["noisy_topk", "switch", "dense"])
def test_nan_in_padding_changes_no_loss_and_no_router_gradient(gate):
    """Issue 12 item 7: padding holding NaN must not influence the loss or any gradient."""
    x = torch.randn(6, 4)
    nan_token = torch.full((1, 4), float("nan"))
    mask = torch.tensor([1, 1, 1, 0, 1, 1, 1])  # the NaN token sits between valid ones
    padded = torch.cat([x[:3], nan_token, x[3:]])
    router = _nan_padding_case(gate, train=False)
    loss, grads = _loss_and_grads(router, padded, mask)
    ref_loss, ref_grads = _loss_and_grads(router, x)  # the run without that token
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), name
        torch.testing.assert_close(grad, ref_grads[name], msg=name)
    if gate == "noisy_topk":  # training: noise on; compare with a finite padding token
        router.train()
        loss, grads = _loss_and_grads(router, padded, mask)
        ref_loss, ref_grads = _loss_and_grads(router, torch.cat([x[:3], x[:1], x[3:]]), mask)
        torch.testing.assert_close(loss, ref_loss)
        assert any(g.abs().sum() > 0 for g in grads.values())
        for name, grad in grads.items():
            assert torch.isfinite(grad).all(), name
            torch.testing.assert_close(grad, ref_grads[name], msg=name)


def test_padding_routes_as_u_zero_whether_or_not_u_is_given():
    """The GNN path hands the router a precomputed ``u``; the dense path does not. Padding
    must route the same on both (as ``u = 0``), so the two backends agree on masked batches."""
    cfg = SMoREConfig(num_experts=[3, 4], fanout=[2, 2], rank=[1, 1], gate_type="switch")
    router = SMoRERouter(5, cfg)
    x = torch.randn(6, 5)
    mask = torch.tensor([1, 0, 1, 1, 0, 1])
    own = router(x, mask)
    given = router(x, mask, u=router.down_proj(x))
    for a, b in zip(own.experts + own.scores, given.experts + given.scores):
        torch.testing.assert_close(a, b)
    zero = router(torch.zeros(1, 5), None, u=torch.zeros(1, cfg.down_proj_dim))
    for l in range(cfg.num_layers):  # each padding token routed exactly like u = 0
        assert (
            own.experts[l][1].tolist() == own.experts[l][4].tolist() == zero.experts[l][0].tolist()
        )

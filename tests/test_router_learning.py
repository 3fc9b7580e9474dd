"""Router-learning options of SMoREConfig (issue 10 item 3): logit scale (fixed or learned),
z-loss, router input normalisation; each off by default."""

from __future__ import annotations

import math

import pytest
import torch

from smore_gnn import SMoREConfig
from smore_gnn.nn.gates import z_loss
from smore_gnn.nn.router import LayerRouter, SMoRERouter
from smore_gnn.train.optim import param_groups

GATES = ("switch", "noisy_topk", "dense")


def _cfg(gate: str = "switch", **kw) -> SMoREConfig:
    fanout = [3, 2] if gate == "dense" else [2, 1]
    return SMoREConfig(
        num_experts=[3, 2],
        fanout=fanout,
        rank=[2, 2],
        gate_type=gate,
        router_dim=8,
        down_proj_dim=4,
        **kw,
    )


def _layer(cfg: SMoREConfig, seed: int = 0) -> LayerRouter:
    torch.manual_seed(seed)
    return LayerRouter(6, 3, cfg.fanout[0], cfg).eval()


@pytest.mark.parametrize("gate", GATES)
def test_default_logits_are_the_plain_gate_logits(gate):
    router = _layer(_cfg(gate))
    h = torch.randn(5, 6)
    q = router.fc2(torch.relu(router.fc1(h)))
    if gate == "noisy_topk":
        expected = (
            torch.nn.functional.normalize(q, dim=-1)
            @ torch.nn.functional.normalize(router.keys, dim=-1).t()
        )
    else:
        expected = q @ router.keys.t()
    torch.testing.assert_close(router.logits(h), expected)
    assert router.log_logit_scale is None and "log_logit_scale" not in router.state_dict()


@pytest.mark.parametrize("gate", GATES)
def test_logit_scale_multiplies_logits_and_sharpens_scores(gate):
    h = torch.randn(7, 6)
    plain, scaled = _layer(_cfg(gate)), _layer(_cfg(gate, logit_scale=4.0))
    torch.testing.assert_close(scaled.logits(h), 4.0 * plain.logits(h))
    if gate == "switch":  # the renormalised top-2 scores: a larger scale spreads them
        spread = lambda out: (out.scores[:, 0] - out.scores[:, 1]).abs()  # noqa: E731
        a, b = plain(h, None), scaled(h, None)
        assert torch.equal(a.experts, b.experts)  # same order, softmax is monotone
        assert bool((spread(b) >= spread(a) - 1e-7).all()) and spread(b).sum() > spread(a).sum()


def test_learned_logit_scale_starts_at_the_config_value_gets_gradient_and_router_lr():
    cfg = _cfg("switch", logit_scale=2.5, learn_logit_scale=True)
    torch.manual_seed(0)
    router = SMoRERouter(6, cfg).train()
    for layer in router.layers:
        assert layer.log_logit_scale.item() == pytest.approx(math.log(2.5))
        assert float(layer.logit_scale.detach()) == pytest.approx(2.5)
    out = router(torch.randn(4, 6))
    (sum(s.pow(2).sum() for s in out.scores) + out.balance_loss).backward()
    assert router.layers[0].log_logit_scale.grad is not None
    assert router.layers[0].log_logit_scale.grad.abs() > 0
    holder = torch.nn.ModuleDict({"router": router})
    groups = {g["name"]: g for g in param_groups(holder, 1e-3, router_lr_scale=3.0)}
    ids = {id(p) for p in groups["router_no_decay"]["params"]}
    assert id(router.layers[1].log_logit_scale) in ids
    assert groups["router_no_decay"]["lr"] == pytest.approx(3e-3)


def test_z_loss_hand_computed_and_padding_left_out():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [float("nan"), 1.0]])
    valid = torch.tensor([True, True, False])
    expected = (math.log(2.0) ** 2 + math.log(4.0) ** 2) / 2
    assert z_loss(logits, valid).item() == pytest.approx(expected)
    assert z_loss(logits[:2], None).item() == pytest.approx(expected)
    assert z_loss(logits, torch.zeros(3, dtype=torch.bool)).item() == 0.0


@pytest.mark.parametrize("gate", GATES)
def test_z_loss_joins_the_layer_loss(gate):
    h = torch.randn(6, 6)
    valid = torch.tensor([True] * 5 + [False])
    plain, with_z = _layer(_cfg(gate)), _layer(_cfg(gate, z_loss_weight=0.5))
    a, b = plain(h, valid), with_z(h, valid)
    extra = 0.5 * z_loss(plain.logits(h), valid)
    torch.testing.assert_close(b.loss, a.loss + extra)
    assert extra > 0


def test_router_input_norm_makes_routing_invariant_to_the_scale_of_u():
    torch.manual_seed(0)
    x, u = torch.randn(9, 6), torch.randn(9, 4)
    mask = torch.tensor([True] * 8 + [False])
    normed = SMoRERouter(6, _cfg("switch", router_input_norm=True)).eval()
    a, b = normed(x, mask, u=u), normed(x, mask, u=25.0 * u)
    for ea, eb, sa, sb in zip(a.experts, b.experts, a.scores, b.scores):
        assert torch.equal(ea, eb)
        torch.testing.assert_close(sa, sb)
    torch.manual_seed(0)
    plain = SMoRERouter(6, _cfg("switch")).eval()  # same weights, no normalisation
    c, d = plain(x, mask, u=u), plain(x, mask, u=25.0 * u)
    assert not all(torch.allclose(sc, sd) for sc, sd in zip(c.scores, d.scores))
    u_nan = u.clone()
    u_nan[-1] = float("nan")  # padding holds NaN: nothing may reach a statistic or gradient
    u_nan.requires_grad_(True)
    normed.train()
    e = normed(x, mask, u=u_nan)
    assert torch.isfinite(e.balance_loss) and all(torch.isfinite(s).all() for s in e.scores)
    (e.balance_loss + sum(s.sum() for s in e.scores)).backward()
    assert torch.isfinite(u_nan.grad).all() and not u_nan.grad[-1].any()
    assert all(torch.isfinite(p.grad).all() for p in normed.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"logit_scale": 0.0}, ValueError, "logit_scale must be a float > 0"),
        ({"logit_scale": -2.0}, ValueError, "logit_scale must be a float > 0"),
        ({"logit_scale": math.inf}, ValueError, "logit_scale .*finite"),
        ({"logit_scale": "10"}, TypeError, "logit_scale must be a float > 0"),
        ({"z_loss_weight": -1e-3}, ValueError, "z_loss_weight must be a float >= 0"),
        ({"z_loss_weight": True}, TypeError, "z_loss_weight"),
        ({"learn_logit_scale": "yes"}, TypeError, "learn_logit_scale must be True or False"),
        ({"router_input_norm": 1}, TypeError, "router_input_norm must be True or False"),
    ],
)
def test_bad_values_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        SMoREConfig(**kwargs)


def test_options_round_trip_and_default_off():
    cfg = SMoREConfig(
        logit_scale=3, learn_logit_scale=True, z_loss_weight=1e-3, router_input_norm=True
    )
    assert isinstance(cfg.logit_scale, float) and cfg.logit_scale == 3.0
    assert SMoREConfig.from_json(cfg.to_json()) == cfg
    default = SMoREConfig()
    assert (default.logit_scale, default.learn_logit_scale) == (1.0, False)
    assert (default.z_loss_weight, default.router_input_norm) == (0.0, False)


def test_learned_scale_and_options_survive_save_and_load(tmp_path):
    from smore_gnn.hf.model import SMoREModel, get_smore_model
    from smore_gnn.hf.testing import tiny_llama

    cfg = SMoREConfig(
        num_experts=[3, 2],
        fanout=[2, 1],
        rank=[2, 2],
        gate_type="switch",
        logit_scale=4.0,
        learn_logit_scale=True,
        router_input_norm=True,
        z_loss_weight=1e-3,
    )
    model = get_smore_model(tiny_llama(seed=0)[0], cfg)
    with torch.no_grad():
        for layer in model.adapters().values():
            for router in layer.router.layers:
                router.log_logit_scale.fill_(0.75)  # as if trained
    model.save_pretrained(tmp_path / "a")
    loaded = SMoREModel.from_pretrained(tiny_llama(seed=1)[0], tmp_path / "a")
    assert loaded.smore_config == cfg
    for layer in loaded.adapters().values():
        assert layer.router.input_norm
        for router in layer.router.layers:
            assert router.log_logit_scale.item() == pytest.approx(0.75)

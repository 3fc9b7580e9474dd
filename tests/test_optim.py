"""smore_gnn.train.optim.param_groups: router parameters at lr * router_lr_scale."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smore_gnn import SMoREConfig, SMoRELinear
from smore_gnn.train.optim import param_groups


def _model() -> nn.Module:
    torch.manual_seed(0)
    cfg = SMoREConfig(num_experts=[3, 2], fanout=[2, 1], rank=[2, 2], init_method="normal")
    model = nn.Sequential(
        SMoRELinear(nn.Linear(8, 6), cfg),
        nn.Linear(6, 4),
    )
    return model  # SMoRELinear froze its base layer


def _by_name(groups: list[dict]) -> dict[str, dict]:
    return {g["name"]: g for g in groups}


def test_router_group_gets_scaled_lr_and_every_trainable_parameter_once():
    model = _model()
    groups = param_groups(model, 2e-3, router_lr_scale=5.0, weight_decay=0.1)
    named = {id(p): n for n, p in model.named_parameters()}
    listed = [named[id(p)] for g in groups for p in g["params"]]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(listed) == sorted(trainable)  # each trainable parameter exactly once
    by = _by_name(groups)
    router = [named[id(p)] for k in ("router", "router_no_decay") for p in by[k]["params"]]
    assert router and all(".router." in f".{n}" for n in router)
    assert {n for n in trainable if "router." in n} == set(router)
    assert by["router"]["lr"] == pytest.approx(1e-2)
    assert by["router_no_decay"]["lr"] == pytest.approx(1e-2)
    assert by["other"]["lr"] == pytest.approx(2e-3)
    assert by["other"]["weight_decay"] == 0.1 and by["router"]["weight_decay"] == 0.1
    assert by["other_no_decay"]["weight_decay"] == 0.0
    assert by["router_no_decay"]["weight_decay"] == 0.0
    for g in groups:  # biases and keys' 1-D tensors are never decayed, matrices always are
        dims = {p.dim() for p in g["params"]}
        assert dims <= ({0, 1} if g["name"].endswith("no_decay") else {2, 3})


def test_adamw_step_moves_router_weights_scale_times_further():
    """Adam's first step moves each weight by ~lr: the router's by lr * scale."""
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(param_groups(model, 1e-3, router_lr_scale=4.0))
    x = torch.randn(16, 8)
    model[0].train()
    (model(x).pow(2).sum() + model[0].balance_loss).backward()
    opt.step()
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    router = [v for n, v in moved.items() if "router.layers.0.fc1.weight" in n]
    other = [v for n, v in moved.items() if n.startswith("1.weight")]
    assert router[0] == pytest.approx(4e-3, rel=1e-3)
    assert other[0] == pytest.approx(1e-3, rel=1e-3)


def test_frozen_and_shared_parameters():
    lin = nn.Linear(3, 3)
    model = nn.ModuleDict({"a": lin, "b": lin, "frozen": nn.Linear(3, 3).requires_grad_(False)})
    groups = param_groups(model, 1e-3)
    assert sum(len(g["params"]) for g in groups) == 2  # the shared weight and bias once
    assert {g["name"] for g in groups} == {"other", "other_no_decay"}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lr": 0.0}, ValueError, "lr must be finite and > 0"),
        ({"lr": float("nan")}, ValueError, "lr must be finite"),
        ({"lr": "1e-3"}, TypeError, "lr must be a number"),
        ({"lr": 1e-3, "router_lr_scale": -1.0}, ValueError, "router_lr_scale"),
        ({"lr": 1e-3, "router_lr_scale": True}, TypeError, "router_lr_scale"),
        ({"lr": 1e-3, "weight_decay": -0.1}, ValueError, "weight_decay must be finite and >= 0"),
    ],
)
def test_bad_numbers_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        param_groups(_model(), **kwargs)


def test_no_trainable_parameter_and_not_a_module():
    with pytest.raises(ValueError, match="no trainable parameter"):
        param_groups(nn.Linear(2, 2).requires_grad_(False), 1e-3)
    with pytest.raises(TypeError, match="nn.Module"):
        param_groups([nn.Parameter(torch.ones(2))], 1e-3)

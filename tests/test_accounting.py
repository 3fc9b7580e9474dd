import pytest
import torch
from torch import nn

from smore_gnn import (
    SMoREConfig,
    SMoRELinear,
    active_parameters,
    count_parameters,
    flops_per_token,
)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(gate_type="switch", bias=False),
        dict(num_experts=[3, 3, 3], fanout=[2, 1, 3], rank=[2, 2, 2], shared_pool=True),
        dict(
            num_experts=[2, 5],
            fanout=[2, 5],
            rank=[4, 1],
            gate_type="dense",
            expert_act="prelu",
            down_proj_dim=None,
        ),
        dict(num_experts=[6], fanout=[2], rank=[8], router_dim=16),
        dict(rank=[1, 1], shared_rank=5),  # the extension's shared LoRA term
    ],
)
def test_parameter_count_equals_numel(kwargs):
    cfg = SMoREConfig(**kwargs)
    layer = SMoRELinear(nn.Linear(24, 20), cfg)
    numel = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    assert count_parameters(cfg, 24, 20)["total"] == numel
    assert active_parameters(cfg, 24, 20) <= numel


def test_active_parameters_hand_computed():
    cfg = SMoREConfig(
        num_experts=[4],
        fanout=[2],
        rank=[2],
        bias=False,
        gate_type="switch",
        down_proj_dim=None,
        router_dim=4,
    )
    total = count_parameters(cfg, 10, 3)
    # two of four experts, each A (2 x 10) + B (8 x 2)
    assert total["experts"] == 4 * 36
    assert active_parameters(cfg, 10, 3) == total["total"] - 2 * 36


def test_flops_hand_computed():
    cfg = SMoREConfig(
        num_experts=[2],
        fanout=[1],
        rank=[3],
        bias=False,
        gate_type="switch",
        down_proj_dim=None,
        router_dim=4,
    )
    f = flops_per_token(cfg, 10, 5)
    assert f["router"] == 2 * (10 * 4 + 16 + 2 * 4)
    # A: 2*10*6, B: 2*2*3*6, aggregation 2*1*6, proj 2*6*5
    assert f["experts"] == 120 + 72 + 12 + 60
    assert f["lora_rank_d_L"] == 2 * 6 * 15
    assert f["total"] == f["router"] + f["experts"]
    assert f["delta"] == pytest.approx((f["experts"] - 180) / 180)
    assert f["router_fraction"] == pytest.approx(f["router"] / 180)


def test_paper_scale_overhead_is_small():
    """docs/spec.md §8: at d = 4096 the extra work over a LoRA of rank d_L is a few per cent."""
    cfg = SMoREConfig(num_experts=[4, 4], fanout=[2, 2], rank=[8, 8])
    f = flops_per_token(cfg, 4096, 4096)
    assert 0.0 < f["delta"] < 0.06  # the paper's Table 1: 1.0 % - 5.9 %
    assert torch.tensor(f["total"]) > 0


def test_shared_rank_adds_a_bias_free_lora_of_its_rank():
    plain, shared = SMoREConfig(), SMoREConfig(shared_rank=3)
    extra = count_parameters(shared, 24, 20)["total"] - count_parameters(plain, 24, 20)["total"]
    assert extra == count_parameters(shared, 24, 20)["shared"] == 3 * (24 + 20)
    assert count_parameters(plain, 24, 20)["shared"] == 0
    gap = flops_per_token(shared, 24, 20)["experts"] - flops_per_token(plain, 24, 20)["experts"]
    assert gap == 2 * 3 * (24 + 20)

"""smore_gnn.analysis.rank on hand-made adapters of known update rank (issue 21)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smore_gnn.analysis.rank import (
    delta_function,
    jacobian_rank,
    numerical_rank,
    rank_report,
    update_rank,
)
from smore_gnn.hf.methods import get_method
from smore_gnn.hf.testing import tiny_llama
from smore_gnn.nn.config import SMoREConfig
from smore_gnn.nn.layer import SMoRELinear


def _randomised(layer: SMoRELinear) -> SMoRELinear:
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if not name.startswith("base_layer."):
                p.normal_(0, 0.5)
    return layer.eval()


def _lora_shaped(rank: int, **kw) -> SMoRELinear:
    # one layer, one expert picked by its only parent, identity activation, no biases:
    # delta = W_proj B A x, a LoRA of rank `rank`
    cfg = SMoREConfig(
        num_experts=[1],
        fanout=[1],
        rank=[rank],
        expert_act="identity",
        gate_type="switch",
        bias=False,
        router_dim=4,
        down_proj_dim=4,
        **kw,
    )
    return _randomised(SMoRELinear(nn.Linear(16, 12), cfg))


def test_numerical_rank_of_known_matrices():
    a, b = torch.randn(40, 3, dtype=torch.float64), torch.randn(3, 20, dtype=torch.float64)
    assert numerical_rank(a @ b) == 3
    assert numerical_rank(torch.zeros(5, 4)) == 0
    assert numerical_rank(torch.eye(6)) == 6


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_lora_shaped_smore_has_its_rank(rank):
    layer, x = _lora_shaped(rank), torch.randn(64, 16)
    assert update_rank(layer, x) == rank
    assert jacobian_rank(layer, x[:8]) == rank


def test_zero_w_proj_gives_rank_zero():
    layer = _lora_shaped(3)
    with torch.no_grad():
        layer.proj.weight.zero_()
    x = torch.randn(32, 16)
    assert update_rank(layer, x) == 0 and jacobian_rank(layer, x[:4]) == 0


def test_smore_updates_span_d_L_and_the_shared_term_adds_its_rank():
    base = dict(
        num_experts=[4, 4],
        fanout=[2, 2],
        rank=[1, 1],
        gate_type="switch",
        router_dim=8,
        down_proj_dim=8,
        bias=False,
    )
    x = torch.randn(300, 24)
    plain = _randomised(SMoRELinear(nn.Linear(24, 40), SMoREConfig(**base)))
    d_L = plain.config.message_dims[-1]
    assert update_rank(plain, x) == d_L == 8
    shared = _randomised(SMoRELinear(nn.Linear(24, 40), SMoREConfig(**base, shared_rank=4)))
    assert update_rank(shared, x) == d_L + 4  # the bound the extension lifts
    assert 4 < jacobian_rank(shared, x[:6]) <= d_L + 4


def test_peft_lora_layer_and_report():
    model, _ = tiny_llama(hidden_size=32, intermediate_size=64)
    model = get_method("lora").build(model, 3)
    layer = next(m for m in model.modules() if hasattr(m, "lora_A") and m.lora_A)
    with torch.no_grad():
        for p in layer.lora_B.parameters():
            p.normal_()
    x = torch.randn(50, layer.in_features)
    report = rank_report(layer, x, jacobian_tokens=4)
    assert report["update_rank"] == 3 and report["jacobian_rank"] == 3
    assert report["tokens"] == 50 and report["singular_values"][0] == 1.0


def test_delta_function_rejects_other_modules():
    with pytest.raises(TypeError, match="SMoRELinear or a peft LoRA"):
        delta_function(nn.Linear(2, 2))

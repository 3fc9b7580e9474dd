import pytest

from smore_gnn import SMoREConfig


def test_defaults_and_derived():
    cfg = SMoREConfig()
    assert cfg.num_layers == 2
    assert cfg.message_dims == [0, 32, 64]
    assert cfg.nodes_per_layer == [4, 2, 1]
    assert cfg.num_structures == 6**3
    assert cfg.residual_scales == [1.0, 1.0]


def test_three_layer_derived():
    cfg = SMoREConfig(num_experts=[3, 4, 5], fanout=[1, 2, 3], rank=[2, 3, 4])
    assert cfg.message_dims == [0, 6, 18, 38]
    assert cfg.nodes_per_layer == [6, 6, 3, 1]
    # C(5,3)^1 * C(4,2)^3 * C(3,1)^6
    assert cfg.num_structures == 10 * 6**3 * 3**6


def test_shared_pool_dims():
    cfg = SMoREConfig(num_experts=[4, 4, 4], fanout=[2, 2, 2], rank=[3, 3, 3], shared_pool=True)
    assert cfg.message_dims == [0, 12, 12, 12]


def test_lora_alpha_scales():
    assert SMoREConfig(rank=[8, 4], lora_alpha=16).residual_scales == [2.0, 4.0]
    assert SMoREConfig(rank=[8, 4], lora_alpha=[8, 8]).residual_scales == [1.0, 2.0]


def test_json_round_trip(tmp_path):
    cfg = SMoREConfig(
        num_experts=[2, 3],
        fanout=[1, 2],
        rank=[4, 5],
        gate_type="switch",
        expert_act="prelu",
        lora_alpha=[2.0, 3.0],
        down_proj_dim=None,
    )
    assert SMoREConfig.from_json(cfg.to_json()) == cfg
    path = tmp_path / "c.json"
    cfg.to_json(path)
    assert SMoREConfig.from_json(path) == cfg
    assert SMoREConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(num_experts=[2, 4], fanout=[3, 2], rank=[4, 4]), ValueError, r"fanout\[0\].*got 3"),
        (dict(num_experts=[4, 4], fanout=[2], rank=[4, 4]), ValueError, "fanout has 1 entries"),
        (dict(num_experts=[4, 4], fanout=[2, 2], rank=[4]), ValueError, "rank has 1 entries"),
        (dict(rank=[8, 0]), ValueError, r"rank\[1\] must be >= 1 \(got 0\)"),
        (dict(num_experts=[4, 0], fanout=[2, 0]), ValueError, r"num_experts\[1\] must be >= 1"),
        (dict(num_experts=[], fanout=[], rank=[]), ValueError, "at least one layer"),
        (dict(num_experts=[4, 2], fanout=[2, 2], shared_pool=True), ValueError, "shared_pool"),
        (dict(rank=[8, 4], shared_pool=True), ValueError, r"same num_experts and rank"),
        (dict(expert_act="gelu"), ValueError, r"expert_act must be one of .* \(got 'gelu'\)"),
        (dict(propagation="flat"), ValueError, "propagation must be one of"),
        (dict(gate_type="topk"), ValueError, "gate_type must be one of"),
        (dict(init_method="xavier"), ValueError, "init_method must be one of"),
        (dict(router_act="swish"), ValueError, "router_act must be one of"),
        (dict(backend="cuda"), ValueError, "backend must be one of"),
        (dict(scatter="fast"), ValueError, "scatter must be one of"),
        (dict(gate_type="dense"), ValueError, "fanout must equal num_experts"),
        (dict(num_experts=[4.0, 4]), TypeError, "num_experts must be a list of ints"),
        (dict(rank="8"), TypeError, "rank must be a list of ints"),
        (dict(router_dim=0), ValueError, "router_dim must be a positive int"),
        (dict(down_proj_dim=-3), ValueError, "down_proj_dim must be a positive int or None"),
        (dict(balance_loss_weight=-1.0), ValueError, "balance_loss_weight must be a float >= 0"),
        (dict(noise_eps=0.0), ValueError, "noise_eps must be > 0"),
        (dict(lora_alpha=[1.0]), ValueError, "lora_alpha must be None"),
        (dict(lora_alpha=-2.0), ValueError, "lora_alpha must be None"),
    ],
)
def test_config_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SMoREConfig(**kwargs)


def test_dense_gate_accepts_full_fanout():
    cfg = SMoREConfig(num_experts=[3, 2], fanout=[3, 2], gate_type="dense")
    assert cfg.num_structures == 1


def test_unknown_field_in_dict():
    with pytest.raises(ValueError, match=r"unknown fields \['experts'\]"):
        SMoREConfig.from_dict({"experts": 3})

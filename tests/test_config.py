"""SMoREConfig: derived quantities, validation of every field, frozen state, warnings."""

import dataclasses
import math
import warnings

import pytest

from smore_gnn import SMoREConfig
from smore_gnn.nn import counting


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
        (dict(key_init="zeros"), ValueError, "key_init must be one of"),
        (dict(down_proj_dim=-3), ValueError, "down_proj_dim must be a positive int or None"),
        (dict(balance_loss_weight=-1.0), ValueError, "balance_loss_weight must be a float >= 0"),
        (dict(noise_eps=0.0), ValueError, r"noise_eps must be a float > 0 \(got 0.0\)"),
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


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        # bool fields take only True/False: strings and ints are rejected, naming the fix
        (dict(shared_pool="false"), TypeError, r"shared_pool must be True or False \(got 'false'"),
        (dict(bias="false"), TypeError, r"bias must be True or False .*not a string"),
        (dict(bias=0), TypeError, r"bias must be True or False \(got 0 of type int\)"),
        (dict(noise_bias=1), TypeError, "noise_bias must be True or False"),
        (dict(zero_transition_bias="yes"), TypeError, "zero_transition_bias must be True"),
        # floats reject bool, strings (YAML's 1e-3) and inf/nan
        (dict(lora_alpha=math.inf), ValueError, "lora_alpha must be .*finite"),
        (dict(lora_alpha=[1.0, math.nan]), ValueError, "lora_alpha must be .*finite"),
        (dict(lora_alpha=True), TypeError, "lora_alpha must be .*got True of type bool"),
        (dict(lora_alpha="16"), TypeError, "lora_alpha must be"),
        (dict(balance_loss_weight=math.inf), ValueError, "balance_loss_weight .*finite"),
        (dict(balance_loss_weight=math.nan), ValueError, "balance_loss_weight .*finite"),
        (dict(balance_loss_weight="1e-3"), TypeError, "write 1.0e-3"),
        (dict(balance_loss_weight=False), TypeError, "balance_loss_weight must be a float"),
        (dict(noise_eps=math.inf), ValueError, "noise_eps must be a float > 0, a finite"),
        (dict(noise_eps=True), TypeError, "noise_eps must be a float > 0"),
        (dict(noise_eps=math.nan), ValueError, "noise_eps"),
        # ints reject bool (and floats)
        (dict(router_dim=True), TypeError, r"router_dim must be an int \(got True"),
        (dict(router_dim=8.0), TypeError, "router_dim must be an int"),
        (dict(down_proj_dim=True), TypeError, "down_proj_dim must be a positive int"),
        (dict(down_proj_dim="32"), TypeError, "down_proj_dim must be a positive int"),
        (dict(rank=[8, True]), TypeError, "rank must be a list of ints"),
        (dict(fanout=True), TypeError, "fanout must be a list of ints"),
        # string choices reject other types with a TypeError
        (dict(gate_type=1), TypeError, "gate_type must be a string"),
        (dict(init_method=None), TypeError, "init_method must be a string"),
    ],
)
def test_every_field_is_type_checked(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SMoREConfig(**kwargs)


def test_numbers_are_normalised():
    cfg = SMoREConfig(balance_loss_weight=1, noise_eps=1, lora_alpha=2, down_proj_dim=0)
    assert isinstance(cfg.balance_loss_weight, float) and isinstance(cfg.noise_eps, float)
    assert cfg.lora_alpha == [2.0, 2.0] and cfg.down_proj_dim is None
    assert SMoREConfig(num_experts=(4, 4), fanout=(2, 2), rank=(8, 8)).rank == [8, 8]


def test_config_is_frozen_and_replace_revalidates():
    cfg = SMoREConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rank = [4, 4]
    changed = dataclasses.replace(cfg, rank=[4, 4], down_proj_dim=0)
    assert changed.rank == [4, 4] and changed.down_proj_dim is None and cfg.rank == [8, 8]
    assert changed.message_dims == [0, 16, 32]
    with pytest.raises(ValueError, match=r"fanout\[0\] must lie in"):
        dataclasses.replace(cfg, num_experts=[1, 4])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(gate_type="switch", noise_eps=0.1),
            "noise_eps=0.1 has no effect: gate_type='switch'",
        ),
        (dict(gate_type="switch", noise_bias=True), "noise_bias=True has no effect"),
        (
            dict(num_experts=[2, 2], fanout=[2, 2], gate_type="dense", balance_loss_weight=0.5),
            "balance_loss_weight=0.5 has no effect: the dense gate has none",
        ),
        (dict(backend="dense", scatter="torch_scatter"), "scatter='torch_scatter' has no effect"),
        (dict(propagation="momor", expert_act="relu"), "expert_act='relu' has no effect"),
        (dict(zero_transition_bias=True, bias=False), "zero_transition_bias=True has no effect"),
        (
            dict(num_experts=[4], fanout=[2], rank=[8], zero_transition_bias=True),
            "zero_transition_bias=True has no effect",
        ),
    ],
)
def test_ignored_options_warn(kwargs, match):
    with pytest.warns(UserWarning, match=match):
        SMoREConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(gate_type="switch"),  # noise_eps left at its default
        dict(propagation="momor", expert_act="identity"),
        dict(init_method="normal", key_init="uniform", zero_transition_bias=True),
        dict(noise_bias=True, noise_eps=0.1),
    ],
)
def test_used_options_do_not_warn(kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SMoREConfig(**kwargs)


def test_derived_counts_come_from_counting():
    cfg = SMoREConfig(num_experts=[3, 4, 5], fanout=[1, 2, 3], rank=[2, 3, 4], shared_pool=False)
    assert cfg.nodes_per_layer == counting.nodes_per_layer(cfg.fanout)
    assert cfg.num_structures == counting.num_structures(cfg.num_experts, cfg.fanout)
    assert cfg.message_dims == counting.message_dims(cfg.num_experts, cfg.rank)


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_shared_rank_must_be_a_non_negative_int(bad):
    with pytest.raises((TypeError, ValueError), match="shared_rank must be an int >= 0"):
        SMoREConfig(shared_rank=bad)


def test_shared_rank_is_off_by_default():
    assert SMoREConfig().shared_rank == 0

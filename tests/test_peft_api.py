"""The PEFT-style API on SMoREModel (issue 11 #1) and what HF passes to it (issue 12 #3, #4, #6).

The done-when test: wrap -> train one step -> save_pretrained -> from_pretrained -> equal
logits; two named adapters switched with set_adapter; disable_adapter() gives base logits.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from peft.utils import register_peft_method

from smore_gnn import SMoREConfig, SMoRELinear
from smore_gnn.hf.model import SMoREModel, get_smore_model
from smore_gnn.hf.save import CONFIG_NAME

try:
    from smore_gnn.hf.testing import byte_tokenizer, tiny_llama
except ImportError:  # before smore_gnn.hf.testing existed
    from smore_gnn.hf.loading import byte_tokenizer, tiny_llama  # noqa: F401

CFG = SMoREConfig(num_experts=[4, 4], fanout=[2, 2], rank=[4, 4], gate_type="switch")
CFG_B = SMoREConfig(num_experts=[3], fanout=[2], rank=[2], gate_type="switch")


def _tiny(seed: int = 0):
    return tiny_llama(hidden_size=32, intermediate_size=64, seed=seed)


def _batch(tokenizer):
    return tokenizer(["hello world", "hi"], return_tensors="pt", padding=True)


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def _train_step(sm, batch, lr=0.5):
    sm.train()
    params = [p for p in sm.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr)
    out = sm(**batch, labels=batch["input_ids"])
    (out.loss + sm.balance_loss()).backward()
    optimizer.step()
    optimizer.zero_grad()


def test_done_when_peft_style_round_trip(tmp_path, capsys):
    model, tokenizer = _tiny()
    batch = _batch(tokenizer)
    base = _logits(model, batch)
    sm = get_smore_model(model, CFG)
    sm.print_trainable_parameters()
    trainable, total = sm.get_nb_trainable_parameters()
    assert capsys.readouterr().out.startswith(f"trainable params: {trainable:,d} || all params")
    _train_step(sm, batch)
    tuned = _logits(sm, batch)
    assert not torch.equal(tuned, base)  # the step moved W_proj away from zero
    sm.save_pretrained(tmp_path)
    loaded = SMoREModel.from_pretrained(_tiny()[0], tmp_path)
    assert torch.equal(_logits(loaded, batch), tuned)
    assert loaded.trainable_parameters() == 0
    trainable_again = SMoREModel.from_pretrained(_tiny()[0], tmp_path, is_trainable=True)
    assert trainable_again.trainable_parameters() == trainable
    with sm.disable_adapter():
        assert torch.equal(_logits(sm, batch), base)
    assert torch.equal(_logits(sm, batch), tuned)


def test_two_named_adapters_switch_and_save_separately(tmp_path):
    model, tokenizer = _tiny()
    batch = _batch(tokenizer)
    base = _logits(model, batch)
    sm = get_smore_model(model, CFG)
    sm.add_adapter("b", CFG_B, target_modules=["up_proj"])
    assert sm.active_adapter == "default" and list(sm.peft_config) == ["default", "b"]
    b_params = [p for n, p in sm.named_parameters() if ".adapters.b." in n]
    assert b_params and not any(p.requires_grad for p in b_params)
    _train_step(sm, batch)
    logits_a = _logits(sm, batch)
    sm.set_adapter("b")
    assert sm.adapted_names == ["model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj"]
    down = model.model.layers[0].mlp.down_proj  # holds only "default": the base output now
    assert down.active_adapter == "b" and list(down.adapters) == ["default"]
    x = torch.randn(3, down.in_features)
    assert torch.equal(down(x), down.base_layer(x))
    _train_step(sm, batch)
    logits_b = _logits(sm, batch)
    assert not torch.equal(logits_a, logits_b) and not torch.equal(logits_b, base)
    sm.save_pretrained(tmp_path / "only_b", selected_adapters=["b"])
    with pytest.raises(FileNotFoundError, match=r"named adapters \['b'\]: pass one of those"):
        SMoREModel.from_pretrained(_tiny()[0], tmp_path / "only_b")
    sm.save_pretrained(tmp_path)  # default at the top, "b" in a subfolder (as peft)
    assert (tmp_path / CONFIG_NAME).is_file() and (tmp_path / "b" / CONFIG_NAME).is_file()
    sm.set_adapter("default")
    assert torch.equal(_logits(sm, batch), logits_a)
    again = SMoREModel.from_pretrained(_tiny()[0], tmp_path)
    again.load_adapter(tmp_path / "b", "b")
    assert torch.equal(_logits(again, batch), logits_a)
    again.set_adapter("b")
    assert torch.equal(_logits(again, batch), logits_b)
    with again.disable_adapter():
        assert torch.equal(_logits(again, batch), base)
    again.delete_adapter("b")
    assert again.active_adapter == "default" and torch.equal(_logits(again, batch), logits_a)
    with pytest.raises(ValueError, match="only adapter"):
        again.delete_adapter("default")


def test_adapter_name_and_set_adapter_errors():
    sm = get_smore_model(_tiny()[0], CFG)
    for bad in ("", "a.b", 3):
        with pytest.raises(ValueError, match="adapter_name must be"):
            sm.add_adapter(bad, CFG)
    with pytest.raises(ValueError, match="already exists"):
        sm.add_adapter("default", CFG)
    with pytest.raises(ValueError, match=r"No adapter named 'x' \(adapters: \['default'\]\)"):
        sm.set_adapter("x")
    with pytest.raises(ValueError, match="method must be one of"):
        sm.add_adapter("lora", CFG, method="lora")


def test_disable_adapter_flips_a_flag_without_swapping_modules():
    model, tokenizer = _tiny()
    sm = get_smore_model(model, CFG)
    layer = model.model.layers[0].mlp.up_proj
    calls = []
    layer.register_forward_hook(lambda *_: calls.append(1))  # survives: no module swapping
    with sm.disable_adapter():
        assert model.model.layers[0].mlp.up_proj is layer and layer.disable_adapters
        sm(**_batch(tokenizer))
        assert float(sm.balance_loss()) == 0.0
    assert not layer.disable_adapters and calls == [1]


def test_merge_is_rejected_with_the_reason():
    sm = get_smore_model(_tiny()[0], CFG)
    for call in (sm.merge_and_unload, sm.merge_adapter):
        with pytest.raises(TypeError, match="routed to its own experts.*depends on the input"):
            call()
    base = sm.unload()
    assert not any(isinstance(m, SMoRELinear) for m in base.modules())


def test_peft_register_peft_method_cannot_host_smore():
    """peft 0.21 only registers names already in its PeftType enum (no patching allowed)."""
    with pytest.raises(ValueError, match="Unknown PEFT type SMORE.*PeftType"):
        register_peft_method(name="smore", config_cls=object, model_cls=SMoREModel)


# ---- masks as HF passes them (issue 12 #6) ----------------------------------------------


def test_positional_and_bool_masks_keep_padding_out_of_the_statistics():
    model, tokenizer = _tiny()
    sm = get_smore_model(model, CFG)
    batch = _batch(tokenizer)
    valid = int(batch["attention_mask"].sum())
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for call in (
        lambda: sm(ids, mask),  # the mask as the 2nd positional argument
        lambda: sm(input_ids=ids, attention_mask=mask.bool()),
        lambda: sm(input_ids=ids, attention_mask=mask.float()),
    ):
        call()
        for layer in sm.adapters().values():
            assert float(layer.last_routing.load[-1].sum()) == valid * CFG.fanout[-1]
    sm(ids)
    layer = next(iter(sm.adapters().values()))
    assert float(layer.last_routing.load[-1].sum()) == ids.numel() * CFG.fanout[-1]


def test_padding_content_does_not_change_the_balance_loss():
    model, tokenizer = _tiny()
    torch.manual_seed(0)
    sm = get_smore_model(model, CFG).train()
    batch = _batch(tokenizer)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    other = ids.masked_fill(mask == 0, 77)  # different tokens under the padding
    losses = []
    for input_ids in (ids, other):
        sm(input_ids, mask)
        losses.append(sm.balance_loss().detach())
    assert (ids != other).any()
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=0)


def test_bad_masks_are_rejected_with_the_fix():
    model, tokenizer = _tiny()
    sm = get_smore_model(model, CFG)
    batch = _batch(tokenizer)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    additive = (1.0 - mask.float()) * torch.finfo(torch.float32).min
    with pytest.raises(ValueError, match=r"0/1 or bools.*additive.*\(mask == 0\)"):
        sm(input_ids=ids, attention_mask=additive)
    with pytest.raises(ValueError, match="2-D attention_mask.*4-D"):
        sm(input_ids=ids, attention_mask=mask[:, None, None, :].bool())
    with pytest.raises(ValueError, match="not transposed"):
        sm(input_ids=ids, attention_mask=mask.T)
    with pytest.raises(TypeError, match="torch.Tensor"):
        sm(input_ids=ids, attention_mask=mask.tolist())


def test_generate_with_padding_and_cache_routes_new_tokens_only():
    model, tokenizer = _tiny()
    batch = _batch(tokenizer)
    with torch.no_grad():
        greedy = model.generate(**batch, max_new_tokens=3, do_sample=False)
    sm = get_smore_model(model, CFG)
    with torch.no_grad():
        assert torch.equal(sm.generate(**batch, max_new_tokens=3, do_sample=False), greedy)


# ---- gradient checkpointing (issue 12 #3, #4) -------------------------------------------


def _enable_checkpointing(model, mode: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the transformers 5 alias
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": mode == "reentrant"}
        )


def _grads(checkpointing: str | None, gate: str) -> dict[str, torch.Tensor]:
    model, tokenizer = _tiny()
    torch.manual_seed(0)
    sm = get_smore_model(model, SMoREConfig(rank=[4, 4], gate_type=gate))
    with torch.no_grad():
        for p in sm.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    if checkpointing is not None:
        _enable_checkpointing(sm, checkpointing)
    sm.train()
    batch = _batch(tokenizer)
    calls = []
    model.model.layers[0].mlp.up_proj.register_forward_hook(lambda *_: calls.append(1))
    torch.manual_seed(1)
    out = sm(**batch, labels=batch["input_ids"])
    balance = sm.balance_loss()
    (out.loss + balance).backward()
    assert float(balance.detach()) > 0
    assert len(calls) == (1 if checkpointing is None else 2)  # recomputed in the backward
    return {n: p.grad for n, p in sm.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("gate", ["switch", "noisy_topk"])
@pytest.mark.parametrize("mode", ["reentrant", "non_reentrant"])
def test_gradient_checkpointing_gives_the_same_gradients(mode, gate):
    plain, checkpointed = _grads(None, gate), _grads(mode, gate)
    assert plain.keys() == checkpointed.keys()
    router = [n for n in plain if ".router." in n]
    assert router and all(plain[n] is not None and plain[n].abs().sum() > 0 for n in router)
    for name, grad in plain.items():
        assert checkpointed[name] is not None, name
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


# ---- folders of smore-gnn 0.1 still load ------------------------------------------------


def _save_like_0_1(sm, directory):
    """The 0.1 writer (save.save_adapter before the atomic save), kept as a fixture."""
    from safetensors.torch import save_file

    from smore_gnn.hf.save import WEIGHTS_NAME, adapter_parameters

    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "method": "smore",
        "base_model_name_or_path": None,
        "target_modules": ["gate_proj", "up_proj", "down_proj"],
        "exclude_modules": None,
        "adapted_modules": sorted(sm.adapted_names),
        "smore_config": sm.smore_config.to_dict(),
        "smore_gnn_version": "0.1.0",
    }
    params = adapter_parameters(sm.adapters())
    tensors = {k: p.detach().cpu().contiguous() for k, p in params.items()}
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "method": "smore"})
    (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def test_folders_written_by_0_1_still_load(tmp_path):
    model, tokenizer = _tiny()
    batch = _batch(tokenizer)
    sm = get_smore_model(model, CFG)
    _train_step(sm, batch)
    _save_like_0_1(sm, tmp_path / "old")
    loaded = SMoREModel.from_pretrained(_tiny()[0], tmp_path / "old")
    assert torch.equal(_logits(loaded, batch), _logits(sm, batch))
    loaded.save_pretrained(tmp_path / "new")  # today's format is the 0.1 format
    old, new = (json.loads((tmp_path / d / CONFIG_NAME).read_text()) for d in ("old", "new"))
    assert {k: v for k, v in old.items() if k != "smore_gnn_version"} == {
        k: v for k, v in new.items() if k != "smore_gnn_version"
    }


def test_noisy_topk_folders_of_0_1_keep_their_noise_bias(tmp_path):
    """0.1 wrote no ``noise_bias`` key and its noisy top-k router had a noise bias (issue 9)."""
    model, tokenizer = _tiny()
    batch = _batch(tokenizer)
    cfg = SMoREConfig(num_experts=[4, 4], fanout=[2, 2], rank=[4, 4], noise_bias=True)
    sm = get_smore_model(model, cfg)
    _train_step(sm, batch)
    _save_like_0_1(sm, tmp_path / "old")
    path = tmp_path / "old" / CONFIG_NAME
    meta = json.loads(path.read_text())
    new_fields = ("noise_bias", "key_init", "zero_transition_bias")
    meta["smore_config"] = {k: v for k, v in meta["smore_config"].items() if k not in new_fields}
    path.write_text(json.dumps(meta))
    loaded = SMoREModel.from_pretrained(_tiny()[0], tmp_path / "old")
    assert loaded.smore_config.noise_bias
    assert torch.equal(_logits(loaded, batch), _logits(sm, batch))


# ---- adapters inside the layer, per name (peft's way) -----------------------------------


def test_every_adapter_lives_in_its_layer_and_follows_to_and_train():
    model, tokenizer = _tiny()
    sm = get_smore_model(model, CFG)
    sm.add_adapter("b", CFG_B, target_modules=["up_proj"])
    assert type(sm)._apply is torch.nn.Module._apply and type(sm).train is torch.nn.Module.train
    slot = model.model.layers[0].mlp.up_proj
    assert list(slot.adapters) == ["default", "b"] and slot.active_adapter == "default"
    sm.eval()
    assert not slot.adapters["b"].training  # inactive adapters follow train()/eval()
    sm.to(torch.float64)
    assert slot.adapters["b"].proj.weight.dtype == torch.float64  # ... and .to()
    assert slot.base_layer.weight.dtype == torch.float64
    keys = [k for k in sm.state_dict() if k.startswith("model.model.layers.0.mlp.up_proj.")]
    assert [k for k in keys if k.endswith("base_layer.weight")] == [
        "model.model.layers.0.mlp.up_proj.base_layer.weight"  # the base weight once
    ]
    sm.set_adapter("b")
    assert model.model.layers[0].mlp.up_proj is slot and slot.active_adapter == "b"
    sm.delete_adapter("default")  # the slots that held only "default" get their base back
    assert list(slot.adapters) == ["b"] and sm.active_adapter == "b"
    assert type(model.model.layers[0].mlp.down_proj) is torch.nn.Linear
    assert sm.adapted_names == list(sm.adapters())


def test_adapter_names_the_layer_dict_cannot_hold_are_refused_first():
    model, _ = _tiny()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for bad in ("to", "keys", "training"):
        with pytest.raises(ValueError, match="nn.ModuleDict attribute"):
            get_smore_model(model, CFG, adapter_name=bad)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


# ---- a failed wrap or load leaves the base model as it was ------------------------------


def _state(model):
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    return grads, {n: type(m) for n, m in model.named_modules()}


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(config=CFG, target_modules=["mlp_in"]),  # matches nothing
        dict(config={"rank": 8}),  # a dict, not an SMoREConfig
        dict(config=CFG, adapter_name="a.b"),
        dict(config=CFG, method="lora"),
    ],
    ids=["no_match", "dict_config", "dotted_name", "lora_method"],
)
def test_a_failed_get_smore_model_leaves_the_model_unchanged(kwargs):
    model, tokenizer = _tiny()
    before = _state(model)
    assert all(before[0].values())
    with pytest.raises((ValueError, TypeError)):
        get_smore_model(model, **kwargs)
    assert _state(model) == before
    get_smore_model(model, CFG)  # and it can be wrapped afterwards


def test_an_error_while_injecting_restores_modules_and_flags(monkeypatch):
    from smore_gnn.hf.layer import AdaptedLinear

    model, _ = _tiny()
    before = _state(model)
    calls, add = [], AdaptedLinear.add_adapter

    def fail_third(self, name, adapter):
        calls.append(name)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        add(self, name, adapter)

    monkeypatch.setattr(AdaptedLinear, "add_adapter", fail_third)
    with pytest.raises(RuntimeError, match="out of memory"):
        get_smore_model(model, CFG)
    assert _state(model) == before
    monkeypatch.setattr(AdaptedLinear, "add_adapter", add)
    sm = get_smore_model(model, CFG)
    calls.clear()
    monkeypatch.setattr(AdaptedLinear, "add_adapter", fail_third)
    with pytest.raises(RuntimeError, match="out of memory"):
        sm.add_adapter("b", CFG_B)  # a failed add_adapter leaves the other adapters alone
    assert list(sm.peft_config) == ["default"]
    assert all(list(s.adapters) == ["default"] for s in sm._slots().values())


def test_a_failed_from_pretrained_leaves_the_model_unchanged(tmp_path, monkeypatch):
    from smore_gnn.hf import adapters

    sm = get_smore_model(_tiny()[0], CFG)
    sm.save_pretrained(tmp_path)
    model, _ = _tiny()
    before = _state(model)
    with pytest.raises(ValueError, match="adapter_name must be"):
        SMoREModel.from_pretrained(model, tmp_path, adapter_name="a.b")
    assert _state(model) == before

    def broken(*args, **kwargs):
        raise RuntimeError("disk error")

    monkeypatch.setattr(adapters, "copy_in", broken)
    with pytest.raises(RuntimeError, match="disk error"):
        SMoREModel.from_pretrained(model, tmp_path)
    assert _state(model) == before
    wrapped = _state(sm.model)
    with pytest.raises(RuntimeError, match="disk error"):
        sm.load_adapter(tmp_path, "c")  # a new name: injected, then taken out again
    assert _state(sm.model) == wrapped and list(sm.peft_config) == ["default"]


def test_save_pretrained_checks_every_name_before_writing(tmp_path):
    model, tokenizer = _tiny()
    sm = get_smore_model(model, CFG)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"No adapters named \['nope'\].*nothing was saved"):
        sm.save_pretrained(out, selected_adapters=["default", "nope"])
    assert not out.exists()
    sm.save_pretrained(out)
    saved = (out / "adapter_model.safetensors").read_bytes()
    _train_step(sm, _batch(tokenizer))
    with pytest.raises(ValueError, match=r"No adapters named \['nope'\]"):
        sm.save_pretrained(out, selected_adapters=["default", "nope"])
    assert (out / "adapter_model.safetensors").read_bytes() == saved  # not overwritten
    with pytest.raises(TypeError, match="selected_adapters must be a list of adapter names"):
        sm.save_pretrained(out, selected_adapters="default")


# ---- the attention mask applies to exactly the forward it came with ---------------------


def _two_batches(tokenizer):
    a = tokenizer(["hello world", "hi"], return_tensors="pt", padding=True)
    b = tokenizer(["hi", "hello world"], return_tensors="pt", padding=True)
    assert a["input_ids"].shape == b["input_ids"].shape  # same shape, other padding
    return a, b


def _randomized(model):
    sm = get_smore_model(model, CFG)
    with torch.no_grad():
        for p in sm.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    return sm


def test_a_direct_call_of_the_inner_decoder_uses_no_earlier_mask():
    model, tokenizer = _tiny()
    sm = _randomized(model).eval()
    decoder = model.model  # the inner LlamaModel: its calls do not go through the wrapper
    a, b = _two_batches(tokenizer)
    longer = tokenizer(["a longer text", "x", "y"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = decoder(input_ids=b["input_ids"]).last_hidden_state
        sm(**a)
        got = decoder(input_ids=b["input_ids"]).last_hidden_state
        assert torch.equal(got, expected)  # a's mask would mark b's real tokens as padding
        decoder(**longer)  # a correct mask of another shape is no error
        sm(**a)
        base = sm.unload()
        with pytest.raises(ValueError, match="was unloaded.*get_smore_model"):
            sm.set_adapter("default")
        base.model(**longer)  # the base model keeps no mask either


def test_a_failed_forward_leaves_no_mask_behind():
    model, tokenizer = _tiny()
    sm = _randomized(model).eval()
    decoder = model.model
    a, b = _two_batches(tokenizer)
    with torch.no_grad():
        expected = decoder(input_ids=b["input_ids"]).last_hidden_state

        def stop(*args):
            raise RuntimeError("stopped mid-forward")

        handle = model.model.layers[1].register_forward_hook(stop)
        with pytest.raises(RuntimeError, match="stopped mid-forward"):
            sm(**a)  # the mask was published, then the forward raised
        handle.remove()
        assert torch.equal(decoder(input_ids=b["input_ids"]).last_hidden_state, expected)


def _decoder_grads(after_top_level_forward: bool) -> dict[str, torch.Tensor]:
    model, tokenizer = _tiny()
    sm = _randomized(model)
    _enable_checkpointing(sm, "non_reentrant")
    sm.train()
    a, b = _two_batches(tokenizer)
    if after_top_level_forward:
        with torch.no_grad():
            sm(**a)
    calls = []
    model.model.layers[0].mlp.up_proj.register_forward_hook(lambda *_: calls.append(1))
    torch.manual_seed(1)
    hidden = model.model(input_ids=b["input_ids"]).last_hidden_state
    hidden.square().sum().backward()
    assert len(calls) == 2  # the forward and its recomputation in the backward
    return {n: p.grad for n, p in sm.named_parameters() if p.requires_grad}


def test_under_checkpointing_a_direct_decoder_call_uses_no_earlier_mask():
    clean, after = _decoder_grads(False), _decoder_grads(True)
    assert clean.keys() == after.keys()
    for name, grad in clean.items():
        torch.testing.assert_close(after[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def _loss(sm, batch):
    out = sm(**batch, labels=batch["input_ids"])
    return out.loss + sm.balance_loss()


def _interleaved_grads(
    checkpointing: str | None, between: str, before_wrapping: bool = False
) -> dict[str, torch.Tensor]:
    """Forward a; then an evaluation forward of b, or b as a second micro-batch; backwards."""
    model, tokenizer = _tiny()
    if checkpointing is not None and before_wrapping:
        _enable_checkpointing(model, checkpointing)
    sm = _randomized(model)
    if checkpointing is not None and not before_wrapping:
        _enable_checkpointing(sm, checkpointing)
    sm.train()
    a, b = _two_batches(tokenizer)  # same shape, other padding: other masks
    losses = [_loss(sm, a)]
    if between == "eval_batch":
        sm.eval()
        with torch.no_grad():
            sm(**b)
        sm.train()
    else:
        losses.append(_loss(sm, b))
    for loss in losses:
        loss.backward()
    return {n: p.grad for n, p in sm.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("between", ["eval_batch", "micro_batch"])
@pytest.mark.parametrize("mode", ["reentrant", "non_reentrant"])
def test_a_forward_between_a_checkpointed_forward_and_its_backward_changes_no_gradient(
    mode, between
):
    plain, checkpointed = _interleaved_grads(None, between), _interleaved_grads(mode, between)
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        assert checkpointed[name] is not None, name
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_enabled_before_wrapping_is_recorded_and_unload_unwraps_it():
    from smore_gnn.nn.checkpoint import RecordingCheckpoint

    plain = _interleaved_grads(None, "micro_batch")
    checkpointed = _interleaved_grads("non_reentrant", "micro_batch", before_wrapping=True)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    model, tokenizer = _tiny()
    _enable_checkpointing(model, "non_reentrant")
    layer = model.model.layers[0]
    original = layer._gradient_checkpointing_func
    sm = get_smore_model(model, CFG).train()
    _loss(sm, _batch(tokenizer)).backward()
    assert isinstance(layer._gradient_checkpointing_func, RecordingCheckpoint)
    assert layer._gradient_checkpointing_func.checkpoint_fn is original
    assert sm.unload() is model and layer._gradient_checkpointing_func is original

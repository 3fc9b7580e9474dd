"""adapter_config.json + adapter_model.safetensors: exact round trip, shared pools, errors,
atomic re-save (issue 12 #1), failed loads change nothing (#10), unknown methods refused (#15)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from smore_gnn import SMoREConfig, SMoRELinear
from smore_gnn.hf import save as folder
from smore_gnn.hf.model import SMoREModel, get_smore_model
from smore_gnn.hf.save import CONFIG_NAME, WEIGHTS_NAME
from smore_gnn.hf.testing import tiny_llama


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
    sm.save_pretrained(tmp_path)
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
    loaded = SMoREModel.from_pretrained(_tiny()[0], tmp_path)
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
    loaded = SMoREModel.from_pretrained(_tiny()[0], tmp_path, is_trainable=True)
    assert loaded.trainable_parameters() == sum(
        p.numel() for p in sm.parameters() if p.requires_grad
    )
    fresh = get_smore_model(_tiny()[0], sm.smore_config)
    fresh.load_adapter(tmp_path, "default")  # an SMoREModel is overwritten in place
    for (name, a), b in zip(fresh.named_parameters(), sm.parameters()):
        assert torch.equal(a, b), name


def test_missing_and_corrupt_files(tmp_path):
    model, _ = _tiny()
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        SMoREModel.from_pretrained(model, tmp_path / "nowhere")
    _adapted(tmp_path)
    before = _state(model)
    (tmp_path / WEIGHTS_NAME).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match="corrupt"):
        SMoREModel.from_pretrained(model, tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        SMoREModel.from_pretrained(model, tmp_path)
    (tmp_path / CONFIG_NAME).write_text('{"method": "smore", "smore_config": {"rank": 0}}')
    with pytest.raises(ValueError, match="unreadable"):
        SMoREModel.from_pretrained(model, tmp_path)
    assert not any(isinstance(m, SMoRELinear) for m in model.modules())
    after = _state(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_adapter_that_does_not_fit_changes_nothing(tmp_path):
    _adapted(tmp_path, hidden=32, layers=2)
    for model in (_tiny(hidden=16)[0], _tiny(layers=1)[0]):
        before = _state(model)
        match = "does not fit" if model.config.num_hidden_layers == 2 else "expects an nn.Linear"
        with pytest.raises(ValueError, match=match):
            SMoREModel.from_pretrained(model, tmp_path)
        assert not any(isinstance(m, SMoRELinear) for m in model.modules())
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_wrong_targets_for_an_adapted_model(tmp_path):
    _adapted(tmp_path)
    other = get_smore_model(_tiny()[0], SMoREConfig(rank=[2, 2]))
    with pytest.raises(ValueError, match="has config"):
        other.load_adapter(tmp_path, "default")
    with pytest.raises(ValueError, match="expects a base model"):
        SMoREModel.from_pretrained(other.model, tmp_path)


# ---- atomic folder save (issue 12 #1) ---------------------------------------------------


def _logits(model, tokenizer):
    batch = tokenizer(["hello world", "hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model.eval()(**batch).logits


def _other_weights(sm):
    with torch.no_grad():
        for p in sm.parameters():
            if p.requires_grad:
                p.add_(1.0)


@pytest.mark.parametrize("fail_at", ["write", "rename 1", "rename 2", "rename 3"])
def test_failed_resave_keeps_the_old_adapter_and_other_files(tmp_path, monkeypatch, fail_at):
    """Re-saving moves metrics.json over (rename 1), puts the old folder aside (rename 2) and
    the new one in (rename 3); a failure at any step leaves the old adapter in place."""
    out = tmp_path / "adapter"
    sm, tokenizer = _adapted(out)
    (out / "metrics.json").write_text("{}")
    expected = _logits(SMoREModel.from_pretrained(_tiny()[0], out), tokenizer)
    _other_weights(sm)
    calls, rename = [], os.rename

    def failing_rename(src, dst):
        calls.append(1)
        if fail_at == f"rename {len(calls)}":
            raise OSError("disk full")
        rename(src, dst)

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(folder.os, "rename", failing_rename)
    if fail_at == "write":
        monkeypatch.setattr(folder, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        sm.save_pretrained(out)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temp folder left
    assert (out / "metrics.json").read_text() == "{}"
    assert torch.equal(_logits(SMoREModel.from_pretrained(_tiny()[0], out), tokenizer), expected)
    sm.save_pretrained(out)  # a retry replaces it
    assert torch.equal(
        _logits(SMoREModel.from_pretrained(_tiny()[0], out), tokenizer), _logits(sm, tokenizer)
    )
    assert (out / "metrics.json").read_text() == "{}"


_KILLED_SAVE = """
import os, sys, torch
from smore_gnn.hf import save as folder
from smore_gnn.hf.model import SMoREModel
from smore_gnn.hf.testing import tiny_llama
out, kill_at = sys.argv[1], int(sys.argv[2])
sm = SMoREModel.from_pretrained(tiny_llama(hidden_size=32, intermediate_size=64)[0], out)
with torch.no_grad():
    for p in sm.parameters():
        p.add_(1.0)
calls, rename = [], os.rename
def killed(src, dst):
    calls.append(1)
    if len(calls) == kill_at:
        os._exit(9)  # like SIGKILL: no cleanup runs
    rename(src, dst)
folder.os.rename = killed
sm.save_pretrained(out)
"""


@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_killed_resave_never_leaves_a_mix(tmp_path, kill_at):
    out = tmp_path / "adapter"
    _, tokenizer = _adapted(out)
    (out / "metrics.json").write_text("{}")
    expected = _logits(SMoREModel.from_pretrained(_tiny()[0], out), tokenizer)
    run = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(out), str(kill_at)], check=False)
    assert run.returncode == 9
    if kill_at < 3:  # killed before the old folder moved: it is intact
        loaded = SMoREModel.from_pretrained(_tiny()[0], out)
        assert torch.equal(_logits(loaded, tokenizer), expected)
    else:  # killed between the two renames: no folder, and the error says where the old one is
        with pytest.raises(FileNotFoundError, match=r"previous adapter in .*\.adapter\.old-"):
            SMoREModel.from_pretrained(_tiny()[0], out)
        (backup,) = tmp_path.glob(".adapter.old-*")
        os.rename(backup, out)
        loaded = SMoREModel.from_pretrained(_tiny()[0], out)
        assert torch.equal(_logits(loaded, tokenizer), expected)


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    run = [sys.executable, "-c", "import os; print(os.getpid())"]
    return int(subprocess.run(run, capture_output=True, text=True, check=True).stdout)


def _siblings(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_next_save_cleans_up_after_a_killed_save(tmp_path, kill_at):
    """Killed before carrying metrics.json (1), after it (2), between the renames (3): the next
    save removes the temp folder, metrics.json survives, the new adapter is saved."""
    out = tmp_path / "adapter"
    sm, tokenizer = _adapted(out)
    (out / "metrics.json").write_text('{"loss": 1}')
    run = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(out), str(kill_at)], check=False)
    assert run.returncode == 9
    assert any(".adapter.saving-" in name for name in _siblings(tmp_path))
    _other_weights(sm)
    sm.save_pretrained(out)
    assert _siblings(tmp_path) == ["adapter"]
    assert sorted(os.listdir(out)) == sorted([CONFIG_NAME, WEIGHTS_NAME, "metrics.json"])
    assert (out / "metrics.json").read_text() == '{"loss": 1}'
    loaded = SMoREModel.from_pretrained(_tiny()[0], out)
    assert torch.equal(_logits(loaded, tokenizer), _logits(sm, tokenizer))


def test_stale_cleanup_touches_only_dead_saves_of_this_target(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    out = tmp_path / "adapter"
    stale = [f".adapter.saving-{dead}-0123abcd", f".adapter.saving-{dead}-89ef4567"]
    kept = [
        f".adapter.saving-{alive}-0123abcd",  # its process still runs: maybe a save in progress
        f".adapter2.saving-{dead}-0123abcd",  # another target
        f".adapter.saving-{dead}-0123ABCD",  # not the pattern atomic_folder writes
        f".adapter.saving-{dead}-0123abcd.bak",
        "adapter.saving-1-0123abcd",
    ]
    backup = f".adapter.old-{dead}-fedcba98"  # a 0.2 backup: superseded by the next save
    for name in [*stale, *kept, backup]:
        (tmp_path / name).mkdir()
        (tmp_path / name / WEIGHTS_NAME).write_bytes(b"partial")
    (tmp_path / stale[1] / "notes.txt").write_text("carried")  # out does not exist yet
    sm, _ = _adapted(out)
    assert _siblings(tmp_path) == sorted(["adapter", stale[1], *kept])
    assert sorted(os.listdir(tmp_path / stale[1])) == [WEIGHTS_NAME, "notes.txt"]  # no home yet
    (tmp_path / "adapter" / "metrics.json").write_text("{}")
    assert folder.recover_killed_saves(out) == [tmp_path / stale[1]]  # now it has a home
    assert (out / "notes.txt").read_text() == "carried"
    assert (out / "metrics.json").read_text() == "{}"
    assert _siblings(tmp_path) == sorted(["adapter", *kept])
    for name in kept:
        assert (tmp_path / name / WEIGHTS_NAME).read_bytes() == b"partial"


def test_own_pid_counts_as_alive_only_for_saves_in_flight(tmp_path):
    """A restarted job often has the killed one's pid (PID 1 in a container)."""
    out, mine = tmp_path / "adapter", f".adapter.saving-{os.getpid()}-0123abcd"
    (tmp_path / mine).mkdir()  # killed before it wrote anything
    seen = []

    def write(tmp):
        seen.append(folder.recover_killed_saves(out))  # a second look while this save runs
        assert tmp.is_dir() and re.fullmatch(
            rf"\.adapter\.saving-\d+T\d+Z-{os.getpid()}-\w{{8}}", tmp.name
        )
        (tmp / CONFIG_NAME).write_text("{}")
        (tmp / WEIGHTS_NAME).write_bytes(b"new")

    folder.atomic_folder(out, write)
    assert seen == [[tmp_path / mine]]  # the stale one went, the running one stayed
    assert _siblings(tmp_path) == ["adapter"]
    assert (out / WEIGHTS_NAME).read_bytes() == b"new"


def test_save_into_a_file_or_the_working_directory_is_refused(tmp_path, monkeypatch):
    sm, _ = _adapted(tmp_path / "a")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="Expected a folder"):
        sm.save_pretrained(tmp_path / "file")
    monkeypatch.chdir(tmp_path / "a")
    for where in (".", "..", tmp_path / "a"):
        with pytest.raises(ValueError, match="other than the working directory.*subfolder"):
            sm.save_pretrained(where)
    sm.save_pretrained("sub")
    assert (tmp_path / "a" / "sub" / CONFIG_NAME).is_file()


# ---- failed loads change nothing (#10), unknown methods (#15) ---------------------------


def test_config_without_target_modules_fails_before_injection_and_retry_works(tmp_path):
    sm, tokenizer = _adapted(tmp_path)
    good = (tmp_path / CONFIG_NAME).read_text()
    meta = json.loads(good)
    del meta["target_modules"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    model, _ = _tiny()
    before = _state(model)
    with pytest.raises(ValueError, match=r"missing keys \['target_modules'\]"):
        SMoREModel.from_pretrained(model, tmp_path)
    assert not any(isinstance(m, SMoRELinear) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for bad in ({"target_modules": 3}, {"adapted_modules": []}, {"method": "mixlora"}):
        (tmp_path / CONFIG_NAME).write_text(json.dumps({**json.loads(good), **bad}))
        with pytest.raises(ValueError, match="unreadable"):
            SMoREModel.from_pretrained(model, tmp_path)
    (tmp_path / CONFIG_NAME).write_text(good)
    loaded = SMoREModel.from_pretrained(model, tmp_path)  # the retry on the same model works
    assert torch.equal(_logits(loaded, tokenizer), _logits(sm, tokenizer))


def test_unknown_method_is_refused_at_build_and_at_save(tmp_path):
    model, _ = _tiny()
    with pytest.raises(ValueError, match=r"method must be one of \['smore', 'molre'\]"):
        get_smore_model(model, SMoREConfig(rank=[2, 2]), method="mixlora")
    assert not any(isinstance(m, SMoRELinear) for m in model.modules())
    sm = get_smore_model(model, SMoREConfig(rank=[2, 2]))
    sm.peft_config["default"] = replace(sm.peft_config["default"], method="mixlora")
    with pytest.raises(ValueError, match="method must be one of"):
        sm.save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x").exists()

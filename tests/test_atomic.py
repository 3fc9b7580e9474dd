"""Atomic folder saves into mount points, across filesystems and through symlinks, and the
backups that interrupted saves leave (smore_gnn/hf/atomic.py)."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from smore_gnn.hf import atomic
from smore_gnn.hf.model import SMoREModel
from smore_gnn.hf.save import CONFIG_NAME, WEIGHTS_NAME, read_adapter_config
from tests.test_save import _adapted, _logits, _other_weights, _tiny


def _writer(config: str, weights: bytes):
    def write(tmp: Path) -> None:
        (tmp / CONFIG_NAME).write_text(config)
        (tmp / WEIGHTS_NAME).write_bytes(weights)

    return write


def _contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_bytes().decode() for p in sorted(folder.iterdir())}


def _within(path, folder: Path) -> bool:
    path = Path(path)
    return path == folder or folder in path.parents


# ---- the target cannot be renamed: mount points, other filesystems -------------------


def test_busy_target_is_saved_inside_it(tmp_path, monkeypatch):
    """Renaming a mount point fails with EBUSY: the save writes inside the folder instead."""
    out = tmp_path / "adapter"
    sm, tokenizer = _adapted(out)
    (out / "metrics.json").write_text("{}")
    _other_weights(sm)
    rename = os.rename

    def busy(src, dst):
        if Path(src) == out:
            raise OSError(errno.EBUSY, "Device or resource busy", str(src))
        rename(src, dst)

    monkeypatch.setattr(os, "rename", busy)
    sm.save_pretrained(out)
    monkeypatch.undo()
    assert sorted(os.listdir(out)) == sorted([CONFIG_NAME, WEIGHTS_NAME, "metrics.json"])
    assert sorted(os.listdir(tmp_path)) == ["adapter"]
    loaded = SMoREModel.from_pretrained(_tiny()[0], out)
    assert torch.equal(_logits(loaded, tokenizer), _logits(sm, tokenizer))


def test_target_on_another_filesystem_is_saved_inside_it(tmp_path, monkeypatch):
    """A rename between the target and its parent fails with EXDEV (another filesystem)."""
    out = tmp_path / "adapter"
    atomic.atomic_folder(out, _writer("{}", b"old"))
    (out / "metrics.json").write_text("{}")
    rename = os.rename

    def cross_device(src, dst):
        if _within(src, out) != _within(dst, out):
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src), None, str(dst))
        rename(src, dst)

    monkeypatch.setattr(os, "rename", cross_device)
    assert atomic.probe_save(out) == out  # the upfront check finds the way the save takes
    atomic.atomic_folder(out, _writer('{"new": 1}', b"new"))
    monkeypatch.undo()
    assert _contents(out) == {CONFIG_NAME: '{"new": 1}', WEIGHTS_NAME: "new", "metrics.json": "{}"}
    assert sorted(os.listdir(tmp_path)) == ["adapter"]


def test_probe_names_the_folder_when_no_save_can_work(tmp_path, monkeypatch):
    out = tmp_path / "adapter"
    out.mkdir()

    def read_only(src, dst):
        raise OSError(errno.EROFS, "Read-only file system", str(src))

    monkeypatch.setattr(os, "rename", read_only)
    with pytest.raises(OSError, match=r"Expected a folder an adapter can be saved in \(got .*"):
        atomic.probe_save(out)
    monkeypatch.undo()
    assert os.listdir(out) == [] and sorted(os.listdir(tmp_path)) == ["adapter"]


def test_save_into_a_real_mount_point(tmp_path, mount_point):
    sm, tokenizer = _adapted(tmp_path / "first")
    assert atomic.probe_save(mount_point) == mount_point
    sm.save_pretrained(mount_point)  # an empty mount point, as a container volume
    (mount_point / "metrics.json").write_text("{}")
    _other_weights(sm)
    sm.save_pretrained(mount_point)
    assert os.path.ismount(mount_point)
    assert sorted(os.listdir(mount_point)) == sorted([CONFIG_NAME, WEIGHTS_NAME, "metrics.json"])
    assert sorted(os.listdir(tmp_path)) == ["first", "volume"]
    loaded = SMoREModel.from_pretrained(_tiny()[0], mount_point)
    assert torch.equal(_logits(loaded, tokenizer), _logits(sm, tokenizer))


# ---- symlinks -------------------------------------------------------------------------


def test_save_through_a_symlink_keeps_the_link_and_fills_its_target(tmp_path):
    real, link = tmp_path / "real", tmp_path / "link"
    sm, tokenizer = _adapted(real)
    (real / "notes.txt").write_text("mine")
    link.symlink_to(real)
    _other_weights(sm)
    sm.save_pretrained(link)
    assert link.is_symlink() and link.resolve() == real
    assert sorted(os.listdir(real)) == sorted([CONFIG_NAME, WEIGHTS_NAME, "notes.txt"])
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]
    loaded = SMoREModel.from_pretrained(_tiny()[0], real)
    assert torch.equal(_logits(loaded, tokenizer), _logits(sm, tokenizer))


def test_save_through_a_symlink_to_another_filesystem(tmp_path):
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    other = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        if os.stat(other).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm is on the same filesystem as the test folder")
        (other / "metrics.json").write_text("{}")
        link = tmp_path / "adapter"
        link.symlink_to(other)
        assert atomic.probe_save(link) == other
        atomic.atomic_folder(link, _writer("{}", b"new"))
        assert link.is_symlink() and link.resolve() == other
        assert _contents(other) == {CONFIG_NAME: "{}", WEIGHTS_NAME: "new", "metrics.json": "{}"}
        assert sorted(os.listdir(tmp_path)) == ["adapter"]
        assert sorted(p.name for p in other.parent.iterdir() if other.name in p.name) == [
            other.name
        ]
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_dangling_symlink_is_refused(tmp_path):
    link = tmp_path / "adapter"
    link.symlink_to(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"a symlink to the missing .*missing"):
        atomic.atomic_folder(link, _writer("{}", b"new"))
    assert link.is_symlink() and not (tmp_path / "missing").exists()


# ---- interrupted saves and their backups ----------------------------------------------


def _interrupt_removal_of(monkeypatch, weights: bytes) -> None:
    """Ctrl-C while the backup holding ``weights`` is being deleted (the save itself is done)."""
    rmtree = shutil.rmtree

    def interrupted(path, *args, **kwargs):
        file = Path(path) / WEIGHTS_NAME
        if file.is_file() and file.read_bytes() == weights:
            raise KeyboardInterrupt
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", interrupted)


def _backups(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name != "adapter")


def test_interrupted_removals_leave_at_most_one_backup_and_the_next_save_removes_it(
    tmp_path, monkeypatch
):
    out = tmp_path / "adapter"
    atomic.atomic_folder(out, _writer("{}", b"w0"))
    for step in range(1, 6):
        _interrupt_removal_of(monkeypatch, f"w{step - 1}".encode())
        with pytest.raises(KeyboardInterrupt):
            atomic.atomic_folder(out, _writer("{}", f"w{step}".encode()))
        monkeypatch.undo()
        assert (out / WEIGHTS_NAME).read_bytes() == f"w{step}".encode()  # the save completed
        assert len(_backups(tmp_path)) <= 1, _backups(tmp_path)
    atomic.atomic_folder(out, _writer("{}", b"w6"))
    assert _backups(tmp_path) == []


def _kill_at_the_rename_into(monkeypatch, target: Path) -> None:
    """Like SIGKILL right before ``target`` is renamed into place: no later rename happens."""
    rename, dead = os.rename, []

    def killed(src, dst):
        if dead or Path(dst) == target:
            dead.append(1)
            raise KeyboardInterrupt
        rename(src, dst)

    monkeypatch.setattr(os, "rename", killed)


def test_hint_names_the_backup_of_the_last_completed_save(tmp_path, monkeypatch):
    """Kill 1: during the removal of the backup of a completed save (w1). Kill 2: between the
    renames of the next save. The hint must name the copy of w1, not the older w0."""
    out = tmp_path / "adapter"
    atomic.atomic_folder(out, _writer("{}", b"w0"))
    hexes = iter(["ffffffff", "00000000"] + [f"{i:08x}" for i in range(1, 99)])
    monkeypatch.setattr(uuid, "uuid4", lambda: SimpleNamespace(hex=next(hexes) * 4))
    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        _interrupt_removal_of(patch, b"w0")
        atomic.atomic_folder(out, _writer("{}", b"w1"))  # kill 1
    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        _kill_at_the_rename_into(patch, out)
        atomic.atomic_folder(out, _writer("{}", b"w2"))  # kill 2
    monkeypatch.undo()
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="previous adapter in") as info:
        read_adapter_config(out, ("smore",))
    named = Path(str(info.value).split("previous adapter in ")[1].split(":")[0])
    assert (named / WEIGHTS_NAME).read_bytes() == b"w1"
    assert [name for name in _backups(tmp_path) if ".old-" in name] == [named.name]
    atomic.atomic_folder(out, _writer("{}", b"w3"))  # the next save cleans everything up
    assert _backups(tmp_path) == [] and (out / WEIGHTS_NAME).read_bytes() == b"w3"


def test_killed_save_inside_a_target_is_rolled_back_by_the_next_save(tmp_path, monkeypatch):
    out = tmp_path / "adapter"
    atomic.atomic_folder(out, _writer("{}", b"w0"))
    (out / "metrics.json").write_text("{}")
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == out)
    _kill_at_the_rename_into(monkeypatch, out / CONFIG_NAME)  # new weights in, config not yet
    with pytest.raises(KeyboardInterrupt):
        atomic.atomic_folder(out, _writer('{"new": 1}', b"w1"))
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match=r"previous adapter's files in .*move them back"):
        read_adapter_config(out, ("smore",))
    atomic.recover_killed_saves(out)
    assert _contents(out) == {CONFIG_NAME: "{}", WEIGHTS_NAME: "w0", "metrics.json": "{}"}
    atomic.atomic_folder(out, _writer("{}", b"w2"))
    assert _contents(out) == {CONFIG_NAME: "{}", WEIGHTS_NAME: "w2", "metrics.json": "{}"}
    assert sorted(os.listdir(tmp_path)) == ["adapter"]

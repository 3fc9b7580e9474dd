"""``finetune --output-dir``: checked before the model loads, a trained adapter never lost, the
run's files written as soon as they exist, nothing left behind by a failed run
(smore_gnn/cli/output.py)."""

from __future__ import annotations

import errno
import json
import os

import pytest
import yaml

from smore_gnn.cli.commands import main
from smore_gnn.hf.model import SMoREModel
from smore_gnn.hf.save import CONFIG_NAME, WEIGHTS_NAME
from smore_gnn.hf.testing import tiny_llama
from tests.test_failures_cli import TINY, _one_line_error


def _run(out, *extra) -> int:
    return main(["finetune", *TINY, "--no-eval-before", *extra, "--output-dir", str(out)])


@pytest.mark.parametrize("where", [".", ".."])
def test_working_directory_is_refused_before_the_model_loads(tmp_path, monkeypatch, where, capsys):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert _run(where) == 2
    err = _one_line_error(capsys)
    assert "--output-dir" in err and "other than the working directory" in err
    assert "torch threads" not in capsys.readouterr().out  # refused before loading the model
    assert sorted(os.listdir(tmp_path)) == ["work"] and os.listdir(tmp_path / "work") == []


def test_folder_where_no_save_can_work_is_refused_before_the_model_loads(
    tmp_path, monkeypatch, capsys
):
    def read_only(src, dst):
        raise OSError(errno.EROFS, "Read-only file system", str(src))

    monkeypatch.setattr(os, "rename", read_only)  # files can be created, not renamed
    assert _run(tmp_path / "run") == 2
    assert "--output-dir" in _one_line_error(capsys)
    assert "torch threads" not in capsys.readouterr().out
    assert os.listdir(tmp_path) == []


def test_failed_save_after_training_saves_the_adapter_beside_it(tmp_path, monkeypatch, capsys):
    """The upfront check passed but the save fails (the disk filled up during training)."""
    from smore_gnn.hf import save

    save_file = save.save_file

    def disk_full(tensors, path, **kwargs):
        if ".run.saving-" in path:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        save_file(tensors, path, **kwargs)

    monkeypatch.setattr(save, "save_file", disk_full)
    assert _run(tmp_path / "run") == 2
    err = _one_line_error(capsys)
    (rescue,) = [p for p in tmp_path.iterdir() if p.name.startswith("run-")]
    assert f"it was saved to {rescue} instead" in err and "No space left" in err
    assert sorted(os.listdir(rescue)) == [CONFIG_NAME, WEIGHTS_NAME, "finetune_config.yaml"]
    assert SMoREModel.from_pretrained(tiny_llama()[0], rescue) is not None
    assert sorted(os.listdir(tmp_path)) == [rescue.name]  # the empty run folder is removed


def test_symlinked_output_dir_stays_a_link(tmp_path):
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    (real / "notes.txt").write_text("mine")
    link.symlink_to(real)
    assert _run(link) == 0
    assert link.is_symlink() and link.resolve() == real
    names = set(os.listdir(real))
    assert {
        CONFIG_NAME,
        WEIGHTS_NAME,
        "metrics.json",
        "finetune_config.yaml",
        "notes.txt",
    } <= names
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]


def test_mount_point_output_dir(tmp_path, mount_point):
    assert _run(mount_point) == 0
    assert os.path.ismount(mount_point) and (mount_point / CONFIG_NAME).is_file()
    assert (mount_point / "metrics.json").is_file()
    assert sorted(os.listdir(tmp_path)) == ["volume"]


def test_results_are_written_as_soon_as_they_exist(tmp_path, monkeypatch):
    """The config before training; metrics.json right after the evaluation, so a later
    failure (here: drawing the routing tree) keeps them."""
    import smore_gnn.viz
    from smore_gnn.train.trainer import SMoRETrainer

    out, seen = tmp_path / "run", []
    train = SMoRETrainer.train

    def recording_train(self, *args, **kwargs):
        seen.append((out / "finetune_config.yaml").is_file())
        return train(self, *args, **kwargs)

    def broken(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(SMoRETrainer, "train", recording_train)
    monkeypatch.setattr(smore_gnn.viz, "draw_routing_tree", broken)
    with pytest.raises(RuntimeError, match="drawing failed"):
        _run(out)
    assert seen == [True]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tuned_accuracy"] is not None and metrics["train_steps"] == 1
    assert yaml.safe_load((out / "finetune_config.yaml").read_text())["max_steps"] == 1
    assert (out / CONFIG_NAME).is_file()


def test_failed_run_removes_only_what_it_created(tmp_path, monkeypatch, capsys):
    fresh = tmp_path / "new" / "run"
    argv = ["--target-modules", "no_such_proj"]
    assert _run(fresh, *argv) == 2  # fails after the model loaded
    assert "--target-modules" in _one_line_error(capsys)
    assert os.listdir(tmp_path) == []
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "finetune_config.yaml").write_text("lr: 1\n")
    (kept / "notes.txt").write_text("mine")

    def crash(self, *args, **kwargs):
        raise RuntimeError("out of memory")

    from smore_gnn.train.trainer import SMoRETrainer

    monkeypatch.setattr(SMoRETrainer, "train", crash)
    with pytest.raises(RuntimeError, match="out of memory"):
        _run(kept)
    assert sorted(os.listdir(kept)) == ["finetune_config.yaml", "notes.txt"]
    assert (kept / "finetune_config.yaml").read_text() == "lr: 1\n"
    with pytest.raises(RuntimeError, match="out of memory"):
        _run(fresh)
    assert sorted(os.listdir(tmp_path)) == ["kept"]


def test_written_files_are_replaced_atomically(tmp_path, monkeypatch):
    from smore_gnn.cli import output

    out = tmp_path / "run"
    folder = output.RunFolder(out)
    folder.write_text("metrics.json", "old")

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        folder.write_text("metrics.json", "new")
    monkeypatch.undo()
    assert os.listdir(out) == ["metrics.json"] and (out / "metrics.json").read_text() == "old"

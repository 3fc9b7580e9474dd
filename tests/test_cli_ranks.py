"""The agreement of the processes of one ``smore-gnn finetune`` run, without a process group.

A second process is simulated by replacing ``all_gather_object`` with the outcomes the two
processes would exchange; the launched runs are in ``tests/test_distributed.py`` (marker
``distributed``).
"""

from __future__ import annotations

import pytest

from smore_gnn.cli import ranks as ranks_module
from smore_gnn.cli.args import UsageError
from smore_gnn.cli.output import RunFolder
from smore_gnn.cli.ranks import AlreadyReported, Ranks


def _process(monkeypatch, index: int, other: str | None) -> Ranks:
    """This process as ``index`` of 2; the other one ends its block with outcome ``other``."""
    ranks = Ranks()
    ranks.index, ranks.count, ranks.is_main = index, 2, index == 0

    def all_gather_object(outcomes, mine):
        outcomes[index], outcomes[1 - index] = mine, other

    monkeypatch.setattr(ranks_module.dist, "all_gather_object", all_gather_object)
    return ranks


def test_one_process_re_raises_its_own_error_and_goes_on_without_one():
    ranks = Ranks()
    assert (ranks.index, ranks.count, ranks.is_main) == (0, 1, True)
    with ranks.agreed():
        pass
    with pytest.raises(UsageError, match="bad") as caught, ranks.agreed():
        raise UsageError("bad")
    assert not isinstance(caught.value, AlreadyReported)


def test_the_same_user_error_is_printed_by_the_main_process_only(monkeypatch):
    with pytest.raises(UsageError) as main, _process(monkeypatch, 0, "--lr: bad").agreed():
        raise UsageError("--lr: bad")
    assert not isinstance(main.value, AlreadyReported)
    with pytest.raises(AlreadyReported), _process(monkeypatch, 1, "--lr: bad").agreed():
        raise UsageError("--lr: bad")
    with pytest.raises(UsageError) as own, _process(monkeypatch, 1, "--lr: other").agreed():
        raise UsageError("--lr: mine")  # not the main process's line: printed here too
    assert not isinstance(own.value, AlreadyReported)


def test_a_process_without_error_stops_when_another_failed(monkeypatch):
    main_failed = _process(monkeypatch, 1, "--output-dir: no room")
    message = "process 0 of 2 failed: --output-dir: no room"
    with pytest.raises(AlreadyReported, match=message), main_failed.agreed():
        pass  # e.g. the probe that only the main process runs
    other_failed = _process(monkeypatch, 0, "RuntimeError: boom")
    message = "process 1 of 2 failed: RuntimeError: boom"
    with pytest.raises(UsageError, match=message) as main, other_failed.agreed():
        pass
    assert not isinstance(main.value, AlreadyReported)  # the main process prints it
    both_failed = _process(monkeypatch, 1, "RuntimeError: boom")
    with pytest.raises(RuntimeError, match="boom"), both_failed.agreed():
        raise RuntimeError("boom")  # a bug keeps its traceback


def test_run_folder_of_another_process_writes_nothing(tmp_path):
    out = tmp_path / "new" / "run"
    folder = RunFolder(out, writer=False)
    assert folder.path == out and not (tmp_path / "new").exists()
    assert folder.write_text("metrics.json", "{}") == out / "metrics.json"
    assert folder.save(model=None) == out and folder.saved
    folder.discard()
    assert list(tmp_path.iterdir()) == []
    taken = tmp_path / "file"
    taken.write_text("mine")
    with pytest.raises(UsageError, match="--output-dir: .*the file"):
        RunFolder(taken, writer=False)  # the same path checks as the main process

"""Tests for smore_gnn.nn.runtime: the thread-count choice, and that imports leave torch alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from smore_gnn.nn import runtime


@pytest.fixture(autouse=True)
def restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 1), (3, 2), (8, 7)])
def test_default_is_one_on_small_machines_else_cores_minus_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, cores: int, expected: int
) -> None:
    monkeypatch.setattr(runtime, "physical_cores", lambda: cores)
    assert runtime.choose_threads() == expected
    assert torch.get_num_threads() == expected
    out = capsys.readouterr().out
    assert out.startswith(f"torch threads: {expected} (") and f"{cores} physical core" in out


def test_requested_count_wins_and_verbose_false_is_silent(capsys: pytest.CaptureFixture) -> None:
    assert runtime.choose_threads(2, verbose=False) == 2
    assert torch.get_num_threads() == 2
    assert capsys.readouterr().out == ""
    assert runtime.choose_threads(1) == 1
    assert capsys.readouterr().out == "torch threads: 1 (requested)\n"


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (0, ValueError, ">= 1, got 0"),
        (-2, ValueError, "got -2"),
        (1.5, TypeError, "float"),
        ("2", TypeError, "str"),
        (True, TypeError, "bool"),
    ],
)
def test_rejects_bad_requests(bad: object, error: type, match: str) -> None:
    before = torch.get_num_threads()
    with pytest.raises(error, match=match):
        runtime.choose_threads(bad)  # type: ignore[arg-type]
    assert torch.get_num_threads() == before


def test_physical_cores_counts_hyperthreads_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # 4 logical CPUs = 2 cores x 2 hyper-threads on one package.
    for cpu, core in enumerate([0, 1, 0, 1]):
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text("0\n")
        (topo / "core_id").write_text(f"{core}\n")
    monkeypatch.setattr(runtime, "_SYSFS_CPU", tmp_path)
    monkeypatch.setattr(runtime, "_usable_cpus", lambda: [0, 1, 2, 3])
    assert runtime.physical_cores() == 2
    monkeypatch.setattr(runtime, "_usable_cpus", lambda: [0, 2])  # affinity: one core
    assert runtime.physical_cores() == 1
    monkeypatch.setattr(runtime, "_usable_cpus", lambda: [0, 1, 2, 3, 4])  # cpu4: no topology
    assert runtime.physical_cores() == 5


def test_importing_the_library_leaves_torch_threads_unchanged() -> None:
    code = textwrap.dedent(
        """
        import importlib, pkgutil, torch
        torch.set_num_threads(3)
        import smore_gnn
        names = [m.name for m in pkgutil.walk_packages(smore_gnn.__path__, "smore_gnn.")]
        for name in names:
            if not name.endswith("__main__"):
                importlib.import_module(name)
        assert len(names) > 10, names
        mod = torch.nn.modules.module  # no registration hooks until an adapter is built
        assert not mod._global_parameter_registration_hooks, "hooks installed on import"
        assert not mod._global_module_registration_hooks, "hooks installed on import"
        print(torch.get_num_threads(), len(names))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600
    ).stdout
    assert out.split()[0] == "3"

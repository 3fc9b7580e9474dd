"""Every notebook (``notebooks/*.ipynb``) runs end to end at test size, writes its figures and is
committed without outputs. ``make notebooks`` (scripts/run_notebooks.py) runs the default size."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
FIGURES = {
    "01_routing_trees.ipynb": [
        "01_trees.png",
        "01_across_modules.png",
        "01_pairs.png",
        "01_usage.png",
        "01_load.png",
        "01_coroute.png",
        "01_one_tree.png",
    ],
    "02_structural_flexibility.ipynb": ["02_figure2.png", "02_figure3.png"],
    "03_finetune.ipynb": [
        "03_losses.png",
        "03_routing.png",
        "03_logged_routing.png",
        "03_tree_before_after.png",
        "03_load_after.png",
        "03_health_before.png",
        "03_health_after.png",
        "03_task_experts.png",
    ],
}

NAMES = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


def test_the_three_tutorial_notebooks_exist():
    assert set(FIGURES) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_and_writes_its_figures(name, tmp_path, monkeypatch):
    out = tmp_path / "figures"
    monkeypatch.setenv("SMORE_NOTEBOOK_SIZE", "test")
    monkeypatch.setenv("SMORE_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    prefix = nb.cells[0].outputs[0]["text"].strip()
    assert Path(prefix).resolve() == Path(sys.prefix).resolve()  # the kernel runs in our venv
    for figure in FIGURES.get(name, []):  # notebooks not listed: running without error
        path = out / figure
        assert path.is_file() and path.stat().st_size > 1000, f"{name} did not write {figure}"

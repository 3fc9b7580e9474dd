"""The package facade: one import line covers the README, the notebooks and docs/API.md."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import smore_gnn

ROOT = Path(__file__).resolve().parents[1]
# What a notebook may import from the library: the facade, analysis, viz, and theory.
NOTEBOOK_MODULES = {"smore_gnn", "smore_gnn.analysis", "smore_gnn.viz"}


@pytest.mark.parametrize("name", smore_gnn.__all__)
def test_every_facade_name_resolves(name):
    assert getattr(smore_gnn, name) is not None


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'SMoREModle'"):
        smore_gnn.SMoREModle  # noqa: B018


def test_facade_names_are_the_library_objects():
    from smore_gnn.hf.methods import smore_paper_config
    from smore_gnn.hf.model import SMoREModel, get_smore_model

    assert smore_gnn.SMoREModel is SMoREModel
    assert smore_gnn.get_smore_model is get_smore_model
    assert smore_gnn.paper_config is smore_paper_config
    assert smore_gnn.paper_config().num_experts == [4, 4]


def test_importing_the_adapter_does_not_load_the_hf_integration():
    code = "import sys, smore_gnn; print(any(m.startswith('smore_gnn.hf') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _notebook_imports(path: Path) -> set[str]:
    modules = set()
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "\n".join(
            line for line in "".join(cell["source"]).splitlines() if not line.startswith("%")
        )
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules.add(node.module)
            elif isinstance(node, ast.Import):
                modules |= {alias.name for alias in node.names}
    return modules


@pytest.mark.parametrize(
    "path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name
)
def test_notebooks_import_only_the_facade_analysis_and_viz(path):
    ours = {m for m in _notebook_imports(path) if m.split(".")[0] == "smore_gnn"}
    assert ours, "a notebook that imports nothing of the library tests nothing"
    assert ours <= NOTEBOOK_MODULES, f"{path.name} imports {sorted(ours - NOTEBOOK_MODULES)}"

"""Shared fixtures: small adapters on CPU, deterministic seeds."""

from __future__ import annotations

import shutil
import subprocess

import matplotlib
import pytest
import torch
from torch import nn

from smore_gnn import SMoREConfig, SMoRELinear

matplotlib.use("Agg")
# One thread per test process: `make test` runs two processes on two cores, and OpenMP
# spin-waiting on a busy core makes the many small ops of a routing step 10-20x slower.
torch.set_num_threads(1)


def make_layer(
    dtype: torch.dtype = torch.float64,
    in_features: int = 8,
    out_features: int = 6,
    randomize: bool = True,
    seed: int = 0,
    **config,
) -> SMoRELinear:
    """A small adapter whose zero-initialised parts are made random, so no term vanishes."""
    torch.manual_seed(seed)
    layer = SMoRELinear(nn.Linear(in_features, out_features).to(dtype), SMoREConfig(**config))
    if randomize:
        with torch.no_grad():
            for name, p in layer.named_parameters():
                if p.requires_grad and ("proj" in name or "bias" in name or "noise" in name):
                    p.normal_(0, 0.5)
    return layer


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def mount_point(tmp_path):
    """An empty tmpfs mounted at tmp_path/"volume" (skipped where mounting is not permitted)."""
    point = tmp_path / "volume"
    point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    run = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(point)],
        capture_output=True,
        check=False,
    )
    if run.returncode != 0:
        pytest.skip(f"mounting is not permitted here: {run.stderr.decode().strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)

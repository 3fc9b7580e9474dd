"""The GNN backend against the dense oracle: outputs and every parameter gradient."""

import dataclasses
import itertools

import pytest
import torch

from tests.conftest import make_layer

GATES = ["noisy_topk", "switch", "dense"]
PROPAGATIONS = ["smore", "smore_star", "momor"]
ACTS = ["identity", "tanh", "relu", "prelu"]
LARGEST_DIFF: dict[str, float] = {}


def _config(num_layers: int, gate: str, shared: bool) -> dict:
    experts = [3] * num_layers if shared else [3, 4, 2][:num_layers]
    rank = [2] * num_layers if shared else [2, 3, 2][:num_layers]
    fanout = list(experts) if gate == "dense" else [2] * num_layers
    return dict(num_experts=experts, fanout=fanout, rank=rank, gate_type=gate, shared_pool=shared)


def _run(layer, backend: str, x: torch.Tensor, grad_out: torch.Tensor):
    layer.config = dataclasses.replace(layer.config, backend=backend)
    layer.zero_grad()
    torch.manual_seed(123)  # same router noise for both backends
    y = layer(x)
    ((y * grad_out).sum() + layer.balance_loss).backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    return y.detach(), grads


GRID = list(itertools.product([1, 2, 3], GATES, PROPAGATIONS, ACTS, [False, True]))


@pytest.mark.filterwarnings("ignore:SMoREConfig.expert_act:UserWarning")  # momor: no sigma
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("num_layers, gate, propagation, act, shared", GRID)
def test_gnn_equals_dense(num_layers, gate, propagation, act, shared, dtype):
    cfg = _config(num_layers, gate, shared)
    layer = make_layer(dtype, expert_act=act, propagation=propagation, **cfg).train()
    x = torch.randn(2, 5, 8, dtype=dtype)
    grad_out = torch.randn(2, 5, 6, dtype=dtype)
    y_gnn, g_gnn = _run(layer, "gnn", x, grad_out)
    y_dense, g_dense = _run(layer, "dense", x, grad_out)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert (y_gnn - x.new_zeros(())).abs().max() > 0
    torch.testing.assert_close(y_gnn, y_dense, rtol=tol, atol=tol)
    assert g_gnn.keys() == g_dense.keys()
    assert any(n.startswith("experts") for n in g_gnn)
    diff = (y_gnn - y_dense).abs().max().item()
    for name, grad in g_gnn.items():
        # Routing runs in float32 by design, so router gradients are float32-accurate.
        t = 1e-5 if name.startswith("router") else tol
        torch.testing.assert_close(grad, g_dense[name], rtol=t, atol=t, msg=name)
        if not name.startswith("router"):
            diff = max(diff, (grad - g_dense[name]).abs().max().item())
    key = str(dtype)
    LARGEST_DIFF[key] = max(LARGEST_DIFF.get(key, 0.0), diff)


def test_backends_disagree_when_oracle_is_perturbed():
    """The comparison can fail: a changed W_l in one backend only is detected."""
    layer = make_layer(torch.float64, **_config(2, "switch", False))
    x = torch.randn(4, 8, dtype=torch.float64)
    routing = layer.router(x)
    y = layer.adapter_delta(x, routing)
    with torch.no_grad():
        layer.convs[1].lin.weight.add_(1e-6)
    layer.config = dataclasses.replace(layer.config, backend="dense")
    assert (layer.adapter_delta(x, routing) - y).abs().max() > 1e-9

"""The ``scatter="torch_scatter"`` backend equals the native one (outputs and gradients).

Skipped without the optional package; ``make test-scatter`` (run by ``.ci/run``) installs the
``scatter`` extra and runs this file.
"""

from __future__ import annotations

import pytest
import torch

from smore_gnn import SMoREConv
from tests.conftest import make_layer

torch_scatter = pytest.importorskip(
    "torch_scatter", reason="torch-scatter is not installed (make test-scatter installs it)"
)

CONFIGS = {
    "switch (4-4)": dict(gate_type="switch"),
    "noisy_topk": dict(gate_type="noisy_topk"),
    "dense gate": dict(gate_type="dense", num_experts=[3, 2], fanout=[3, 2], rank=[2, 2]),
    "smore_star": dict(gate_type="switch", propagation="smore_star"),
    "momor": dict(gate_type="switch", propagation="momor", expert_act="identity"),
    "L=3": dict(gate_type="switch", num_experts=[3, 4, 2], fanout=[2, 2, 1], rank=[2, 3, 2]),
    "S'MoRE# shared pool": dict(gate_type="switch", shared_pool=True),
    "MoLRE top-2": dict(num_experts=[5], fanout=[2], rank=[3], gate_type="switch"),
}


@pytest.mark.parametrize("num_tokens", [3, 100])
def test_the_real_package_is_used(monkeypatch, num_tokens):
    """The kernel really is ``torch_scatter.scatter`` (not a silent fallback, nor the reshape
    sum that ``scatter="native"`` takes for routed trees), for tiny and larger inputs."""
    calls = []
    real = torch_scatter.scatter

    def spy(*args, **kwargs):
        calls.append(kwargs.get("reduce"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch_scatter, "scatter", spy)
    layer = make_layer(gate_type="switch", scatter="torch_scatter")
    layer(torch.randn(num_tokens, 8, dtype=torch.float64))
    assert calls and set(calls) == {"sum"}


@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
def test_torch_scatter_layer_equals_native(config):
    native = make_layer(seed=3, **config).train()
    fast = make_layer(seed=3, scatter="torch_scatter", **config).train()
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    outs = []
    for layer in (native, fast):
        torch.manual_seed(11)  # the same router noise for noisy top-k
        xi = x.clone().requires_grad_(True)
        y = layer(xi, attention_mask=mask)
        (y.square().sum() + layer.balance_loss).backward()
        grads = {n: p.grad for n, p in layer.named_parameters() if p.grad is not None}
        outs.append((y.detach(), xi.grad, grads))
    (y0, gx0, g0), (y1, gx1, g1) = outs
    torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx1, gx0, rtol=1e-12, atol=1e-12)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv_aggregation_with_empty_parents(dtype):
    """Parents without children get zeros; both kernels sum the same rows."""
    torch.manual_seed(0)
    native = SMoREConv(4, 3, root=True)
    fast = SMoREConv(4, 3, root=True, scatter="torch_scatter")
    x = torch.randn(6, 4, dtype=dtype, requires_grad=True)
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 0, 2, 2, 2, 4]])
    weight = torch.rand(6, dtype=dtype)
    out = [conv(x, None, edge_index, weight, num_parents=6) for conv in (native, fast)]
    torch.testing.assert_close(out[1], out[0])
    assert out[1][[1, 3, 5]].abs().max() == 0
    want = torch.zeros(6, 4, dtype=dtype).index_add_(0, edge_index[1], weight[:, None] * x)
    torch.testing.assert_close(out[1], want)
    grads = [torch.autograd.grad(o.sin().sum(), x)[0] for o in out]
    torch.testing.assert_close(grads[1], grads[0])

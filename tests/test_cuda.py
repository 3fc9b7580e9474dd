"""Every path on a CUDA device: GNN = dense oracle, CUDA = CPU, forward + backward, per-device
choices, a wrapped model's training step and KV-cache generation. Skipped without a GPU.

``SMORE_GNN_TEST_DEVICE=cpu`` runs the same tests on the CPU (a dry run of this module on a
machine without a GPU; the per-device assertions then check the CPU choices instead).
"""

from __future__ import annotations

import copy
import dataclasses
import os

import pytest
import torch

from smore_gnn.nn.experts import residual_costs
from smore_gnn.nn.gates import softmax_rows, uses_transposed_softmax
from smore_gnn.nn.settings import SpeedSettings
from tests.conftest import make_layer

DEVICE = os.environ.get("SMORE_GNN_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU"
)

GRID = [
    (layers, gate, propagation)
    for layers in (1, 2, 3)
    for gate in ("noisy_topk", "switch", "dense")
    for propagation in ("smore", "smore_star", "momor")
]


def _config(num_layers: int, gate: str, propagation: str) -> dict:
    experts = [3, 4, 2][:num_layers]
    fanout = list(experts) if gate == "dense" else [2] * num_layers
    return dict(
        num_experts=experts,
        fanout=fanout,
        rank=[2, 3, 2][:num_layers],
        gate_type=gate,
        propagation=propagation,
        expert_act="tanh" if propagation != "momor" else "identity",
    )


def _run(layer, x: torch.Tensor, grad_out: torch.Tensor, mask: torch.Tensor | None = None):
    layer.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    y = layer(x, mask)
    ((y * grad_out).sum() + layer.balance_loss).backward()
    grads = {n: p.grad.detach() for n, p in layer.named_parameters() if p.grad is not None}
    return y.detach(), x.grad.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("num_layers, gate, propagation", GRID)
def test_gnn_equals_dense_on_device(num_layers, gate, propagation, dtype):
    layer = make_layer(dtype, **_config(num_layers, gate, propagation)).to(DEVICE).train()
    x = torch.randn(2, 5, 8, dtype=dtype, device=DEVICE)
    grad_out = torch.randn(2, 5, 6, dtype=dtype, device=DEVICE)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], device=DEVICE).bool()
    results = []
    for backend in ("gnn", "dense"):
        layer.config = dataclasses.replace(layer.config, backend=backend)
        torch.manual_seed(123)  # same router noise for both backends
        results.append(_run(layer, x, grad_out, mask))
    (y, dx, grads), (y_ref, dx_ref, grads_ref) = results
    assert y.device.type == torch.device(DEVICE).type and y.abs().max() > 0
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-5, atol=1e-5)
    assert grads.keys() == grads_ref.keys() and any(n.startswith("experts") for n in grads)
    for name, grad in grads.items():
        assert grad.device.type == torch.device(DEVICE).type, name
        t = 1e-5 if name.startswith("router") else tol  # routing computes in float32
        torch.testing.assert_close(grad, grads_ref[name], rtol=t, atol=t, msg=name)


@pytest.mark.parametrize("gate", ["switch", "dense"])  # noise-free gates: same routes
@pytest.mark.parametrize("num_layers", [2, 3])
def test_device_equals_cpu(gate, num_layers):
    cpu = make_layer(torch.float64, **_config(num_layers, gate, "smore")).train()
    dev = copy.deepcopy(cpu).to(DEVICE)
    x = torch.randn(3, 4, 8, dtype=torch.float64)
    grad_out = torch.randn(3, 4, 6, dtype=torch.float64)
    y_cpu, dx_cpu, g_cpu = _run(cpu, x, grad_out)
    y_dev, dx_dev, g_dev = _run(dev, x.to(DEVICE), grad_out.to(DEVICE))
    assert dev.last_routing.experts[0].device.type == torch.device(DEVICE).type
    for a, b in zip(cpu.last_routing.experts, dev.last_routing.experts):
        assert torch.equal(a, b.cpu())  # the same routes
    torch.testing.assert_close(y_dev.cpu(), y_cpu, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dx_dev.cpu(), dx_cpu, rtol=1e-5, atol=1e-5)
    for name, grad in g_cpu.items():
        torch.testing.assert_close(g_dev[name].cpu(), grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("path", ["masked", "gather"])
def test_both_residual_paths_on_device(path):
    # the fused hops (default) against one message per edge with either residual path
    layer = make_layer(torch.float64, **_config(2, "switch", "smore")).to(DEVICE).train()
    x = torch.randn(2, 5, 8, dtype=torch.float64, device=DEVICE)
    grad_out = torch.randn(2, 5, 6, dtype=torch.float64, device=DEVICE)
    want = _run(layer, x, grad_out)
    layer.settings = SpeedSettings(message_passing="edges")
    for bank in layer.experts:
        bank.path = path
    got = _run(layer, x, grad_out)
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-10)
    for name, grad in want[2].items():
        # The router computes in float32 whatever the adapter's dtype, and on CUDA its
        # index_add_ sums in a nondeterministic (atomic) order: float32 rounding, ~1e-7
        # relative, so 1e-5 as everywhere for router gradients. A wrong gradient is off by
        # O(1) of its size and still fails; expert and conv gradients stay float64 (1e-8).
        t = 1e-5 if name.startswith("router") else 1e-8
        torch.testing.assert_close(got[2][name], grad, rtol=t, atol=t, msg=name)


def test_bf16_autocast_training_step_on_device():
    # the fused hops under autocast: bf16 compute, float32 gradients, close to float32
    layer = make_layer(torch.float32, **_config(2, "switch", "smore")).to(DEVICE).train()
    x = torch.randn(4, 16, 8, device=DEVICE)
    grad_out = torch.randn(4, 16, 6, device=DEVICE)
    want = _run(layer, x, grad_out)
    with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
        got = _run(layer, x, grad_out)
    assert got[0].dtype == torch.bfloat16
    torch.testing.assert_close(got[0].float(), want[0], rtol=0.05, atol=0.05)
    for name in want[2]:
        assert got[2][name].dtype == torch.float32 and got[2][name].isfinite().all(), name


def test_per_device_choices():
    logits = torch.randn(7, 4, device=DEVICE)
    on_cpu = torch.device(DEVICE).type == "cpu"
    assert uses_transposed_softmax(logits) == on_cpu  # the CPU trick only on the CPU
    torch.testing.assert_close(softmax_rows(logits), logits.softmax(-1))
    costs = residual_costs(torch.device(DEVICE).type)
    if not on_cpu:  # no constants fitted off the CPU: multiply-adds alone
        assert costs.gather == 0.0 and costs.bmm == 1.0


def test_bf16_layer_on_device():
    layer = make_layer(torch.float32, **_config(2, "switch", "smore")).to(DEVICE)
    layer.base_layer.to(torch.bfloat16)
    x = torch.randn(2, 3, 8, device=DEVICE, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16 and y.device.type == torch.device(DEVICE).type
    assert torch.isfinite(y.float()).all()


def test_wrapped_model_trains_and_generates_on_device():
    from smore_gnn.hf.methods import build_for_budget, smore_paper_config
    from smore_gnn.hf.testing import tiny_llama

    base, _ = tiny_llama(seed=0)
    model, _ = build_for_budget("smore", base, smore_paper_config(rank=[2, 2]), seed=0)
    cpu = copy.deepcopy(model)
    model.to(DEVICE).train()
    ids = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    out = model(input_ids=ids.to(DEVICE), attention_mask=mask.to(DEVICE), labels=ids.to(DEVICE))
    (out.loss + model.balance_loss()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert {g.device.type for g in grads} == {torch.device(DEVICE).type}
    cpu.train()
    ref = cpu(input_ids=ids, attention_mask=mask, labels=ids)
    torch.testing.assert_close(out.loss.detach().cpu(), ref.loss.detach(), rtol=1e-4, atol=1e-4)
    model.eval()
    with torch.inference_mode():
        gen = model.generate(
            input_ids=ids.to(DEVICE),
            attention_mask=mask.to(DEVICE),
            max_new_tokens=4,
            min_new_tokens=4,
            do_sample=False,
            pad_token_id=0,
        )
    assert gen.shape == (2, 13) and gen.device.type == torch.device(DEVICE).type

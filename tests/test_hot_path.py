"""The hot-path pieces: picked-expert residuals both ways, the fused projection, fast kernels."""

import pytest
import torch
from torch_geometric.utils import scatter

from smore_gnn import SMoREConv
from smore_gnn.nn.experts import ResidualCosts, ResidualExperts, residual_costs
from smore_gnn.nn.gates import softmax_rows
from tests.conftest import make_layer


def _reference(bank: ResidualExperts, x: torch.Tensor, experts: torch.Tensor, scale: float):
    every = bank(x)  # [N, s, d_out], every expert for every token
    picked = every.gather(1, experts[..., None].expand(-1, -1, every.size(-1)))
    return scale * picked.flatten(0, 1)


@pytest.mark.parametrize("picks", [1, 2, 3, 6])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_residuals_equal_compute_all_and_gather(picks, bias, scale):
    torch.manual_seed(0)
    bank = ResidualExperts(7, num_experts=3, rank=2, out_features=5, bias=bias).double()
    if bias:
        torch.nn.init.normal_(bank.lora_B_bias)
    x = torch.randn(4, 7, dtype=torch.float64)
    experts = torch.randint(0, 3, (4, picks))
    out = bank.residuals(bank.lora_A(x), experts, scale)
    ref = _reference(bank, x, experts, scale)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, list(bank.parameters()), grad)
    want = torch.autograd.grad(ref, list(bank.parameters()), grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_both_residual_paths_are_taken():
    bank = ResidualExperts(8, num_experts=4, rank=8, out_features=16)
    assert bank.use_masked(1) and bank.use_masked(2)  # few picks: one-hot GEMM
    assert not bank.use_masked(4) and not bank.use_masked(8)  # many: compute all, gather


def test_residual_costs_are_per_device_with_an_override():
    """The CPU fit applies to CPU only; a layer's settings can give other constants."""
    bank = ResidualExperts(8, num_experts=4, rank=8, out_features=16)
    # s r = 32: one pick costs 36 multiply-adds one-hot vs 1.85 * 32 + 15 = 74.2 on CPU
    assert bank.use_masked(1, "cpu") and bank.use_masked(2, "cpu")
    # unfitted device: multiply-adds alone, 36 > 32, so compute-all wins even for one pick
    assert residual_costs("cuda") == ResidualCosts(bmm=1.0, gather=0.0)
    assert not bank.use_masked(1, "cuda")
    costs = ResidualCosts(bmm=1.0, gather=10.0)  # 36 <= 32 + 10
    assert bank.use_masked(1, "cuda", costs) and not bank.use_masked(2, "cuda", costs)  # 72 > 52
    assert bank.use_masked(1, "cpu") and bank.use_masked(2, "cpu")  # the defaults untouched
    assert not bank.use_masked(1, "cuda")
    with pytest.raises(ValueError, match="Expected ResidualCosts"):
        ResidualCosts(bmm=0.0, gather=1.0)


@pytest.mark.parametrize("path", ["masked", "gather"])
def test_forced_residual_path(path):
    torch.manual_seed(0)
    bank = ResidualExperts(7, num_experts=3, rank=2, out_features=5).double()
    x, experts = torch.randn(4, 7, dtype=torch.float64), torch.randint(0, 3, (4, 2))
    auto = bank.residuals(bank.lora_A(x), experts)
    bank.path = path
    assert bank.use_masked(1) == bank.use_masked(3) == (path == "masked")
    torch.testing.assert_close(bank.residuals(bank.lora_A(x), experts), auto)
    bank.path = "fast"
    with pytest.raises(ValueError, match="path must be one of"):
        bank.residuals(bank.lora_A(x), experts)


def test_router_uses_a_given_down_projection():
    layer = make_layer(torch.float32, gate_type="switch")
    x = torch.randn(9, 8)
    u = layer.router.down_proj(x)
    a, b = layer.router(x), layer.router(x, u=u)
    for ea, eb, sa, sb in zip(a.experts, b.experts, a.scores, b.scores):
        assert torch.equal(ea, eb)
        torch.testing.assert_close(sa, sb)
    moved = layer.router(x, u=u + 1.0)  # it really is the router's input
    assert any(not torch.equal(p, q) for p, q in zip(a.scores, moved.scores))


def test_fused_projection_feeds_router_and_experts():
    layer = make_layer(torch.float32, gate_type="switch")
    x = torch.randn(6, 8)
    u, hidden = layer._project(x, with_router=True)
    torch.testing.assert_close(u, layer.router.down_proj(x))
    for bank, h in zip(layer.experts, hidden):
        torch.testing.assert_close(h, bank.lora_A(x))
    u64, _ = make_layer(torch.float64)._project(x.double(), with_router=True)
    assert u64 is None  # float64 adapter: the router projects in float32 itself


def test_softmax_rows_equals_softmax():
    logits = torch.randn(50, 4)
    torch.testing.assert_close(softmax_rows(logits), logits.softmax(-1))
    wide = torch.randn(5, 40)
    assert torch.equal(softmax_rows(wide), wide.softmax(-1))


def test_index_add_aggregation_equals_pyg_scatter():
    conv = SMoREConv(3, 2)
    inputs, index = torch.randn(7, 3, dtype=torch.float64), torch.tensor([0, 2, 2, 1, 0, 4, 2])
    out = conv.aggregate(inputs, index, dim_size=5)
    torch.testing.assert_close(out, scatter(inputs, index, 0, 5, "sum"), rtol=0, atol=0)

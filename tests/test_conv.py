"""SMoREConv on hand-written bipartite child -> parent graphs."""

import pytest
import torch

from smore_gnn import SMoREConv
from smore_gnn.nn.conv import FAST_TANH_MIN_NUMEL, _SigmoidTanh, make_activation, tanh

EDGES = torch.tensor([[0, 1, 2, 3], [0, 0, 1, 1]])  # 4 children, 2 parents
WEIGHT = torch.tensor([0.5, 2.0, 1.0, -1.0])


def test_repr_and_shapes():
    conv = SMoREConv(3, 5)
    assert repr(conv) == "SMoREConv(3, 5, smore)"
    out = conv(torch.randn(4, 3), torch.randn(2, 5), EDGES, WEIGHT)
    assert out.shape == (2, 5)
    assert repr(SMoREConv(5, 5, root=True)) == "SMoREConv(5, 5, root)"


def test_smore_rule_by_hand():
    conv = SMoREConv(3, 2, act="tanh")
    x, res = torch.randn(4, 3), torch.randn(2, 2)
    m = torch.stack([0.5 * x[0] + 2.0 * x[1], x[2] - x[3]])
    torch.testing.assert_close(conv(x, res, EDGES, WEIGHT), torch.tanh(res + conv.lin(m)))


def test_smore_star_and_momor_rules_by_hand():
    x, res = torch.randn(4, 3), torch.randn(2, 2)
    star = SMoREConv(3, 2, act="relu", propagation="smore_star")
    m = torch.stack([0.5 * x[0] + 2.0 * x[1], x[2] - x[3]])
    torch.testing.assert_close(star(x, res, EDGES, WEIGHT), res + star.lin(torch.relu(m)))


def test_momor_rule_by_hand():
    """Own residual once per expert (no sigma), children summed without scores and placed in
    the last d_l coordinates; no parameters at all."""
    x, res = torch.randn(4, 3), torch.randn(2, 5)
    momor = SMoREConv(3, 5, act="tanh", propagation="momor")
    assert sum(p.numel() for p in momor.parameters()) == 0 and momor.lin is None
    first = torch.tensor([True, False])
    children = torch.stack([x[0] + x[1], x[2] + x[3]])  # [2, 3], edge weights ignored
    expected = res * first[:, None].float()
    expected[:, 2:] += children
    torch.testing.assert_close(momor(x, res, EDGES, WEIGHT, first_use=first), expected)
    with pytest.raises(ValueError, match="in_channels <= out_channels"):
        SMoREConv(5, 3, propagation="momor")


def test_leaf_and_root_steps():
    res = torch.randn(4, 3)
    torch.testing.assert_close(SMoREConv(0, 3, act="tanh")(None, res), torch.tanh(res))
    root = SMoREConv(3, 3, root=True)
    assert sum(p.numel() for p in root.parameters()) == 0
    out = root(res, None, EDGES, WEIGHT, num_parents=2)
    torch.testing.assert_close(out, torch.stack([0.5 * res[0] + 2 * res[1], res[2] - res[3]]))


def test_reset_parameters_and_errors():
    conv = SMoREConv(3, 2, act="prelu")
    with torch.no_grad():
        conv.act.weight.fill_(0.9)
        conv.lin.weight.zero_()
    conv.reset_parameters()
    assert conv.act.weight.item() == pytest.approx(0.25) and conv.lin.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="Expected propagation"):
        SMoREConv(3, 2, propagation="flat")
    with pytest.raises(ValueError, match="Expected an expert activation"):
        SMoREConv(3, 2, act="gelu")
    with pytest.raises(ValueError, match="Expected scatter"):
        SMoREConv(3, 2, scatter="cuda")


@pytest.mark.parametrize("numel", [10, 8192])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tanh_equals_torch_tanh(numel, dtype):
    x = (4 * torch.randn(numel, dtype=dtype)).requires_grad_(True)
    g = torch.randn(numel, dtype=dtype)
    y = tanh(x)
    exact = dtype == torch.float64 or numel < FAST_TANH_MIN_NUMEL  # torch.tanh itself
    tol = 0.0 if exact else 3e-7
    torch.testing.assert_close(y, torch.tanh(x), rtol=0, atol=tol)
    (grad,) = torch.autograd.grad(y, x, g)
    (want,) = torch.autograd.grad(torch.tanh(x), x, g)
    torch.testing.assert_close(grad, want, rtol=0, atol=tol * 20)  # |g| (2|y| dy) <= ~4 * 2 * tol


def test_tanh_activation_takes_the_fast_kernel(monkeypatch):
    calls = []
    monkeypatch.setattr(_SigmoidTanh, "apply", lambda x: calls.append(x.numel()) or x)
    act = make_activation("tanh")
    assert isinstance(act, torch.nn.Tanh)
    act(torch.randn(FAST_TANH_MIN_NUMEL))
    act(torch.randn(FAST_TANH_MIN_NUMEL - 1))
    assert calls == [FAST_TANH_MIN_NUMEL]

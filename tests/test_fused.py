"""The fused tree hop (``smore_gnn.nn.fused``): gradcheck in float64 and equality with autograd."""

from __future__ import annotations

import pytest
import torch

from smore_gnn.nn.fused import PickedExperts, picked_rows, tree_hop


def _inputs(bias: bool, scale: float, seed: int = 0):
    torch.manual_seed(seed)
    n, s, r, d_in, d_out, f, k = 3, 4, 2, 5, 6, 2, 2  # k parents per token, f children each
    opts = dict(dtype=torch.float64, requires_grad=True)
    hidden = torch.randn(n, s * r, **opts)
    experts = torch.randint(0, s, (n, k))
    weight_b = torch.randn(s, d_out, r, **opts)
    bias_b = torch.randn(s, d_out, **opts) if bias else None
    children = torch.randn(n * k * f, d_in, **opts)
    alpha = torch.rand(n * k, f, **opts)
    weight = torch.randn(d_out, d_in, **opts)
    lin_bias = torch.randn(d_out, **opts) if bias else None
    picked = PickedExperts(hidden, picked_rows(experts), weight_b, bias_b, scale)
    return picked, experts, children, alpha, weight, lin_bias


def _autograd_hop(picked, experts, children, alpha, weight, bias, act, star):
    # the same hop written plainly, one autograd node per operation
    acts = {"tanh": torch.tanh, "relu": torch.relu, "identity": lambda t: t}
    n, s = picked.hidden.size(0), picked.weight.size(0)
    h = picked.hidden.view(n, s, -1)  # [N, s, r]
    chosen = torch.stack([h[i, experts[i]] for i in range(n)])  # [N, K, r]
    w = picked.weight[experts]  # [N, K, d_out, r]
    res = torch.einsum("nkor,nkr->nko", w, chosen)
    if picked.bias is not None:
        res = res + picked.bias[experts]
    res = picked.scale * res.reshape(-1, w.size(2))  # [N K, d_out]
    m = (alpha[:, :, None] * children.view(alpha.size(0), alpha.size(1), -1)).sum(1)
    if star:
        out = res + acts[act](m) @ weight.t()
        return out if bias is None else out + bias
    pre = res + m @ weight.t()
    return acts[act](pre if bias is None else pre + bias)


@pytest.mark.parametrize("act", ["tanh", "relu", "identity"])
@pytest.mark.parametrize("star", [False, True])
@pytest.mark.parametrize("bias,scale", [(True, 1.0), (False, 0.5)])
def test_tree_hop_gradcheck_and_equals_autograd(act, star, bias, scale):
    picked, experts, children, alpha, weight, lin_bias = _inputs(bias, scale)

    def fused(hidden, weight_b, bias_b, children, alpha, weight, lin_bias):
        p = PickedExperts(hidden, picked.rows, weight_b, bias_b, scale)
        return tree_hop(p, children, alpha, weight, lin_bias, act, star)

    args = (picked.hidden, picked.weight, picked.bias, children, alpha, weight, lin_bias)
    if act == "relu":  # keep pre-activations away from the kink for finite differences
        with torch.no_grad():
            children.mul_(0.1)
    assert torch.autograd.gradcheck(fused, args)
    want = _autograd_hop(picked, experts, children, alpha, weight, lin_bias, act, star)
    torch.testing.assert_close(fused(*args), want)
    grads = torch.autograd.grad(fused(*args).square().sum(), [a for a in args if a is not None])
    wants = torch.autograd.grad(want.square().sum(), [a for a in args if a is not None])
    for got, exp in zip(grads, wants):
        torch.testing.assert_close(got, exp)


@pytest.mark.parametrize("with_weight", [True, False])
def test_root_hop_gradcheck(with_weight):
    # the root: no residual, no activation; W_proj (or none: the plain weighted sum)
    _, _, children, alpha, weight, lin_bias = _inputs(True, 1.0)
    args = (children, alpha) + ((weight, lin_bias) if with_weight else ())

    def root(children, alpha, weight=None, bias=None):
        return tree_hop(None, children, alpha, weight, bias)

    assert torch.autograd.gradcheck(root, args)
    m = (alpha[:, :, None] * children.view(alpha.size(0), alpha.size(1), -1)).sum(1)
    torch.testing.assert_close(root(*args), m @ weight.t() + lin_bias if with_weight else m)


def test_leaf_hop_gradcheck():
    picked, *_ = _inputs(True, 2.0)

    def leaf(hidden, weight_b, bias_b):
        return tree_hop(
            PickedExperts(hidden, picked.rows, weight_b, bias_b, 2.0),
            None,
            None,
            None,
            None,
            "tanh",
        )

    assert torch.autograd.gradcheck(leaf, (picked.hidden, picked.weight, picked.bias))


def test_tree_hop_rejects_an_unfused_activation():
    with pytest.raises(ValueError, match="act in"):
        tree_hop(None, torch.ones(2, 1), torch.ones(1, 2), None, None, act="prelu")


def test_tree_hop_under_cpu_autocast():
    # bf16 autocast: the backward runs under the forward's autocast state, grads in fp32
    picked, _, children, alpha, weight, lin_bias = _inputs(True, 1.0)
    args = [t.detach().float().requires_grad_() for t in (picked.hidden, picked.weight)]
    rest = [t.detach().float().requires_grad_() for t in (children, alpha, weight, lin_bias)]
    p = PickedExperts(args[0], picked.rows, args[1], None, 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tree_hop(p, *rest, act="tanh")
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    for t in args + rest:
        assert t.grad is not None and t.grad.dtype == torch.float32 and t.grad.isfinite().all()


def test_stacked_linear_gradcheck_and_split():
    from torch import nn

    from smore_gnn.nn.experts import _StackedLinear, stacked_linear

    torch.manual_seed(0)
    parts = [nn.Linear(5, o).double() for o in (3, 4, 2)]
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    outs = stacked_linear(x, parts)
    for out, part in zip(outs, parts):
        torch.testing.assert_close(out, part(x))
    params = [t for p in parts for t in (p.weight, p.bias)]
    # a part whose output is unused gets no gradient: its rows of W get zeros
    loss = outs[0].square().sum() + outs[2].sum()
    grads = torch.autograd.grad(loss, [x, *params])
    want = torch.autograd.grad(
        parts[0](x).square().sum() + parts[2](x).sum(), [x, *params], allow_unused=True
    )
    for got, exp in zip(grads, want):
        torch.testing.assert_close(got, torch.zeros_like(got) if exp is None else exp)
    assert torch.autograd.gradcheck(
        lambda x, *t: torch.cat(_StackedLinear.apply(x, [3, 4, 2], *t), 1), (x, *params)
    )

"""SMoRELinear: special cases of docs/spec.md §6, inits, dtypes, shapes and errors."""

import pytest
import torch
from torch import nn

from smore_gnn import RoutingTree, SMoREConfig, SMoRELinear
from tests.conftest import make_layer


def test_any_leading_shape_and_repr():
    layer = make_layer(torch.float32)
    for shape in [(8,), (3, 8), (2, 3, 8)]:
        y = layer(torch.randn(shape))
        assert y.shape == shape[:-1] + (6,)
    assert "experts=[4, 4], fanout=[2, 2]" in repr(layer)
    assert "SMoREConv(32, 64, smore)" in repr(layer)


def test_wrong_inputs():
    with pytest.raises(TypeError, match="wraps an nn.Linear"):
        SMoRELinear(nn.Conv1d(2, 2, 1), SMoREConfig())
    with pytest.raises(TypeError, match="expects an SMoREConfig"):
        SMoRELinear(nn.Linear(4, 4), {"rank": [8, 8]})
    with pytest.raises(ValueError, match=r"expected inputs \[\.\.\., 8\]"):
        make_layer(torch.float32)(torch.randn(3, 5))


def test_base_layer_is_frozen_and_kept():
    base = nn.Linear(8, 6)
    layer = SMoRELinear(base, SMoREConfig())
    assert layer.base_layer is base and not any(p.requires_grad for p in base.parameters())
    assert all(p.requires_grad for n, p in layer.named_parameters() if "base_layer" not in n)


def test_w_final_zero_starts_at_base_output():
    layer = make_layer(torch.float32, randomize=False)
    x = torch.randn(4, 7, 8)
    assert torch.equal(layer(x), layer.base_layer(x))


def test_every_trainable_tensor_gets_a_gradient():
    layer = make_layer(torch.float32, randomize=False, gate_type="noisy_topk").train()
    x = torch.randn(4, 7, 8)
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.1)
    target = torch.randn(4, 7, 6)
    ((layer(x) - target).pow(2).mean() + layer.balance_loss).backward()
    # W_proj = 0 at init, so only W_proj and (through the balance loss) the router move first.
    assert layer.proj.weight.grad.abs().sum() > 0
    assert layer.router.layers[0].noise.weight.grad.abs().sum() > 0
    opt.step()
    opt.zero_grad()
    ((layer(x) - target).pow(2).mean() + layer.balance_loss).backward()
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    for part in [
        "lora_A",
        "lora_B",
        "convs.1.lin",
        "proj",
        "fc1",
        "fc2",
        "keys",
        "down_proj",
        "noise",
    ]:
        assert any(part in n for n in names), part
    for name, p in layer.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_prop_3_1_mixture_of_lora():
    """L = 1, identity: y = W0 x + W_proj sum_t alpha_t (B^t (A^t x + a^t) + b^t)."""
    layer = make_layer(
        num_experts=[5], fanout=[3], rank=[2], expert_act="identity", gate_type="switch"
    )
    x = torch.randn(6, 8, dtype=torch.float64)
    y = layer(x)
    bank, routing = layer.experts[0], layer.last_routing
    a = bank.lora_A.weight.view(5, 2, 8)
    expected = []
    for n in range(6):
        m = torch.zeros(10, dtype=torch.float64)
        for e, alpha in zip(routing.experts[0][n].tolist(), routing.scores[0][n].tolist()):
            h = a[e] @ x[n] + bank.lora_A.bias.view(5, 2)[e]
            m += alpha * (bank.lora_B[e] @ h + bank.lora_B_bias[e])
        expected.append(layer.base_layer(x[n]) + layer.proj(m))
    torch.testing.assert_close(y, torch.stack(expected), rtol=1e-12, atol=1e-12)


def test_lora_special_case():
    """L = 1, s = f = 1, identity, no biases: a rank-r update W_proj B A."""
    layer = make_layer(
        num_experts=[1],
        fanout=[1],
        rank=[3],
        expert_act="identity",
        gate_type="switch",
        bias=False,
    )
    x = torch.randn(10, 8, dtype=torch.float64)
    update = layer.proj.weight @ layer.experts[0].lora_B[0] @ layer.experts[0].lora_A.weight
    torch.testing.assert_close(layer(x), layer.base_layer(x) + x @ update.T)
    assert torch.linalg.matrix_rank(update) == 3


@pytest.mark.parametrize(
    "num_experts, fanout, rank", [([3, 4], [2, 2], [2, 3]), ([2, 3, 2], [2, 1, 2], [1, 2, 3])]
)
def test_prop_3_2_slots(num_experts, fanout, rank):
    """eq_1_layer: every activated expert's A x is read back from its slot of m_root."""
    layer = make_layer(
        num_experts=num_experts,
        fanout=fanout,
        rank=rank,
        expert_act="identity",
        init_method="eq_1_layer",
        randomize=False,
        gate_type="switch",
    )
    x = torch.randn(5, 8, dtype=torch.float64)
    routing = layer.router(x)
    m_root = layer.propagate_tree(x, RoutingTree.from_routing(routing))  # [N, d_L]
    num_layers = len(num_experts)
    offsets = {}  # m_root = [top layer slots, ..., layer 0 slots]
    start = 0
    for l in reversed(range(num_layers)):
        offsets[l] = start
        start += num_experts[l] * rank[l]
    assert start == m_root.size(1)
    for n in range(5):
        expected = torch.zeros_like(m_root[n])
        path = [1.0]  # path weight of each node of the layer above
        for l in reversed(range(num_layers)):
            a = layer.experts[l].lora_A.weight.view(num_experts[l], rank[l], 8)
            weights = []
            for j, (e, alpha) in enumerate(
                zip(routing.experts[l][n].tolist(), routing.scores[l][n].tolist())
            ):
                w = path[j // fanout[l]] * alpha
                lo = offsets[l] + e * rank[l]
                expected[lo : lo + rank[l]] += w * (a[e] @ x[n])
                weights.append(w)
            path = weights
        torch.testing.assert_close(m_root[n], expected, rtol=1e-12, atol=1e-12)


def test_sibling_order_changes_nothing():
    layer = make_layer(num_experts=[3, 4, 3], fanout=[2, 2, 2], rank=[2, 2, 2])
    x = torch.randn(6, 8, dtype=torch.float64)
    routing = layer.router(x)
    out = layer.propagate_tree(x, RoutingTree.from_routing(routing))
    experts, scores = list(routing.experts), list(routing.scores)
    order = torch.tensor([1, 0])  # top layer: swap the root's two children
    experts[2], scores[2] = experts[2][:, order], scores[2][:, order]
    for l in (1, 0):  # move subtrees along, and reverse every sibling group too
        f = routing.fanout[l]
        order = (order[:, None] * f + torch.arange(f - 1, -1, -1)).reshape(-1)
        experts[l], scores[l] = experts[l][:, order], scores[l][:, order]
    permuted = layer.propagate_tree(x, RoutingTree(experts, scores, routing.fanout))
    torch.testing.assert_close(permuted, out, rtol=1e-12, atol=1e-12)
    scores[0] = scores[0].flip(1)  # but re-wiring a leaf's gate score does change the output
    changed = layer.propagate_tree(x, RoutingTree(experts, scores, routing.fanout))
    assert (changed - out).abs().max() > 1e-8


def test_bf16_input_routes_like_float32():
    layer = SMoRELinear(nn.Linear(8, 6).bfloat16(), SMoREConfig(gate_type="switch"))
    assert layer.proj.weight.dtype == torch.float32  # adapter stays float32
    nn.init.normal_(layer.proj.weight)
    x = torch.randn(3, 9, 8).bfloat16()
    y = layer(x)
    routes_bf16 = [e.clone() for e in layer.last_routing.experts]
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    routes_fp32 = layer.router(x.float().reshape(-1, 8)).experts
    for a, b in zip(routes_bf16, routes_fp32):
        assert torch.equal(a, b)
    assert layer.last_routing.scores[0].dtype == torch.float32


def test_attention_mask_attribute_is_used():
    layer = make_layer(torch.float32, gate_type="switch")
    x = torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    layer(x, attention_mask=mask)
    explicit = layer.last_routing.load[0].sum()
    layer.attention_mask = mask
    layer(x)
    assert layer.last_routing.load[0].sum() == explicit == 6 * 4  # 6 tokens x F_0 picks
    layer.attention_mask = torch.ones(3, 3)  # another batch's mask: an error, not ignored
    with pytest.raises(ValueError, match=r"attention_mask .* x.shape\[:-1\] = \(2, 4\)"):
        layer(x)
    layer.attention_mask = None
    layer(x)
    assert layer.last_routing.load[0].sum() == 8 * 4


def test_lora_alpha_scales_residuals():
    one = make_layer(
        num_experts=[2],
        fanout=[1],
        rank=[4],
        expert_act="identity",
        gate_type="switch",
        bias=False,
    )
    two = make_layer(
        num_experts=[2],
        fanout=[1],
        rank=[4],
        expert_act="identity",
        gate_type="switch",
        bias=False,
        lora_alpha=8.0,
    )
    x = torch.randn(3, 8, dtype=torch.float64)
    torch.testing.assert_close(two(x) - two.base_layer(x), 2 * (one(x) - one.base_layer(x)))


def test_shared_rank_off_by_default_and_adds_b_a_x_when_on():
    # the extension (docs/spec.md §12): off, the layer has no shared term at all
    torch.manual_seed(0)
    plain = SMoRELinear(nn.Linear(12, 10), SMoREConfig(gate_type="switch")).eval()
    assert plain.shared is None and not any("shared" in k for k in plain.state_dict())
    on = SMoRELinear(nn.Linear(12, 10), SMoREConfig(gate_type="switch", shared_rank=3)).eval()
    assert on.load_state_dict(plain.state_dict(), strict=False).missing_keys == [
        "shared.0.weight", "shared.1.weight"
    ]  # fmt: skip
    x = torch.randn(7, 12)
    with torch.no_grad():
        plain.proj.weight.normal_()
        on.proj.weight.copy_(plain.proj.weight)
        torch.testing.assert_close(on(x), plain(x))  # B_s = 0 at init: the same output
        on.shared[1].weight.normal_()
        b_a_x = x @ on.shared[0].weight.T @ on.shared[1].weight.T
        torch.testing.assert_close(on(x), plain(x) + b_a_x)
        torch.testing.assert_close(on.adapter_delta(x, on.router(x)), on(x) - on.base_layer(x))


def test_adapter_delta_after_a_no_grad_forward_uses_its_own_stacked_weights():
    # bug found by issue 21's rank measure: the no-grad stacked-weight cache of the forward
    # ([D, A_0, A_1]) was handed to propagate_tree, which stacks [A_0, A_1] -> wrong width
    torch.manual_seed(0)
    layer = SMoRELinear(nn.Linear(12, 10), SMoREConfig(gate_type="switch")).eval()
    x = torch.randn(300, 12)  # past the decode path's token limit: the stacked GEMM
    with torch.no_grad():
        layer.proj.weight.normal_()
        full = layer(x) - layer.base_layer(x)
        torch.testing.assert_close(layer.adapter_delta(x, layer.router(x)), full)
        torch.testing.assert_close(layer(x) - layer.base_layer(x), full)

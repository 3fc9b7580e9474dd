"""Where we follow the authors' code (ZimpleX/SMoRE-LLM) and the two spec decisions.

docs/spec.md §3, §5, §6 and §11: the keys handed to child routers under the cosine gate, the
noise projection without bias, the authors' initialisations as options, the LoRA special case
under each gate, and ``propagation="momor"`` as the literal flat mixture. The balance-loss
scales are pinned in ``tests/test_gates.py``.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smore_gnn import SMoREConfig, SMoRELinear, SMoRERouter, count_parameters
from smore_gnn.nn.router import RoutingResult
from tests.conftest import make_layer

KEYS = [[3.0, 0.0], [0.0, 0.5]]  # two top-layer keys of different, non-unit norms


def _router_inputs(gate: str) -> tuple[list[int], torch.Tensor]:
    """Top layer of 2 experts with KEYS, f = 1; returns the picks and the child router input."""
    cfg = SMoREConfig(
        num_experts=[2, 2],
        fanout=[1, 1],
        rank=[1, 1],
        router_dim=2,
        gate_type=gate,
        down_proj_dim=None,
    )
    router = SMoRERouter(2, cfg).eval()
    top = router.layers[1]
    with torch.no_grad():  # q = u: the token itself is the query
        top.fc1.weight.copy_(torch.eye(2))
        top.fc1.bias.zero_()
        top.fc2.weight.copy_(torch.eye(2))
        top.fc2.bias.zero_()
        top.keys.copy_(torch.tensor(KEYS))
    seen, child = [], router.layers[0]
    child_forward = child.forward
    child.forward = lambda h, valid: (seen.append(h), child_forward(h, valid))[1]
    x = torch.tensor([[1.0, 0.1], [0.1, 1.0]])  # token 0 -> expert 0, token 1 -> expert 1
    out = router.route_reference(x)  # the layer routers see the concatenated inputs
    fast = router(x)  # the split-fc1 forward routes the same
    assert all(torch.equal(a, b) for a, b in zip(fast.experts, out.experts))
    return out.experts[1][:, 0].tolist(), seen[0]


def test_noisy_topk_hands_down_the_normalised_keys():
    """Issue 9 item 1. Before: the raw keys (3, 0) and (0, 0.5); now the unit keys."""
    picked, h = _router_inputs("noisy_topk")
    assert picked == [0, 1]
    u = torch.tensor([[1.0, 0.1], [0.1, 1.0]])
    expected = torch.cat([u, torch.tensor([[1.0, 0.0], [0.0, 1.0]])], dim=1)  # [u, k/|k|]
    torch.testing.assert_close(h, expected)


def test_switch_hands_down_the_raw_keys():
    picked, h = _router_inputs("switch")
    assert picked == [0, 1]
    u = torch.tensor([[1.0, 0.1], [0.1, 1.0]])
    torch.testing.assert_close(h, torch.cat([u, torch.tensor(KEYS)], dim=1))


def test_normalised_keys_change_the_childrens_choice():
    """With raw keys the child would see (3, 0) and pick differently than with (1, 0)."""
    cfg = SMoREConfig(
        num_experts=[2, 1], fanout=[1, 1], rank=[1, 1], router_dim=2, down_proj_dim=None
    )
    router = SMoRERouter(2, cfg).eval()
    child, top = router.layers  # bottom first
    with torch.no_grad():
        top.keys.copy_(torch.tensor([[3.0, 0.0]]))  # the one top expert, |k| = 3
        # child query = key_x - 2 (reads the handed-down key's first coordinate only)
        child.fc1.weight.zero_()
        child.fc1.weight[0, 2] = 1.0  # input [u (2), key (2)]
        child.fc1.bias.zero_()
        child.fc2.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        child.fc2.bias.copy_(torch.tensor([-2.0, 0.1]))
        child.keys.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    out = router(torch.randn(3, 2))
    # unit key: relu(1) - 2 = -1 -> q = (-1, 0.1): closest to key 1; a raw key (3) gives
    # q = (1, 0.1): closest to key 0
    assert out.experts[0].flatten().tolist() == [1, 1, 1]


def test_noise_projection_has_no_bias_and_counts_match_the_reference():
    """Issue 9 item 4: the authors' noise layer is bias-free; ``noise_bias`` restores ours."""
    for num_experts, extra in [([4, 4], 8), ([4, 4, 4], 12)]:
        kw = dict(num_experts=num_experts, fanout=[2] * len(num_experts), rank=[4] * 3)
        kw["rank"] = kw["rank"][: len(num_experts)]
        new = SMoRELinear(nn.Linear(24, 20), SMoREConfig(**kw))
        old = SMoRELinear(nn.Linear(24, 20), SMoREConfig(noise_bias=True, **kw))
        assert all(layer.noise.bias is None for layer in new.router.layers)
        numel = [sum(p.numel() for p in m.parameters() if p.requires_grad) for m in (new, old)]
        assert numel[1] - numel[0] == extra  # the 8 (L=2) and 12 (L=3) of the issue
        assert count_parameters(new.config, 24, 20)["total"] == numel[0]
        assert count_parameters(old.config, 24, 20)["total"] == numel[1]


def test_reference_initialisations():
    torch.manual_seed(0)
    cfg = SMoREConfig(init_method="normal", key_init="uniform", zero_transition_bias=True)
    layer = SMoRELinear(nn.Linear(16, 12), cfg)
    bound = 1 / math.sqrt(cfg.message_dims[-1])  # kaiming_uniform(a=sqrt(5)), fan_in = d_L
    w = layer.proj.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.5 * bound and w.std() > 0.3 * bound
    assert torch.count_nonzero(layer.proj.bias) == 0
    for router in layer.router.layers:  # U[0, 1)
        assert router.keys.min() >= 0 and router.keys.max() < 1 and router.keys.std() > 0.1
    assert torch.count_nonzero(layer.convs[1].lin.bias) == 0
    x = torch.randn(5, 16)
    assert (layer(x) - layer.base_layer(x)).abs().max() > 0  # 'normal' starts non-zero
    default = SMoRELinear(nn.Linear(16, 12), SMoREConfig())
    assert torch.count_nonzero(default.proj.weight) == 0
    assert default.router.layers[0].keys.min() < 0  # N(0, 1/d_g)
    assert torch.count_nonzero(default.convs[1].lin.bias) > 0


# ---- decision 1: the LoRA special case (L = 1, s = f = 1, sigma = identity) -----------------
def _lora_case(gate: str) -> tuple[SMoRELinear, torch.Tensor, torch.Tensor]:
    layer = make_layer(
        num_experts=[1], fanout=[1], rank=[3], expert_act="identity", gate_type=gate, bias=False
    ).eval()
    x = torch.randn(10, 8, dtype=torch.float64)
    bank = layer.experts[0]
    lora = x @ (layer.proj.weight @ bank.lora_B[0] @ bank.lora_A.weight).T  # W_proj B A x
    return layer, x, lora


@pytest.mark.parametrize("gate", ["switch", "dense"])
def test_lora_special_case_is_exact_with_switch_and_dense(gate):
    layer, x, lora = _lora_case(gate)
    torch.testing.assert_close(layer(x) - layer.base_layer(x), lora)


def test_lora_special_case_under_noisy_topk_is_lora_scaled_by_the_cosine():
    """Decision: as the authors' gate, f = 1 takes the raw cosine logit as the score, so the
    update is LoRA times cos(q(x), k) per token (in [-1, 1]); not forced to 1."""
    layer, x, lora = _lora_case("noisy_topk")
    router = layer.router
    u = router.down_proj(x).float()
    gate = router.layers[0]
    q = gate.fc2(F.relu(gate.fc1(u.to(gate.fc1.weight.dtype))))
    cos = F.cosine_similarity(q, gate.keys.expand_as(q), dim=-1).double()  # [N]
    delta = layer(x) - layer.base_layer(x)
    torch.testing.assert_close(delta, cos[:, None] * lora, rtol=1e-5, atol=1e-6)
    assert (cos - 1).abs().max() > 1e-3  # really scaled, not LoRA
    scores = layer.last_routing.scores[0].flatten().double()
    torch.testing.assert_close(scores, cos, rtol=1e-5, atol=1e-6)


# ---- decision 2: propagation="momor" is the literal flat mixture -------------------------
def _routing(experts: list[list[list[int]]], scores: list[list[list[float]]]) -> RoutingResult:
    experts_t = [torch.tensor(e) for e in experts]
    fanout = [len(experts[l][0]) // len(experts[l + 1][0]) for l in range(len(experts) - 1)]
    return RoutingResult(
        experts=experts_t,
        scores=[torch.tensor(s, dtype=torch.float64) for s in scores],
        fanout=fanout + [len(experts[-1][0])],
        balance_loss=torch.zeros(()),
    )


@pytest.mark.parametrize("backend", ["gnn", "dense"])
def test_momor_is_the_literal_flat_mixture(backend):
    """m = sum_l sum_{e in U_l} c_l (B_l^e (A_l^e x + a) + b), layer l placed in the last
    d_{l+1} coordinates of d_L; scores, wiring, duplicates and sigma do not enter."""
    layer = make_layer(
        num_experts=[3, 2],
        fanout=[2, 2],
        rank=[2, 1],
        propagation="momor",
        backend=backend,
        lora_alpha=[3.0, 2.0],
    )
    assert all(conv.lin is None for conv in layer.convs)  # no W_l: nothing unused to train
    x = torch.randn(2, 8, dtype=torch.float64)
    # token 0: top {0, 1}, leaves {0, 2} and {2, 1} -> U_0 = {0, 1, 2}; token 1: top {1, 0},
    # leaves {1, 1}? no: siblings are distinct -> {1, 0}, {0, 1} -> U_0 = {0, 1}
    routing = _routing(
        [[[0, 2, 2, 1], [1, 0, 0, 1]], [[0, 1], [1, 0]]],
        [[[0.1, 0.2, 0.3, 0.4], [0.9, 0.8, 0.7, 0.6]], [[0.3, 0.7], [0.5, 0.5]]],
    )
    delta = layer.adapter_delta(x, routing)
    scales, dims = layer.config.residual_scales, layer.config.message_dims
    expected = []
    for n, used in enumerate([[{0, 1, 2}, {0, 1}], [{0, 1}, {0, 1}]]):
        m = torch.zeros(dims[-1], dtype=torch.float64)
        for l, experts in enumerate(used):
            bank = layer.experts[l]
            s, r = bank.num_experts, bank.rank
            for e in experts:
                h = bank.lora_A.weight.view(s, r, -1)[e] @ x[n] + bank.lora_A.bias.view(s, r)[e]
                m[dims[-1] - dims[l + 1] :] += scales[l] * (
                    bank.lora_B[e] @ h + bank.lora_B_bias[e]
                )
        expected.append(layer.proj(m))
    torch.testing.assert_close(delta, torch.stack(expected), rtol=1e-12, atol=1e-12)
    rewired = _routing(  # other scores and wiring, the same sets
        [[[2, 1, 0, 2], [0, 1, 1, 0]], [[1, 0], [0, 1]]],
        [[[1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5]], [[0.9, 0.1], [0.2, 0.8]]],
    )
    torch.testing.assert_close(layer.adapter_delta(x, rewired), delta, rtol=1e-12, atol=1e-12)


def test_momor_equals_smore_under_prop_3_2_when_every_expert_is_used_once():
    """With Proposition 3.2's W_l = [0; I], identity sigma and unit scores, S'MoRE's m_root is
    exactly the flat mixture: the literal MoMOR is the structure-forgetting form of it."""
    kw = dict(
        num_experts=[2, 2],
        fanout=[1, 2],
        rank=[2, 2],
        expert_act="identity",
        init_method="eq_1_layer",
        gate_type="switch",
    )
    smore = make_layer(randomize=False, **kw)
    momor = make_layer(randomize=False, propagation="momor", **kw)
    momor.load_state_dict(smore.state_dict(), strict=False)  # momor has no W_l
    x = torch.randn(3, 8, dtype=torch.float64)
    routing = _routing([[[0, 1]] * 3, [[0, 1]] * 3], [[[1.0, 1.0]] * 3, [[1.0, 1.0]] * 3])
    with torch.no_grad():
        smore.proj.weight.normal_()
        momor.proj.weight.copy_(smore.proj.weight)
    torch.testing.assert_close(
        momor.adapter_delta(x, routing), smore.adapter_delta(x, routing), rtol=1e-12, atol=1e-12
    )


def test_momor_counts_no_transition_and_no_activation_parameters():
    cfg = SMoREConfig(propagation="momor", expert_act="identity")
    layer = SMoRELinear(nn.Linear(24, 20), cfg)
    numel = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    parts = count_parameters(cfg, 24, 20)
    assert parts["transitions"] == 0 and parts["total"] == numel
    with pytest.warns(UserWarning, match="expert_act='prelu' has no effect"):
        cfg = SMoREConfig(propagation="momor", expert_act="prelu")
    layer = SMoRELinear(nn.Linear(24, 20), cfg)
    assert count_parameters(cfg, 24, 20)["total"] == sum(
        p.numel() for p in layer.parameters() if p.requires_grad
    )

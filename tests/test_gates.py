"""The gates' balance losses on the authors' scale, by hand (docs/spec.md §3, §11).

Each case has two or three experts and fixed logits, so every number below can be checked
with pencil and paper. The authors' formulas (ZimpleX/SMoRE-LLM, ``moe_gates.py``): switch
``w * s * sum_e tokens_per_expert(e) * mean_prob(e)`` where ``tokens_per_expert`` sums to
``f``; noisy top-k ``w * (cv^2(importance) + cv^2(load))`` with ``cv^2 = x.var() / mean^2``
(unbiased variance).
"""

import math

import pytest
import torch

from smore_gnn.nn import gates
from smore_gnn.nn.gates import (
    cv_squared,
    dense_gate,
    noisy_topk_gate,
    softmax_rows,
    switch_gate,
    uses_transposed_softmax,
)


def test_cv_squared_is_the_unbiased_variance_over_mean_squared():
    x = torch.tensor([1.0, 2.0, 6.0])  # mean 3, sum of squared deviations 4 + 1 + 9 = 14
    assert cv_squared(x).item() == pytest.approx((14 / 2) / 9, rel=1e-6)  # not (14 / 3) / 9
    assert cv_squared(torch.tensor([5.0])).item() == 0.0  # one expert: nothing to balance
    assert cv_squared(torch.tensor([2.0, 2.0])).item() == 0.0


def test_switch_loss_hand_computed_three_experts_fanout_two():
    # Two events over three experts; logits chosen so the softmax is easy to write down.
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]]))
    out = switch_gate(logits, fanout=2, valid=None, weight=0.1)
    # picks: event 0 -> {0, 1}, event 1 -> {2, 1}; picks per event: (1/2, 2/2, 1/2), sum f = 2
    assert out.load.tolist() == [1.0, 2.0, 1.0]
    frac = [0.5, 1.0, 0.5]
    mean_prob = [(0.5 + 0.1) / 2, (0.3 + 0.2) / 2, (0.2 + 0.7) / 2]
    expected = 0.1 * 3 * sum(a * b for a, b in zip(frac, mean_prob))
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    # scores: picked probabilities renormalised
    expected_scores = torch.tensor([[0.5 / 0.8, 0.3 / 0.8], [0.7 / 0.9, 0.2 / 0.9]])
    torch.testing.assert_close(out.scores, expected_scores)


def test_switch_loss_is_f_times_the_old_normalisation():
    """Before: frac summed to 1 (uniform routing gave w); now it sums to f (gives w f)."""
    logits = torch.randn(7, 3)
    new = switch_gate(logits, 2, None, 1.0).loss
    probs = logits.softmax(-1)
    picks = torch.zeros(3).index_add_(0, probs.topk(2).indices.flatten(), torch.ones(14))
    old = 3 * ((picks / (2 * 7)) * probs.mean(0)).sum()
    assert new.item() == pytest.approx(2 * old.item(), rel=1e-6)


def test_noisy_topk_loss_hand_computed_unbiased_cv2():
    # Cosine logits of three events over two experts, eval (no noise), fanout 1.
    logits = torch.tensor([[0.9, 0.1], [0.8, -0.2], [0.3, 0.6]])
    out = noisy_topk_gate(logits, None, fanout=1, valid=None, weight=0.5)
    assert out.experts.flatten().tolist() == [0, 0, 1]
    assert out.scores.flatten().tolist() == pytest.approx([0.9, 0.8, 0.6])  # raw logits, f = 1
    # importance (1.7, 0.6): mean 1.15, unbiased var = 2 * 0.55^2 / 1 = 0.605
    # load (2, 1): mean 1.5, unbiased var = 2 * 0.5^2 / 1 = 0.5
    expected = 0.5 * (0.605 / 1.15**2 + 0.5 / 1.5**2)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    # the population variance (the old choice) would give half of each cv^2 for s = 2
    assert out.loss.item() == pytest.approx(2 * 0.5 * (0.3025 / 1.15**2 + 0.25 / 1.5**2))


def test_noisy_topk_smooth_load_hand_computed():
    """Training: load = P(expert in the top f | its own noise redrawn) (Shazeer et al.)."""
    torch.manual_seed(0)
    logits = torch.tensor([[0.5, 0.0, -0.5]])
    std = torch.full((1, 3), 1e-8)  # noise far below the logit gaps: the order is kept
    out = noisy_topk_gate(logits, std, fanout=1, valid=None, weight=1.0)
    assert out.experts.tolist() == [[0]]
    # expert 0 is in; its threshold is the 2nd value (0.0): cdf(0.5 / 1e-8) = 1; the others
    # are out, their threshold is the 1st value (0.5): cdf(<0) = 0 -> load (1, 0, 0)
    load = torch.tensor([1.0, 0.0, 0.0])
    importance = torch.tensor([out.scores.item(), 0.0, 0.0])
    expected = cv_squared(importance) + cv_squared(load)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert cv_squared(load).item() == pytest.approx(3.0)  # var (1/3) / mean^2 (1/9)


@pytest.mark.parametrize("fanout", [1, 2, 3])
def test_switch_uniform_routing_equals_w_times_f(fanout):
    logits = torch.zeros(10, 3)  # every probability 1/3
    assert switch_gate(logits, fanout, None, 0.2).loss.item() == pytest.approx(0.2 * fanout)


def test_noisy_topk_exactly_uniform_importance_and_load_gives_zero():
    # Two experts, fanout 1, two events that pick different experts with the same score.
    logits = torch.tensor([[0.7, 0.1], [0.1, 0.7]])
    out = noisy_topk_gate(logits, None, fanout=1, valid=None, weight=3.0)
    assert out.importance.tolist() == pytest.approx([0.7, 0.7])
    assert out.load.tolist() == [1.0, 1.0]
    assert out.loss.item() == 0.0


def test_dense_gate_has_no_balance_loss():
    out = dense_gate(torch.randn(5, 3), None)
    assert out.loss.item() == 0.0
    assert out.load.tolist() == [5.0, 5.0, 5.0]


@pytest.mark.parametrize("gate", ["switch", "noisy_topk", "dense"])
def test_non_finite_invalid_events_are_dropped_not_multiplied(gate):
    """A NaN/inf logit of an invalid event changes no statistic (torch.where, not * 0)."""
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.4, 0.3]])
    bad = torch.cat([logits, torch.tensor([[math.nan, math.inf, 0.0]])])
    valid = torch.tensor([True, True, False])
    if gate == "switch":
        ref, out = switch_gate(logits, 2, None, 0.1), switch_gate(bad, 2, valid, 0.1)
    elif gate == "noisy_topk":
        ref = noisy_topk_gate(logits, None, 2, None, 0.1)
        out = noisy_topk_gate(bad, None, 2, valid, 0.1)
    else:
        ref, out = dense_gate(logits, None), dense_gate(bad, valid)
    for a, b in [(out.loss, ref.loss), (out.load, ref.load), (out.importance, ref.importance)]:
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)


def test_transposed_softmax_per_device_with_override():
    logits = torch.randn(6, 4)
    assert uses_transposed_softmax(logits)  # CPU, short rows: on
    assert not uses_transposed_softmax(torch.randn(6, 17))  # long rows: off
    meta = torch.empty(6, 4, device="meta")
    assert not uses_transposed_softmax(meta)  # not a CPU tensor: the row-wise kernel
    assert not uses_transposed_softmax(logits, False)
    torch.testing.assert_close(softmax_rows(logits, False), logits.softmax(-1))
    assert uses_transposed_softmax(meta, True)
    torch.testing.assert_close(softmax_rows(logits, True), logits.softmax(-1))


def test_layer_settings_reach_the_router_and_the_convs():
    from smore_gnn.nn.conv import Tanh
    from smore_gnn.nn.settings import SpeedSettings
    from tests.conftest import make_layer

    layer = make_layer(torch.float32, gate_type="switch")
    x = torch.randn(5, 8)
    want = layer(x).detach()
    layer.settings = SpeedSettings(transposed_softmax=False, fast_tanh_min_numel=None)
    assert all(r.transposed_softmax is False for r in layer.router.layers)
    assert all(c.act.min_numel is None for c in layer.convs if isinstance(c.act, Tanh))
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)  # how, not what
    with pytest.raises(TypeError, match="SpeedSettings"):
        layer.settings = {"message_passing": "edges"}
    with pytest.raises(ValueError, match="message_passing"):
        SpeedSettings(message_passing="sparse")


@pytest.mark.parametrize("fanout", [1, 2, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_switch_gate_backward_equals_autograd(fanout, masked):
    # the hand-written backward of the switch gate against the same math in autograd ops
    torch.manual_seed(0)
    logits = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    valid = torch.tensor([1, 1, 0, 1, 1, 0, 1]).bool() if masked else None
    out = gates.switch_gate(logits, fanout, valid, 0.3)
    probs = logits.softmax(-1)
    top, experts = probs.topk(fanout, -1)
    scores = top / top.sum(-1, keepdim=True) if fanout > 1 else top
    keep = torch.ones(7, dtype=torch.bool) if valid is None else valid
    load = torch.zeros(5, dtype=torch.float64).index_add_(
        0, experts[keep].reshape(-1), torch.ones(int(keep.sum()) * fanout, dtype=torch.float64)
    )
    n = int(keep.sum())
    loss = 0.3 * 5 * (load @ probs[keep].sum(0)) / n**2
    assert torch.equal(out.experts, experts)
    torch.testing.assert_close(out.scores, scores)
    torch.testing.assert_close(out.loss, loss)
    torch.testing.assert_close(out.load, load)
    g = torch.randn(7, fanout, dtype=torch.float64)
    got = torch.autograd.grad((out.scores * g).sum() + 2 * out.loss, logits)[0]
    want = torch.autograd.grad((scores * g).sum() + 2 * loss, logits)[0]
    torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(
        lambda t: (lambda o: o.scores.sum() + o.loss)(gates.switch_gate(t, fanout, valid, 0.3)),
        logits,
    )

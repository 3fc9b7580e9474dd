"""Issue 12, the layer's part: zero tokens (#13), deepcopy after training (#11), masks (#6)."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import make_layer


@pytest.mark.parametrize("backend", ["gnn", "dense"])
@pytest.mark.parametrize("shape", [(0, 8), (2, 0, 8), (0, 3, 8)])
def test_zero_tokens_give_the_base_output(backend, shape):
    """#13: an empty batch returns ``base_layer(x)``'s empty tensor; backward still works."""
    layer = make_layer(backend=backend, gate_type="noisy_topk").train()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    y = layer(x, attention_mask=torch.ones(shape[:-1], dtype=torch.bool))
    assert y.shape == shape[:-1] + (6,)
    torch.testing.assert_close(y, layer.base_layer(x))
    (y.sum() + layer.balance_loss).backward()
    assert x.grad.shape == x.shape
    assert float(layer.balance_loss.detach()) == 0.0 and layer.last_routing is None
    y = layer(torch.randn(3, 8, dtype=torch.float64))  # and the next batch routes again
    assert y.shape == (3, 6) and layer.last_routing.num_tokens == 3


def test_deepcopy_after_a_training_forward():
    """#11: EMA / reference-model copies after a forward that built a graph."""
    layer = make_layer(gate_type="switch").train()
    x = torch.randn(4, 8, dtype=torch.float64)
    layer(x, attention_mask=torch.tensor([1, 1, 0, 1]))
    clone = copy.deepcopy(layer)
    torch.testing.assert_close(clone.balance_loss, layer.balance_loss)
    for a, b in zip(clone.last_routing.experts, layer.last_routing.experts):
        assert torch.equal(a, b)
    torch.manual_seed(0)
    torch.testing.assert_close(clone(x), layer(x))
    (layer(x).sum() + layer.balance_loss).backward()  # the original still trains
    assert layer.router.layers[0].keys.grad is not None
    assert clone.router.layers[0].keys.grad is None


def _layer():
    return make_layer(gate_type="switch")


def test_masks_of_every_accepted_form_route_alike():
    layer, x = _layer(), torch.randn(2, 3, 8, dtype=torch.float64)
    bools = torch.tensor([[True, True, False], [True, False, True]])
    loads = []
    for mask in (bools, bools.long(), bools.double(), bools.int(), bools.reshape(6)):
        layer(x, attention_mask=mask)
        loads.append(layer.last_routing.load[0])
    assert loads[0].sum() == 4 * 4  # 4 real tokens x F_0 = 4 picks
    for load in loads[1:]:
        torch.testing.assert_close(load, loads[0])


@pytest.mark.parametrize(
    ("mask", "error", "match"),
    [
        (torch.ones(3, 2), ValueError, r"attention_mask must have the tokens' shape .*\(2, 3\)"),
        (torch.ones(1, 6), ValueError, r"got \(1, 6\)"),
        (torch.ones(5), ValueError, r"be flat \[6\]"),
        (torch.tensor([[0.0, 0.0, -1e9], [0.0, -1e9, 0.0]]), ValueError, "additive mask"),
        (torch.tensor([[0.0, 0.0, float("-inf")]] * 2), ValueError, r"\(mask == 0\)"),
        (torch.tensor([[1, 2, 1], [1, 1, 1]]), ValueError, "only 0 and 1 .*value 2"),
        (torch.ones(2, 3, dtype=torch.complex64), TypeError, "dtype torch.complex64"),
        ([[1, 1, 1], [1, 1, 1]], TypeError, "must be a torch.Tensor .*list"),
    ],
    ids=[
        "transposed",
        "wrong_shape",
        "wrong_numel",
        "additive",
        "additive_inf",
        "value_2",
        "complex",
        "list",
    ],
)
def test_bad_masks_are_rejected(mask, error, match):
    """#6: a transposed, additive, out-of-range or wrongly typed mask is an error."""
    layer, x = _layer(), torch.randn(2, 3, 8, dtype=torch.float64)
    with pytest.raises(error, match=match):
        layer(x, attention_mask=mask)


def test_wrapper_mask_is_checked_when_set_and_when_used():
    layer, x = _layer(), torch.randn(2, 3, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="SMoRELinear.attention_mask must hold only 0 and 1"):
        layer.attention_mask = torch.tensor([[0.0, float("-inf"), 0.0]] * 2)
    layer.attention_mask = torch.ones(3, 2)  # transposed
    with pytest.raises(ValueError, match=r"set by the model wrapper\) must have .*\(2, 3\)"):
        layer(x)
    layer.attention_mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    layer(x.reshape(6, 8))  # a model that flattens its tokens row-major before the layer
    assert layer.last_routing.load[0].sum() == 4 * 4


@pytest.mark.parametrize("gate_type", ["switch", "noisy_topk"])
@pytest.mark.parametrize("backend", ["gnn", "dense"])
def test_nan_in_a_padding_token_changes_nothing_real(gate_type, backend):
    """#7: a NaN in a padded token leaves the balance loss, the real tokens' outputs and every
    gradient finite and equal to the run where that token is finite."""
    mask = torch.tensor([1, 1, 0, 1], dtype=torch.bool)
    x = torch.randn(4, 8, dtype=torch.float64)
    runs = []
    for pad in (0.0, float("nan")):
        layer = make_layer(gate_type=gate_type, backend=backend).eval()  # eval: no noise draw
        xi = x.clone()
        xi[2] = pad
        y = layer(xi, attention_mask=mask)
        (y[mask].sum() + layer.balance_loss).backward()
        grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
        runs.append((y[mask].detach(), layer.balance_loss.detach(), grads))
    (y0, loss0, g0), (y1, loss1, g1) = runs
    assert torch.isfinite(loss1) and all(torch.isfinite(g).all() for g in g1.values())
    torch.testing.assert_close(y1, y0)
    torch.testing.assert_close(loss1, loss0)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], msg=name)

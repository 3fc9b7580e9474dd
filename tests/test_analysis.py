"""Tests of smore_gnn.analysis: counts, co-routing, entropy and tree comparison."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from smore_gnn.analysis import (
    RoutingRecorder,
    as_tree,
    coroute_counts,
    entropy,
    expert_counts,
    expert_sets,
    find_tree_pairs,
    load_entropy,
    mutual_information,
    normalized_mutual_info,
    num_distinct_structures,
    num_experts_of,
    routing_stats,
    structure_summary,
    tree_signature,
)
from smore_gnn.nn import counting
from smore_gnn.nn.tree import RoutingTree
from tests.conftest import make_layer


def hand_tree() -> RoutingTree:
    """Four tokens, two layers of 4 experts, fanout 2 (F = [4, 2, 1]).

    0: top {1, 2}, 1 -> {0, 1}, 2 -> {2, 3}
    1: token 0 with siblings permuted (isomorphic)
    2: the same expert sets as 0, children swapped between the parents (rewired)
    3: top {0, 3}: different
    """
    bottom = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [2, 3, 0, 1], [0, 1, 0, 1]])
    top = torch.tensor([[1, 2], [2, 1], [1, 2], [0, 3]])
    scores = [torch.full((4, 4), 0.5), torch.full((4, 2), 0.5)]
    return RoutingTree([bottom, top], scores, [2, 2])


def test_expert_counts_rows_sum_to_nodes_per_layer():
    tree = hand_tree()
    counts = expert_counts(tree, 0)
    assert counts.shape == (4, 4)
    assert counts[3].tolist() == [2, 2, 0, 0]
    assert (counts.sum(1) == 4).all()
    assert expert_counts(tree, 1, num_experts=6).shape == (4, 6)
    with pytest.raises(ValueError, match="layer must be in"):
        expert_counts(tree, 2)
    with pytest.raises(ValueError, match="num_experts=2"):
        expert_counts(tree, 0, num_experts=2)


def test_coroute_counts_by_hand():
    tree = hand_tree()
    one = RoutingTree([e[:1] for e in tree.experts], [s[:1] for s in tree.scores], [2, 2])
    expected = torch.zeros(4, 4, dtype=torch.long)
    expected[1, [0, 1]] = 1
    expected[2, [2, 3]] = 1
    assert torch.equal(coroute_counts(one, 0, num_experts=(4, 4)), expected)
    assert coroute_counts(one, 0).shape == (3, 4)  # sizes inferred from the largest id used
    root_row = coroute_counts(one, 1, num_experts=(4, 4))  # s_{l+1} is ignored at the top
    assert torch.equal(root_row, torch.tensor([[0, 1, 1, 0]]))
    full = coroute_counts(tree, 0)
    assert int(full.sum()) == 4 * 4
    assert int(full[0, 0]) == 1 and int(full[3, 1]) == 1  # token 3: 0 -> {0, 1}, 3 -> {0, 1}


def test_load_entropy_extremes():
    assert load_entropy([3, 3, 3, 3]) == pytest.approx(1.0)
    assert load_entropy([0, 5, 0, 0]) == pytest.approx(0.0)
    assert load_entropy([1, 1, 2]) == pytest.approx(
        -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5)) / math.log(3)
    )
    assert load_entropy([0, 0]) == 0.0


def test_routing_stats_from_a_layer():
    layer = make_layer(num_experts=[4, 3], fanout=[2, 1], rank=[2, 2])
    layer(torch.randn(5, 8, dtype=torch.float64))
    assert num_experts_of(layer) == [4, 3]
    assert num_experts_of(layer.last_routing) == [4, 3]
    stats = routing_stats(layer, num_experts_of(layer))
    assert len(stats["entropy"]) == 2 and all(0 <= h <= 1 for h in stats["entropy"])
    assert [len(s) for s in stats["load_share"]] == [4, 3]
    assert sum(stats["load_share"][0]) == pytest.approx(1.0)
    # busiest share = the busiest expert's picks over the events (5 tokens x F_{l+1} parents)
    loads = [t.tolist() for t in layer.last_routing.load]
    assert stats["top_share"] == pytest.approx([max(loads[0]) / 5, max(loads[1]) / 5])
    by_tree = routing_stats(layer.last_tree, [4, 3])  # counted in the tree: the same
    assert by_tree["top_share"] == pytest.approx(stats["top_share"])


def test_tree_signature_ignores_sibling_order_not_wiring():
    tree = hand_tree()
    assert tree_signature(tree, 0) == tree_signature(tree, 1)
    assert tree_signature(tree, 0) != tree_signature(tree, 2)
    assert expert_sets(tree, 0) == expert_sets(tree, 2)
    assert expert_sets(tree, 0) == (frozenset({0, 1, 2, 3}), frozenset({1, 2}))
    with pytest.raises(IndexError, match="4 tokens"):
        tree_signature(tree, 4)


def test_find_tree_pairs_classifies_every_pair():
    pairs = find_tree_pairs(hand_tree())
    assert pairs.identical == [(0, 1)]
    assert pairs.rewired == [(0, 2), (1, 2)]
    assert pairs.different == [(0, 3), (1, 3), (2, 3)]
    assert num_distinct_structures(hand_tree()) == (3, 2)
    assert find_tree_pairs(hand_tree(), tokens=[2, 3]).different == [(2, 3)]


def test_all_structures_match_the_closed_forms():
    enumerate_ = pytest.importorskip("theory.enumerate")
    tree = enumerate_.structures([4, 4], [2, 2])
    smore, momor = num_distinct_structures(tree)
    assert smore == counting.num_structures([4, 4], [2, 2]) == 216
    assert momor == counting.momor_upper_bound([4, 4], [2, 2]) == 66


def test_as_tree_accepts_routing_and_layer_and_rejects_others():
    layer = make_layer(num_experts=[3], fanout=[2], rank=[2])
    with pytest.raises(TypeError, match="SMoRELinear after a forward"):
        as_tree(layer)
    layer(torch.randn(3, 8, dtype=torch.float64))
    assert as_tree(layer).num_tokens == 3
    assert as_tree(layer.last_routing).num_tokens == 3
    with pytest.raises(TypeError, match="got int"):
        as_tree(3)


def test_structure_summary_per_module():
    tree = hand_tree()
    (row,) = structure_summary({"m": tree})
    assert row == {
        "name": "m",
        "tokens": 4,
        "smore_structures": 3,
        "momor_structures": 2,
        "identical": 1,
        "rewired": 2,
        "different": 3,
    }
    assert structure_summary({"m": tree}, tokens=[0, 1])[0]["smore_structures"] == 1


def test_routing_stats_uses_the_routing_load_without_padding():
    layer = make_layer(num_experts=[4], fanout=[1], rank=[2], gate_type="switch")
    mask = torch.tensor([1, 1, 0, 0, 0, 0])
    layer(torch.randn(6, 8, dtype=torch.float64), attention_mask=mask)
    share = routing_stats(layer)["load_share"][0]
    assert sorted(share)[-1] in (0.5, 1.0)  # two valid tokens, one pick each
    counted = routing_stats(layer.last_tree)["load_share"][0]  # the tree counts padding too
    assert sum(counted) == pytest.approx(1.0)


def test_routing_recorder_records_every_steps():
    model = torch.nn.Sequential(
        make_layer(num_experts=[4, 3], fanout=[2, 1], rank=[2, 2]),
        make_layer(num_experts=[4, 3], fanout=[2, 1], rank=[2, 2], in_features=6, seed=1),
    )
    recorder = RoutingRecorder(every=2)
    assert recorder.on_train_begin(None, None, None) is None  # other events: no-ops
    with pytest.raises(AttributeError):
        recorder.missing  # noqa: B018
    model(torch.randn(5, 8, dtype=torch.float64))
    for step in (1, 2, 3, 4):
        recorder.on_step_end(None, SimpleNamespace(global_step=step), None, model=model)
    assert [h["step"] for h in recorder.history] == [2, 4]
    entry = recorder.history[0]
    stats = [routing_stats(m) for m in model]
    assert entry["entropy"] == pytest.approx(
        [(a + b) / 2 for a, b in zip(stats[0]["entropy"], stats[1]["entropy"])]
    )
    assert [len(s) for s in entry["load_share"]] == [4, 3]
    only = RoutingRecorder(modules=["1"]).record(model, step=7)
    assert only["entropy"] == pytest.approx(stats[1]["entropy"])
    with pytest.raises(ValueError, match="every"):
        RoutingRecorder(every=0)


def test_routing_recorder_under_the_trainer_callback_handler():
    trainer_callback = pytest.importorskip("transformers.trainer_callback")
    layer = make_layer(num_experts=[3], fanout=[1], rank=[2])
    layer(torch.randn(4, 8, dtype=torch.float64))
    recorder = RoutingRecorder()
    handler = trainer_callback.CallbackHandler([recorder], layer, None, None, None)
    state, control = trainer_callback.TrainerState(), trainer_callback.TrainerControl()
    state.global_step = 3
    handler.on_train_begin(None, state, control)
    handler.on_step_end(None, state, control)
    assert [h["step"] for h in recorder.history] == [3]


LN2 = math.log(2)


# ---- information (the task NMI of routing health) ----
def test_entropy_and_mutual_information_by_hand():
    assert entropy([0, 0, 1, 1]) == pytest.approx(LN2)
    assert entropy(["a", "b", "c", "d"]) == pytest.approx(math.log(4))
    assert entropy([7, 7, 7]) == 0.0
    # a = [0,0,1,1], b = [0,0,0,1]: p(a,b) = {(0,0): 1/2, (1,0): 1/4, (1,1): 1/4}
    expected = 0.5 * math.log(0.5 / (0.5 * 0.75)) + 0.25 * math.log(0.25 / (0.5 * 0.75))
    expected += 0.25 * math.log(0.25 / (0.5 * 0.25))
    assert mutual_information([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(expected)
    hb = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    nmi = normalized_mutual_info([0, 0, 1, 1], [0, 0, 0, 1])
    assert nmi == pytest.approx(expected / ((LN2 + hb) / 2))
    geo = normalized_mutual_info([0, 0, 1, 1], [0, 0, 0, 1], average="geometric")
    assert geo == pytest.approx(expected / math.sqrt(LN2 * hb))


def test_nmi_extremes_and_label_names_do_not_matter():
    tasks = ["a", "b", "c"] * 20
    own_expert = [{"a": 5, "b": 1, "c": 3}[t] for t in tasks]
    assert normalized_mutual_info(tasks, own_expert) == pytest.approx(1.0)
    assert normalized_mutual_info(tasks, [2] * len(tasks)) == 0.0  # constant router
    # independent by construction: every (task, expert) pair equally often
    crossed = [(t, e) for t in "ab" for e in range(3)] * 4
    assert normalized_mutual_info([t for t, _ in crossed], [e for _, e in crossed]) == (
        pytest.approx(0.0, abs=1e-12)
    )


def test_nmi_of_rows_and_errors():
    rows = np.array([[0, 1], [0, 1], [2, 3], [2, 3]])  # each row is one label
    assert normalized_mutual_info(["x", "x", "y", "y"], rows) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="average"):
        normalized_mutual_info([0, 1], [0, 1], average="max")
    with pytest.raises(ValueError, match="same samples"):
        mutual_information([0, 1], [0, 1, 1])

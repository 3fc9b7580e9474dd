"""Tests of the routing-health metrics (issue 10 item 2) on hand-made routings and models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from smore_gnn.analysis import (
    CollectedRouting,
    RoutingHealthCallback,
    collect_routings,
    gate_spread,
    health_of,
    last_forward_health,
    layer_ids,
    load_health,
    module_health,
    routing_health,
    structure_ids,
    summarize,
    text_batches,
    token_texts,
    tree_signature,
)
from smore_gnn.nn.tree import RoutingTree
from tests.conftest import make_layer


# ---- per-layer metrics ------------------------------------------------------------------
def test_gate_spread_by_hand():
    scores = torch.tensor([[0.7, 0.3, 0.5, 0.5], [0.9, 0.1, 0.2, 0.8]])
    spread = gate_spread(scores, fanout=2)  # events: (0.7, 0.3), (0.5, 0.5), ...
    assert spread.tolist() == pytest.approx([0.4, 0.0, 0.8, 0.6])
    assert gate_spread(scores, fanout=4).tolist() == pytest.approx([0.4, 0.8])
    assert gate_spread(scores, fanout=1).tolist() == [0.0] * 8  # one child: 0 by definition
    with pytest.raises(ValueError, match="multiple of fanout=3"):
        gate_spread(scores, fanout=3)


def test_load_health_by_hand():
    # 4 events of fanout 2 (8 picks): expert 0 is in every event
    out = load_health([4, 2, 2, 0], fanout=2)
    assert out["load_share"] == pytest.approx([0.5, 0.25, 0.25, 0.0])
    assert out["top_share"] == pytest.approx(1.0)
    assert out["uniform_top_share"] == pytest.approx(0.5)
    ent = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)) / math.log(4)
    assert out["load_entropy"] == pytest.approx(ent) and ent == pytest.approx(0.75)
    assert out["collapsed"]
    balanced = load_health([2, 2, 2, 2], fanout=2)
    assert balanced["top_share"] == pytest.approx(0.5) and balanced["load_entropy"] == 1.0
    assert not balanced["collapsed"]
    assert load_health([3, 1, 0], fanout=1)["top_share"] == pytest.approx(0.75)


def test_structure_ids_agree_with_tree_signature():
    torch.manual_seed(0)
    n, fanout = 60, [2, 2]
    top = torch.stack([torch.randperm(3)[:2] for _ in range(n)])  # distinct siblings
    bottom = torch.stack([torch.cat([torch.randperm(3)[:2] for _ in range(2)]) for _ in range(n)])
    tree = RoutingTree([bottom, top], [torch.rand(n, 4), torch.rand(n, 2)], fanout)
    ids = structure_ids(tree).tolist()
    sigs = [tree_signature(tree, t) for t in range(n)]
    for i in range(n):
        for j in range(n):
            assert (ids[i] == ids[j]) == (sigs[i] == sigs[j])
    assert len(set(ids)) == len(set(sigs)) > 5


def test_structure_ids_count_every_structure_of_the_closed_form():
    enumerate_ = pytest.importorskip("theory.enumerate")
    tree = enumerate_.structures([4, 4], [2, 2])  # one token per S'MoRE structure
    assert structure_ids(tree).unique().numel() == 216  # Gamma_S'MoRE for (4-4), f = 2


def test_layer_ids_are_order_free_multisets():
    bottom = torch.tensor([[0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 2, 1], [0, 0, 1, 1]])
    tree = RoutingTree(
        [bottom, torch.zeros(4, 2, dtype=torch.long)], [torch.ones(4, 4)] * 2, [2, 2]
    )
    ids = layer_ids(tree, 0).tolist()
    assert ids[0] == ids[1] == ids[3] != ids[2]


def specialised_tree(tasks: list[int]) -> RoutingTree:
    """Task k routes every token to top experts {2k, 2k+1}, children {0, 1} under each."""
    top = torch.tensor([[2 * k, 2 * k + 1] for k in tasks])
    bottom = torch.tensor([[0, 1, 1, 0]] * len(tasks))
    scores = [torch.full((len(tasks), 4), 0.5), torch.tensor([[0.9, 0.1]] * len(tasks))]
    return RoutingTree([bottom, top], scores, [2, 2])


def test_module_health_of_a_specialised_and_a_constant_router():
    tasks = torch.tensor([0, 1, 2] * 10)
    health = module_health(specialised_tree(tasks.tolist()), [2, 6], tasks)
    bottom, top = health["layers"]
    assert top["task_nmi"] == pytest.approx(1.0) and health["task_nmi_tree"] == pytest.approx(1.0)
    assert bottom["task_nmi"] == 0.0  # every token uses {0, 1} below: a constant
    assert top["spread_median"] == pytest.approx(0.8) and bottom["spread_median"] == 0.0
    assert top["top_share"] == pytest.approx(1 / 3) and top["uniform_top_share"] == 2 / 6
    assert top["task_expert_counts"] == [
        [10, 10, 0, 0, 0, 0],
        [0, 0, 10, 10, 0, 0],
        [0, 0, 0, 0, 10, 10],
    ]
    assert health["distinct_structures"] == 3 and health["tokens"] == 30
    constant = module_health(specialised_tree([0] * 30), [2, 6], tasks)
    assert constant["task_nmi_tree"] == 0.0 and constant["layers"][1]["task_nmi"] == 0.0
    assert constant["layers"][1]["top_share"] == 1.0 and constant["layers"][1]["collapsed"]


def collected(sequence_tasks: list[str], tokens_per_sequence: int) -> CollectedRouting:
    """A specialised router over sequences of equal length, tasks spread to their tokens."""
    names = sorted(set(sequence_tasks))
    sequence = torch.arange(len(sequence_tasks)).repeat_interleave(tokens_per_sequence)
    codes = [names.index(sequence_tasks[s]) for s in sequence.tolist()]
    return CollectedRouting(
        {"m": specialised_tree(codes)}, {"m": [2, 2 * len(names)]}, sequence, sequence_tasks
    )


def test_shuffled_control_is_near_zero_for_many_sequences():
    rng = np.random.default_rng(1)
    tasks = [str(t) for t in rng.integers(0, 3, size=3000)]
    health = health_of(collected(tasks, tokens_per_sequence=2), seed=0)
    module, summary = health["modules"]["m"], health["summary"]
    assert module["task_nmi_tree"] == pytest.approx(1.0)
    assert 0.0 <= module["task_nmi_tree_shuffled"] < 0.01
    assert summary["task_nmi"] == pytest.approx(1.0) and summary["task_nmi_shuffled"] < 0.01
    assert module["tasks"] == ["0", "1", "2"]
    again = health_of(collected(tasks, tokens_per_sequence=2), seed=0)["summary"]
    assert again["task_nmi_shuffled"] == summary["task_nmi_shuffled"]  # seeded


def test_summarize_by_hand():
    def layer(spread, top, ent, fanout=2, nmi=0.5, collapsed=False):
        return {
            "spread_median": spread,
            "top_share": top,
            "load_entropy": ent,
            "fanout": fanout,
            "task_nmi": nmi,
            "collapsed": collapsed,
        }

    modules = {
        "a": {
            "layers": [layer(0.1, 0.5, 1.0, fanout=1), layer(0.2, 0.9, 0.6, nmi=0.3)],
            "distinct_structures": 4,
            "task_nmi_tree": 0.4,
        },
        "b": {
            "layers": [layer(0.3, 1.0, 0.8, collapsed=True), layer(0.6, 0.7, 0.9, nmi=0.1)],
            "distinct_structures": 8,
            "task_nmi_tree": 0.2,
        },
    }
    out = summarize(modules, 123)
    assert out["median_spread"] == pytest.approx(0.3)  # f=1 layer left out: 0.2, 0.3, 0.6
    assert out["max_top_share"] == 0.9 and out["median_top_share"] == pytest.approx(0.8)
    assert out["max_top_share_any_layer"] == 1.0 and out["num_collapsed"] == 1
    assert out["mean_load_entropy"] == pytest.approx(0.825) and out["min_load_entropy"] == 0.6
    assert out["median_distinct_structures"] == 6 and out["num_tokens"] == 123
    assert out["task_nmi"] == pytest.approx(0.3) and out["task_nmi_top_layer"] == 0.2
    assert out["task_nmi_layer_0"] == 0.5 and "task_nmi_shuffled" not in out


# ---- on models --------------------------------------------------------------------------
class Toy(nn.Module):
    """Embedding -> one SMoRELinear; called like a HF model."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8).double()
        self.lin = make_layer(num_experts=[4, 3], fanout=[2, 2], rank=[2, 2], gate_type="switch")

    def forward(self, input_ids, attention_mask=None):
        return self.lin(self.emb(input_ids))


def test_collect_routings_keeps_valid_tokens_in_order_with_their_task():
    toy = Toy().train()
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    batches = [{"input_ids": ids, "attention_mask": mask}, {"input_ids": ids[:1, :2]}]
    toy(ids[:1])
    before = toy.lin.last_routing
    out = collect_routings(toy, batches, ["x", "y", "z"])
    assert toy.training and toy.lin.training  # modes restored
    assert toy.lin.last_routing is before  # and the training forward's routing
    assert out.sequence.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert out.token_tasks == ["x"] * 3 + ["y"] * 2 + ["z"] * 2
    valid_ids = torch.tensor([1, 2, 3, 4, 5, 1, 2])
    with torch.no_grad():
        toy.eval()
        direct = toy.lin.router(toy.emb(valid_ids))
    tree = out.trees["lin"]
    for l in range(2):
        assert torch.equal(tree.experts[l].long(), direct.experts[l])
        assert torch.allclose(tree.scores[l], direct.scores[l].float())
    with pytest.raises(ValueError, match="one task per sequence: 3 sequences"):
        collect_routings(toy, batches, ["x"])
    with pytest.raises(ValueError, match="no S'MoRE adapters"):
        collect_routings(nn.Linear(2, 2), batches)
    with pytest.raises(TypeError, match="input_ids"):
        collect_routings(toy, [ids])


def test_last_forward_health_leaves_padding_out():
    toy = Toy().eval()
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    held_out = routing_health(toy, [{"input_ids": ids, "attention_mask": mask}])
    with torch.no_grad():
        toy(ids)
    last = last_forward_health({"lin": toy.lin}, attention_mask=mask)
    assert last["modules"]["lin"]["layers"] == held_out["modules"]["lin"]["layers"]
    assert last_forward_health({"lin": toy.lin})["summary"]["num_tokens"] == 8
    with pytest.raises(ValueError, match="attention_mask has 3 entries"):
        last_forward_health({"lin": toy.lin}, attention_mask=torch.ones(3))


def tiny_smore():
    try:
        from smore_gnn.hf.testing import tiny_llama
    except ImportError:  # until the fixtures move to smore_gnn.hf.testing
        from smore_gnn.hf.loading import tiny_llama
    from smore_gnn.hf.methods import smore_paper_config
    from smore_gnn.hf.model import get_smore_model

    model, tokenizer = tiny_llama(num_layers=1)
    torch.manual_seed(0)
    return get_smore_model(model, smore_paper_config()), tokenizer


def test_routing_health_end_to_end_on_a_tiny_llama():
    smore, tokenizer = tiny_smore()
    smore.train()
    texts = ["The cat sat.", "2 + 2 = 4", "Bonjour le monde, salut", "H: hydrogen"] * 3
    tasks = ["animals", "math", "french", "chemistry"] * 3
    batches = text_batches(tokenizer, texts, batch_size=5)
    assert [len(b["input_ids"]) for b in batches] == [5, 5, 2]
    pieces = token_texts(tokenizer, batches)  # byte tokenizer: one character a token
    assert "".join(pieces) == "".join(texts)
    health = routing_health(smore, batches, tasks, seed=3)
    assert smore.training and all(p.grad is None for p in smore.parameters())
    json.dumps(health, allow_nan=False)  # JSON-ready
    valid = sum(int(b["attention_mask"].sum()) for b in batches)
    assert set(health["modules"]) == set(smore.adapters())
    for module in health["modules"].values():
        assert module["tokens"] == valid and module["tasks"] == sorted(set(tasks))
        for layer in module["layers"]:
            assert sum(map(sum, layer["task_expert_counts"])) == layer["events"] * layer["fanout"]
            assert 0.0 <= layer["task_nmi_shuffled"] <= 1.0 and 0.0 <= layer["task_nmi"] <= 1.0
    summary = health["summary"]
    assert summary["num_tokens"] == valid and summary["num_modules"] == len(smore.adapters())
    for key in (
        "median_spread",
        "max_top_share",
        "median_top_share",
        "mean_load_entropy",
        "task_nmi",
        "task_nmi_shuffled",
    ):
        assert isinstance(summary[key], float)


def test_callback_logs_the_summary_with_a_prefix():
    from types import SimpleNamespace

    toy = Toy()
    batches = [{"input_ids": torch.tensor([[1, 2, 3], [4, 5, 6]])}]
    callback = RoutingHealthCallback(batches, ["a", "b"], every_n_steps=2)
    state = SimpleNamespace(global_step=1, log_history=[])
    callback.on_step_end(None, state, None, model=toy)
    assert callback.history == []  # step 1 is not a multiple of 2
    state.global_step = 2
    callback.on_step_end(None, state, None, model=toy)
    state.log_history.append({"loss": 1.0, "step": 2})
    logs = {"loss": 1.0}
    callback.on_log(None, state, None, logs=logs)
    assert logs["routing/task_nmi"] == callback.history[0]["task_nmi"]
    assert state.log_history[-1]["routing/median_spread"] == callback.history[0]["median_spread"]
    metrics = {"eval_loss": 2.0}
    callback.on_evaluate(None, state, None, metrics=metrics, model=toy)
    assert "routing/task_nmi_shuffled" in metrics and len(callback.history) == 1
    callback.on_train_begin(None, state, None)  # any other event is a no-op
    with pytest.raises(ValueError, match="every_n_steps"):
        RoutingHealthCallback(batches, every_n_steps=0)


def test_callback_under_the_trainer_callback_handler():
    trainer_callback = pytest.importorskip("transformers.trainer_callback")
    toy = Toy()
    batches = [{"input_ids": torch.tensor([[1, 2, 3], [4, 5, 6]])}]
    callback = RoutingHealthCallback(batches, ["a", "b"], every_n_steps=1)
    handler = trainer_callback.CallbackHandler([callback], toy, None, None, None)
    state, control = trainer_callback.TrainerState(), trainer_callback.TrainerControl()
    state.global_step = 1
    handler.on_train_begin(None, state, control)
    handler.on_step_end(None, state, control)
    logs = {"loss": 0.5}
    state.log_history.append({**logs, "step": 1})
    handler.on_log(None, state, control, logs)
    assert logs["routing/num_tokens"] == 6 and state.log_history[-1]["routing/num_tokens"] == 6
    metrics = {"eval_loss": 1.0}
    handler.on_evaluate(None, state, control, metrics)
    assert metrics["routing/task_nmi"] == callback.history[-1]["task_nmi"]

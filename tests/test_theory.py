"""theory/: the structural-flexibility counts by brute force through the real GNN."""

from __future__ import annotations

import math

import networkx as nx
import pytest
import torch
from torch_geometric.utils import to_networkx

from smore_gnn import RoutingTree
from smore_gnn.nn.counting import (
    figure2_values,
    momor_upper_bound,
    nodes_per_layer,
    num_structures,
    smore_star_structures,
    uniform_layers,
)
from tests.test_counting import HAND  # (s, f, Gamma_S'MoRE, MoMOR bound, S'MoRE*) by hand
from theory import cli
from theory.count import generic_layer, measure, structure_outputs
from theory.distinct import close_pairs, distinct_rows
from theory.enumerate import decode, iter_structures, structures
from theory.figures import figure2
from theory.isomorphism import canonical_classes, canonical_ids, data_to_graph, wl_classes, wl_hash
from theory.propositions import (
    check_figure2,
    check_figure3,
    check_lora,
    check_prop_3_1,
    check_prop_3_2,
    check_rewiring,
)

SMALL = [
    ([2], [1]),
    ([5], [3]),
    ([2, 2], [1, 1]),
    ([3, 3], [2, 2]),
    ([3, 3], [1, 2]),
    ([4, 4], [2, 2]),
    ([4, 3], [3, 1]),
    ([5, 2], [2, 1]),
    ([3, 4], [2, 1]),
    ([2, 3, 2], [1, 2, 2]),
    ([3, 2, 2], [2, 1, 2]),
    ([2, 2, 2], [1, 1, 1]),
]


@pytest.mark.parametrize("num_experts, fanout, smore, momor, star", HAND)
def test_closed_forms_against_hand_values(num_experts, fanout, smore, momor, star):
    """theory's names for the formulas of smore_gnn.nn.counting, and the enumeration's count."""
    assert num_structures(num_experts, fanout) == smore
    assert momor_upper_bound(num_experts, fanout) == momor
    assert smore_star_structures(num_experts, fanout) == star
    assert num_structures(num_experts, fanout) == smore


def test_closed_form_helpers():
    assert nodes_per_layer([2, 3, 2]) == [12, 6, 2, 1]
    assert uniform_layers(4, 2, 3) == ([4, 4, 4], [2, 2, 2])
    assert figure2_values() == [(1, 6, 6), (2, 216, 66), (3, 279_936, 726)]
    with pytest.raises(ValueError, match="fanout"):
        num_structures([3], [4])


def test_enumeration_is_complete_and_duplicate_free():
    num_experts, fanout = [3, 4], [2, 2]
    tree = structures(num_experts, fanout)
    assert tree.num_tokens == 54 and [e.shape for e in tree.experts] == [
        (54, 4),
        (54, 2),
    ]  # 3^2 * 6
    for l, f in enumerate(fanout):  # every parent's children: sorted, hence distinct
        groups = tree.experts[l].view(-1, f)
        assert bool((groups[:, 1:] > groups[:, :-1]).all())
    assert canonical_classes(tree) == 54  # no two enumerated trees are isomorphic
    chunks = list(iter_structures(num_experts, fanout, chunk_size=25))
    assert [c.num_tokens for c in chunks] == [25, 25, 4]
    for l in range(2):
        assert torch.equal(torch.cat([c.experts[l] for c in chunks]), tree.experts[l])
    picked = decode(num_experts, fanout, torch.tensor([7, 50]))
    assert torch.equal(picked.experts[0], tree.experts[0][[7, 50]])
    with pytest.raises(ValueError, match="structure numbers"):
        decode(num_experts, fanout, torch.tensor([54]))


def test_router_trees_are_enumerated_and_give_the_same_output():
    num_experts, fanout = [3, 4], [2, 2]
    layer = generic_layer(num_experts, fanout, seed=1)
    x = torch.randn(64, 8, dtype=torch.float64)
    layer(x)
    routed = layer.last_tree
    half = [torch.full_like(s, 0.5, dtype=torch.float64) for s in routed.scores]
    routed = RoutingTree(routed.experts, half, routed.fanout)
    everything = structures(num_experts, fanout)
    both = RoutingTree(
        [torch.cat([a, b]) for a, b in zip(everything.experts, routed.experts)],
        [torch.cat([a, b]) for a, b in zip(everything.scores, routed.scores)],
        fanout,
    )
    ids, n = canonical_ids(both), everything.num_tokens
    match = (ids[n:, None] == ids[None, :n]).long().argmax(1)  # enumerated twin
    assert bool((ids[n:] == ids[:n][match]).all())
    with torch.no_grad():
        out_routed = layer.propagate_tree(x, routed)
        twins = decode(num_experts, fanout, match)
        out_twins = layer.propagate_tree(x, twins)
    torch.testing.assert_close(out_routed, out_twins, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("num_experts, fanout", SMALL)
def test_brute_force_equals_closed_forms(num_experts, fanout):
    smore = measure(num_experts, fanout, "smore", tokens=2)
    momor = measure(num_experts, fanout, "momor", tokens=2)
    star = measure(num_experts, fanout, "smore_star", tokens=2)
    assert smore.counts == [num_structures(num_experts, fanout)] * 2
    assert momor.counts == [momor_upper_bound(num_experts, fanout)] * 2  # generic: tight
    assert star.counts == [smore_star_structures(num_experts, fanout)] * 2
    for m in (smore, momor, star):  # classes far apart, members equal up to round-off
        assert m.max_within < 1e-13
        assert m.min_gap > 1e-6 or m.min_gap == math.inf


def test_identity_activation_collapses_smore():
    # Without a nonlinearity S'MoRE is linear in the tree: fewer distinct outputs than Gamma.
    smore = measure([3, 3], [2, 2], "smore", tokens=1, act="identity")
    assert smore.min_count < num_structures([3, 3], [2, 2])


def test_positional_edge_weights_separate_smore_star():
    star = measure([3, 3], [2, 2], "smore_star", tokens=1, edge_weights="positional")
    assert star.min_count == num_structures([3, 3], [2, 2]) > smore_star_structures([3, 3], [2, 2])


def test_structure_outputs_chunked_equals_single_pass():
    layer = generic_layer([3, 3], [2, 2], seed=2)
    x = torch.randn(8, dtype=torch.float64)
    torch.testing.assert_close(
        structure_outputs(layer, x),
        structure_outputs(layer, x, chunk_size=5),
        rtol=1e-13,
        atol=1e-15,
    )


def test_distinct_rows_tolerance_and_gaps():
    gen = torch.Generator().manual_seed(0)
    centres = torch.rand(50, 5, generator=gen, dtype=torch.float64) * 1.8 - 0.9
    centres[:, 0] = (torch.round(centres[:, 0] / 1e-9) + 0.5) * 1e-9  # on rounding boundaries
    centres[:, 4] = 1.0  # max|values| = 1: the grid is 1e-9 in absolute units
    members = centres.repeat(20, 1)  # [1000, 5], class = row % 50
    members[:, 0] += 1e-15 * (torch.arange(1000) // 50 % 2 * 2 - 1)  # both sides of the boundary
    members[:, 1:4] += 1e-14 * torch.randn(1000, 3, generator=gen, dtype=torch.float64)
    assert len(torch.unique(torch.round(members / 1e-9), dim=0)) > 50  # rounding alone splits
    res = distinct_rows(members)
    assert res.count == 50
    assert torch.equal(res.labels.view(20, 50), res.labels[:50].expand(20, 50))
    true_gap = float(torch.cdist(centres, centres).fill_diagonal_(math.inf).min())
    assert res.min_gap_exact and res.min_gap == pytest.approx(true_gap, rel=1e-9)
    assert 1e-15 < res.max_within < 1e-12


def test_close_pairs_matches_brute_force():
    points = torch.rand(400, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (i, j), d = close_pairs(points, 0.15)
    dist = torch.cdist(points, points)
    expected = {(a, b) for a, b in (dist <= 0.15).triu(1).nonzero().tolist()}
    assert {tuple(sorted(p)) for p in zip(i.tolist(), j.tolist())} == expected
    torch.testing.assert_close(d, dist[i, j])


@pytest.mark.parametrize("num_experts, fanout", [([3, 3], [2, 2]), ([2, 3, 2], [1, 2, 2])])
def test_wl_classes_equal_smore_count(num_experts, fanout):
    tree = structures(num_experts, fanout)
    assert wl_classes(tree) == num_structures(num_experts, fanout) == canonical_classes(tree)
    data = tree.get_example(5)  # the fast path builds the same graphs as get_example
    graph = to_networkx(data, node_attrs=["layer", "expert"], to_undirected=True)
    labels = {n: f"{a['layer']}:{a['expert']}" for n, a in graph.nodes(data=True)}
    nx.set_node_attributes(graph, labels, "label")
    assert wl_hash(graph, len(fanout)) == wl_hash(data_to_graph(data), len(fanout))


def test_wl_sees_sibling_order_as_irrelevant_but_wiring_as_relevant():
    tree = RoutingTree(
        [torch.tensor([[0, 1, 2, 3], [2, 3, 0, 1], [0, 2, 1, 3]]), torch.tensor([[0, 1]] * 3)],
        [torch.full((3, 4), 0.5), torch.full((3, 2), 0.5)],
        [2, 2],
    )
    hashes = [wl_hash(data_to_graph(tree.get_example(i)), 2) for i in range(3)]
    assert hashes[0] != hashes[1] != hashes[2] != hashes[0]  # children move between parents
    swapped = RoutingTree(
        [torch.tensor([[0, 1, 2, 3]]), torch.tensor([[1, 0]])],
        [torch.full((1, 4), 0.5), torch.full((1, 2), 0.5)],
        [2, 2],
    )  # parent 1 first now, but parent 1 still owns {0, 1}: a different tree
    assert wl_hash(data_to_graph(swapped.get_example(0)), 2) == hashes[1]


@pytest.mark.parametrize(
    "check", [check_lora, check_prop_3_1, check_prop_3_2, check_rewiring], ids=lambda c: c.__name__
)
def test_propositions(check):
    result = check()
    assert result.passed, str(result)


def test_figure2_and_figure3():
    fig2 = check_figure2(brute_force_layers=2, tokens=1)
    assert fig2.passed and fig2.detail["L1"] == "6 vs 6" and fig2.detail["L2"] == "216 vs 66"
    case_a, case_bc = check_figure3()
    assert case_a.passed, str(case_a)
    assert case_bc.passed, str(case_bc)
    assert case_bc.detail["smore"] > 1e-6 and case_bc.detail["smore_star"] < 1e-12
    fig = figure2(measured={"smore": {1: 6, 2: 216}})
    assert fig.axes[0].get_yscale() == "log" and len(fig.axes[0].lines) == 4


def test_cli_tiny_grid(capsys, tmp_path):
    png = tmp_path / "fig2.png"
    args = ["verify", "--max-s", "3", "--max-f", "2", "--max-layers", "2", "--seeds", "1"]
    assert cli.main([*args, "--skip-checks", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "G_SMoRE" in out and "ALL CHECKS PASSED" in out and png.stat().st_size > 10_000
    rows = [line for line in out.splitlines() if line.lstrip()[:1].isdigit()]
    assert len(rows) == len(cli.grid(3, 2, 2)) == 10
    assert rows[-1].split()[:15] == [
        "3",
        "2",
        "2",
        "|",
        "27",
        "27",
        "|",
        "12",
        "12",
        "|",
        "18",
        "18",
        "|",
        "27",
        "27",
    ]


def test_cli_reports_mismatch(monkeypatch, capsys):
    monkeypatch.setattr(cli, "num_structures", lambda s, f: 5)  # a wrong closed form
    args = ["verify", "--max-s", "2", "--max-layers", "1", "--seeds", "1", "--skip-checks"]
    assert cli.main(args) == 1
    assert "NO" in capsys.readouterr().out

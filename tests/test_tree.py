"""Routing trees as batched PyG graphs (docs/spec.md §4)."""

import dataclasses

import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.utils import to_networkx

from smore_gnn import RoutingTree, SMoREConfig, SMoRERouter, build_routing_tree


def _tree(num_tokens=5, cfg=None):
    cfg = cfg or SMoREConfig(num_experts=[4, 3, 5], fanout=[2, 2, 3], rank=[1, 1, 1])
    return build_routing_tree(SMoRERouter(6, cfg)(torch.randn(num_tokens, 6))), cfg


def _per_token_data(tree: RoutingTree, n: int) -> Data:
    """The straightforward builder: loop over layers and nodes of one token."""
    nodes_per_layer = tree.nodes_per_layer
    offsets = [sum(nodes_per_layer[:l]) for l in range(len(nodes_per_layer))]
    layer, expert, src, dst, weight = [], [], [], [], []
    for l, count in enumerate(nodes_per_layer):
        for j in range(count):
            layer.append(l)
            expert.append(int(tree.experts[l][n, j]) if l < tree.num_layers else -1)
            if l < tree.num_layers:
                src.append(offsets[l] + j)
                dst.append(offsets[l + 1] + j // tree.fanout[l])
                weight.append(float(tree.scores[l][n, j].detach()))
    return Data(
        edge_index=torch.tensor([src, dst]),
        edge_weight=torch.tensor(weight),
        layer=torch.tensor(layer),
        expert=torch.tensor(expert),
        num_nodes=len(layer),
    )


def test_batch_equals_from_data_list():
    tree, _ = _tree()
    batch = tree.to_batch()
    ref = Batch.from_data_list([_per_token_data(tree, n) for n in range(tree.num_tokens)])
    assert isinstance(batch, Batch) and batch.num_graphs == ref.num_graphs == 5
    for key in ["edge_index", "edge_weight", "layer", "expert", "batch", "ptr"]:
        assert torch.equal(batch[key], ref[key]), key
    assert batch.num_nodes == ref.num_nodes
    for n in range(tree.num_tokens):
        a, b = batch.get_example(n), ref.get_example(n)
        for key in ["edge_index", "edge_weight", "layer", "expert"]:
            assert torch.equal(a[key], b[key]), key
        assert a.num_nodes == b.num_nodes == 1 + 3 + 6 + 12
    assert torch.equal(tree.get_example(3).expert, ref.get_example(3).expert)


def test_layer_major_graph_matches_per_token_builder():
    tree, cfg = _tree(num_tokens=4)
    nodes = cfg.nodes_per_layer
    assert tree.edge_index.shape == (2, 4 * sum(nodes[:-1]))
    assert tree.num_nodes == 4 * sum(nodes)
    for l, (a, b) in enumerate(tree.edge_slices):
        src, dst = tree.edge_index[:, a:b]
        assert (tree.node_layer[src] == l).all() and (tree.node_layer[dst] == l + 1).all()
        assert torch.equal(tree.batch[src], tree.batch[dst])  # edges stay inside one token
        torch.testing.assert_close(tree.edge_weight[a:b], tree.scores[l].reshape(-1))
    # Every token's subgraph, relabelled, is the per-token tree.
    for n in range(4):
        ref = _per_token_data(tree, n)
        nodes_n = (tree.batch == n).nonzero().flatten()
        relabel = torch.full((tree.num_nodes,), -1)
        order = torch.argsort(tree.node_layer[nodes_n], stable=True)
        relabel[nodes_n[order]] = torch.arange(len(nodes_n))
        keep = tree.batch[tree.edge_index[0]] == n
        assert torch.equal(relabel[tree.edge_index[:, keep]], ref.edge_index)
        assert torch.equal(tree.expert[nodes_n[order]], ref.expert)


def test_to_networkx_accepts_a_tree():
    tree, _ = _tree(num_tokens=2)
    graph = to_networkx(
        tree.get_example(1), node_attrs=["layer", "expert"], edge_attrs=["edge_weight"]
    )
    assert graph.number_of_nodes() == 22 and graph.number_of_edges() == 21
    roots = [v for v, d in graph.out_degree() if d == 0]
    assert len(roots) == 1 and graph.nodes[roots[0]]["layer"] == 3


def test_layer_edges_and_first_use():
    tree = RoutingTree(
        experts=[torch.tensor([[1, 2, 1, 0]]), torch.tensor([[3, 0]])],
        scores=[torch.ones(1, 4), torch.ones(1, 2)],
        fanout=[2, 2],
    )
    assert tree.layer_edge_index(0).tolist() == [[0, 1, 2, 3], [0, 0, 1, 1]]
    assert tree.first_use(0).tolist() == [[True, True, False, True]]
    assert tree.expert.tolist() == [1, 2, 1, 0, 3, 0, -1]


def test_tree_is_frozen_so_cached_graph_cannot_go_stale():
    tree, _ = _tree(num_tokens=2)
    weight = tree.edge_weight
    with pytest.raises(dataclasses.FrozenInstanceError):
        tree.scores = [s * 0 for s in tree.scores]
    assert tree.edge_weight is weight

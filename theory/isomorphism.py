"""Isomorphism classes of labelled routing trees: the combinatorial side of Theorem 3.4.

Two routing trees give the same S'MoRE output exactly when they are isomorphic as rooted trees
with node labels ``(layer, expert)``. Two independent counts:

* :func:`wl_classes`: :func:`networkx.weisfeiler_lehman_graph_hash` of every tree, built from
  the token-major PyG batch of :meth:`smore_gnn.RoutingTree.to_batch` (slow, small configs);
* :func:`canonical_classes`: AHU canonical forms computed bottom-up with tensor ops (a node's
  form is its expert plus the sorted forms of its children), fast enough for every config.
"""

from __future__ import annotations

from collections.abc import Iterator

import networkx as nx
import torch
from torch import Tensor
from torch_geometric.data import Data

from smore_gnn import RoutingTree
from theory.distinct import row_ids


def _label(layer: int, expert: int) -> str:
    return f"{layer}:{expert}"


def data_to_graph(data: Data) -> nx.Graph:
    """One token's tree (a PyG ``Data`` with ``layer`` and ``expert``) as a labelled nx graph."""
    graph = nx.Graph()
    for node, (layer, expert) in enumerate(zip(data.layer.tolist(), data.expert.tolist())):
        graph.add_node(node, label=_label(layer, expert))
    graph.add_edges_from(data.edge_index.t().tolist())
    return graph


def tree_graphs(tree: RoutingTree) -> Iterator[nx.Graph]:
    """Every token's tree as an undirected nx graph with node attribute ``label``.

    Built from one :meth:`~smore_gnn.RoutingTree.to_batch` call: all trees share a shape, so
    the token-major tensors are sliced into equal blocks instead of calling ``get_example``.
    """
    batch = tree.to_batch()
    n, size = tree.num_tokens, sum(tree.nodes_per_layer)
    labels = [
        [_label(layer, expert) for layer, expert in zip(ls, es)]
        for ls, es in zip(batch.layer.view(n, size).tolist(), batch.expert.view(n, size).tolist())
    ]
    edges = batch.edge_index.view(2, n, -1)[:, 0, :].t().tolist()  # token 0's local edges
    for token_labels in labels:
        graph = nx.Graph(edges)
        nx.set_node_attributes(graph, dict(enumerate(token_labels)), "label")
        yield graph


def wl_hash(graph: nx.Graph, num_layers: int) -> str:
    """Weisfeiler-Lehman hash with ``L + 1`` rounds: enough for the root to see its whole tree."""
    return nx.weisfeiler_lehman_graph_hash(graph, node_attr="label", iterations=num_layers + 1)


def wl_classes(tree: RoutingTree) -> int:
    """Number of distinct WL hashes among the trees of ``tree``."""
    return len({wl_hash(g, tree.num_layers) for g in tree_graphs(tree)})


def canonical_ids(tree: RoutingTree) -> Tensor:
    """``[N]`` AHU canonical id of every token's tree: equal ids iff isomorphic trees.

    Bottom-up, a node's id numbers the distinct rows ``(expert, sorted children ids)``; ids are
    shared across the whole batch, so equal ids mean equal labelled rooted trees.
    """
    n, ids = tree.num_tokens, None
    for l, experts in enumerate(tree.experts):
        parents = experts.size(1)
        rows = experts.reshape(n * parents, 1)  # [N F_l, 1]
        if ids is not None:
            children = ids.view(n * parents, tree.fanout[l - 1]).sort(dim=1).values
            rows = torch.cat([rows, children], dim=1)  # [N F_l, 1 + f_{l-1}]
        ids = row_ids(rows)  # [N F_l]
    return row_ids(ids.view(n, tree.fanout[-1]).sort(dim=1).values)  # the root's children


def canonical_classes(tree: RoutingTree) -> int:
    """Number of isomorphism classes among the trees of ``tree`` (AHU canonical forms)."""
    return int(canonical_ids(tree).max()) + 1

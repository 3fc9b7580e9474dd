"""Draw routed sub-trees (docs/spec.md §4): one token's PyG tree, top-down, with networkx."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import networkx as nx
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch_geometric.data import Data
from torch_geometric.utils import to_networkx

from smore_gnn.analysis import TreeLike, as_tree
from smore_gnn.viz._common import grid, layer_color, layer_handles, new_axes, save


def tree_data(tree_or_data: TreeLike | Data, token: int = 0) -> Data:
    """Token ``token``'s tree as :class:`Data` (a :class:`Data` is returned unchanged)."""
    if isinstance(tree_or_data, Data):
        return tree_or_data
    return as_tree(tree_or_data).get_example(token)


def tree_layout(data: Data) -> dict[int, tuple[float, float]]:
    """Tidy top-down positions: leaves evenly spaced, each parent above its children's mean.

    ``y`` is the node's layer (root on top, layer 0 at the bottom); ``x`` follows a depth-first
    walk from the root that visits children in node order.

    Args:
        data: one token's tree (``layer`` attribute, ``edge_index`` child -> parent).

    Returns:
        ``{node: (x, y)}`` for every node.
    """
    layer = data.layer.tolist()
    children: dict[int, list[int]] = {n: [] for n in range(len(layer))}
    has_parent = set()
    for child, parent in data.edge_index.t().tolist():
        children[parent].append(child)
        has_parent.add(child)
    roots = [n for n in range(len(layer)) if n not in has_parent]
    pos: dict[int, tuple[float, float]] = {}
    next_leaf = 0.0

    def place(node: int) -> float:
        nonlocal next_leaf
        kids = sorted(children[node])
        if kids:
            x = sum(place(k) for k in kids) / len(kids)
        else:
            x, next_leaf = next_leaf, next_leaf + 1.0
        pos[node] = (x, float(layer[node]))
        return x

    for root in roots:
        place(root)
    return pos


def node_label(layer: int, expert: int) -> str:
    """``"L1:e3"`` for expert 3 of layer 1; ``"root"`` for the root (expert ``-1``)."""
    return "root" if expert < 0 else f"L{layer}:e{expert}"


def draw_routing_tree(
    tree_or_data: TreeLike | Data,
    token: int = 0,
    ax: Axes | None = None,
    path: str | Path | None = None,
    title: str | None = None,
    show_scores: bool = False,
    legend: bool = True,
) -> Figure:
    """Draw one token's routed sub-tree, root on top and layer 0 at the bottom.

    Nodes are labelled ``L<layer>:e<expert>`` and coloured by layer; an edge's width grows
    with its gate score ``alpha``.

    Args:
        tree_or_data: a :class:`RoutingTree`, :class:`RoutingResult`, an ``SMoRELinear``
            after a forward, or one token's :class:`Data` (``RoutingTree.get_example``).
        token: which token's tree to draw (ignored for a :class:`Data`).
        ax: draw into these axes (default: a new figure).
        path: save the figure there when given.
        title: axes title (default: ``"token <token>"``).
        show_scores: write each edge's gate score on it.
        legend: add a layer-colour legend.

    Returns:
        The matplotlib :class:`Figure`.
    """
    data = tree_data(tree_or_data, token)
    graph = to_networkx(data, node_attrs=["layer", "expert"], edge_attrs=["edge_weight"])
    pos = tree_layout(data)
    num_layers = int(data.layer.max())
    leaves = sum(1 for n in graph if graph.in_degree(n) == 0)
    fig, ax = new_axes(ax, (max(3.0, 1.0 * leaves + 0.6), 1.1 * (num_layers + 1) + 0.4))
    nodes = list(graph.nodes)
    attrs = graph.nodes
    nx.draw_networkx_nodes(
        graph,
        pos,
        nodelist=nodes,
        ax=ax,
        node_size=900,
        node_color=[layer_color(attrs[n]["layer"], num_layers) for n in nodes],
        edgecolors="black",
        linewidths=0.8,
    )
    edges = list(graph.edges)
    weights = [float(graph.edges[e]["edge_weight"]) for e in edges]
    nx.draw_networkx_edges(
        graph,
        pos,
        edgelist=edges,
        ax=ax,
        width=[0.8 + 5.0 * min(abs(w), 1.0) for w in weights],
        edge_color="#424242",
        arrows=False,
        node_size=900,
    )
    labels = {n: node_label(attrs[n]["layer"], attrs[n]["expert"]) for n in nodes}
    nx.draw_networkx_labels(graph, pos, labels=labels, ax=ax, font_size=8)
    if show_scores:
        nx.draw_networkx_edge_labels(
            graph,
            pos,
            edge_labels={e: f"{w:.2f}" for e, w in zip(edges, weights)},
            ax=ax,
            font_size=7,
        )
    xs = [p[0] for p in pos.values()]
    ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    ax.set_ylim(-0.5, num_layers + 0.5)
    ax.set_axis_off()
    ax.set_title(f"token {token}" if title is None else title, fontsize=10)
    if legend:
        ax.legend(handles=layer_handles(num_layers), loc="upper left", fontsize=7, frameon=False)
    return save(fig, path)


def draw_routing_trees(
    trees: TreeLike | Sequence[TreeLike | Data],
    tokens: int | Sequence[int] | None = None,
    labels: Sequence[str] | None = None,
    ncols: int | None = None,
    path: str | Path | None = None,
    title: str | None = None,
    show_scores: bool = False,
) -> Figure:
    """Several routed trees side by side, one panel each.

    Either one routing (``trees`` a :class:`RoutingTree`, :class:`RoutingResult` or layer)
    and several ``tokens`` (default: every token), e.g. every token of a short prompt; or a
    list of routings, e.g. one per adapted module, and one token (``tokens`` an int, default
    0) or one token per routing.

    Args:
        trees: one routing or a list of routings / per-token :class:`Data`.
        tokens: tokens to draw (see above).
        labels: panel titles, e.g. the token texts or the module names.
        ncols: panels per row (default: all in one row).
        path: save the figure there when given.
        title: figure title.
        show_scores: write the gate scores on the edges.

    Returns:
        The matplotlib :class:`Figure`.
    """
    if isinstance(trees, Sequence):
        items = list(trees)
        if tokens is None or isinstance(tokens, int):
            tokens = [tokens or 0] * len(items)
        if len(tokens) != len(items):
            raise ValueError(f"Expected one token per tree ({len(items)}) (got {len(tokens)})")
        panels = [tree_data(t, k) for t, k in zip(items, tokens)]
        names = [f"tree {i}, token {k}" for i, k in enumerate(tokens)]
    else:
        tree = as_tree(trees)
        tokens = range(tree.num_tokens) if tokens is None else tokens
        tokens = [tokens] if isinstance(tokens, int) else list(tokens)
        panels = [tree.get_example(k) for k in tokens]
        names = [f"token {k}" for k in tokens]
    if labels is not None and len(labels) != len(panels):
        raise ValueError(f"Expected {len(panels)} labels, one per panel (got {len(labels)})")
    leaves = max(int((data.layer == 0).sum()) for data in panels)
    num_layers = max(int(data.layer.max()) for data in panels)  # panels may differ in depth
    fig, axes = grid(len(panels), ncols, (max(2.4, 0.9 * leaves + 0.4), 1.0 * (num_layers + 1)))
    for ax, data, name in zip(axes, panels, names if labels is None else labels):
        draw_routing_tree(data, ax=ax, title=name, show_scores=show_scores, legend=False)
    fig.legend(handles=layer_handles(num_layers), loc="outside lower center", ncols=num_layers + 1)
    if title is not None:
        fig.suptitle(title)
    return save(fig, path)

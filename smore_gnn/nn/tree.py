"""Routed sub-trees of ``N`` tokens as one batched PyG graph (docs/spec.md §4).

All trees of a config have the same shape, so a tree is a *template* (built once per fanout
tuple) offset per token with tensor ops. Two node orders are offered:

* **layer-major** (the tree's own attributes, used by propagation): all tokens' layer-0 nodes,
  then all layer-1 nodes, ..., then the roots. Node ``(l, n, j)`` has id
  ``N * off_l + n * F_l + j``; edge ``i`` leaves node ``i``, so the edges of layer ``l`` form
  one contiguous slice.
* **token-major** (:meth:`RoutingTree.to_batch`): a genuine :class:`torch_geometric.data.Batch`
  whose ``get_example(n)`` is token ``n``'s tree.

Edges point child -> parent (messages travel upward); ``edge_weight`` is the gate score.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from smore_gnn.nn.counting import nodes_per_layer
from smore_gnn.nn.router import RoutingResult


@lru_cache(maxsize=64)
def tree_template(fanout: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """One token's tree: ``(node_layer [T], edge_index [2, T-1])`` in layer-major order."""
    nodes = nodes_per_layer(fanout)  # [F_0, ..., F_L]
    offsets = torch.tensor([0] + nodes).cumsum(0)  # [L+2]
    layer = torch.cat([torch.full((n,), l) for l, n in enumerate(nodes)])
    src = torch.arange(int(offsets[-2]))
    dst = torch.cat(
        [offsets[l + 1] + torch.arange(n) // fanout[l] for l, n in enumerate(nodes[:-1])]
    )
    return layer, torch.stack([src, dst])


def _layer_edges(num_children: int, fanout: int, device: torch.device) -> Tensor:
    """``[2, C]`` edges child ``i`` -> parent ``i // fanout`` (the per-edge propagation's; the
    fused one reads the layer's cached ``regular_adjacency``)."""
    src = torch.arange(num_children, device=device)
    return torch.stack([src, src // fanout])


@dataclass(frozen=True)
class RoutingTree:
    """Batched routed sub-trees of ``N`` tokens, built from the router's choices.

    Frozen: the whole-graph attributes are computed once on first access, so the per-layer
    tensors must not be swapped afterwards (build a new tree instead).

    Args:
        experts: per layer ``[N, F_l]`` expert ids.
        scores: per layer ``[N, F_l]`` gate scores (edge weights to the parent).
        fanout: ``[f_0, ..., f_{L-1}]``.
    """

    experts: list[Tensor]
    scores: list[Tensor]
    fanout: list[int]

    @classmethod
    def from_routing(cls, routing: RoutingResult) -> RoutingTree:
        return cls(routing.experts, routing.scores, list(routing.fanout))

    @property
    def num_tokens(self) -> int:
        return self.experts[0].size(0)

    @property
    def num_layers(self) -> int:
        return len(self.experts)

    @property
    def nodes_per_layer(self) -> list[int]:
        """``[F_0, ..., F_L]`` nodes per tree and layer (root included)."""
        return [e.size(1) for e in self.experts] + [1]

    @property
    def device(self) -> torch.device:
        return self.experts[0].device

    # ---- the hot path: one bipartite child -> parent step per layer ----------------------
    def layer_edge_index(self, layer: int) -> Tensor:
        """Edges from layer ``layer`` to ``layer + 1`` in local ids: ``[2, N * F_l]``.

        Child ``n * F_l + j`` hangs under parent ``n * F_{l+1} + j // f_l`` and, as
        ``F_l = f_l F_{l+1}``, that is simply ``child // f_l``.
        """
        return _layer_edges(self.experts[layer].numel(), self.fanout[layer], self.device)

    def layer_edge_weight(self, layer: int) -> Tensor:
        return self.scores[layer].reshape(-1)  # [N * F_l]

    def first_use(self, layer: int) -> Tensor:
        """``[N, F_l]`` bool: the node is the first of its token's layer to use its expert."""
        e = self.experts[layer]  # [N, F_l]
        same = e[:, :, None] == e[:, None, :]  # [N, F_l, F_l]
        earlier = torch.ones_like(same[0]).tril(-1)  # [F_l, F_l], j' < j
        return ~(same & earlier).any(-1)

    # ---- the whole graph, layer-major --------------------------------------------------
    @cached_property
    def node_layer(self) -> Tensor:
        n, dev = self.num_tokens, self.device
        return torch.cat(
            [torch.full((n * f,), l, device=dev) for l, f in enumerate(self.nodes_per_layer)]
        )

    @cached_property
    def expert(self) -> Tensor:
        """Expert id within its layer per node, ``-1`` for roots (not named ``*index*``)."""
        root = torch.full((self.num_tokens,), -1, dtype=torch.long, device=self.device)
        return torch.cat([e.reshape(-1) for e in self.experts] + [root])

    @cached_property
    def batch(self) -> Tensor:
        """Token of every node."""
        tokens = torch.arange(self.num_tokens, device=self.device)
        return torch.cat([tokens.repeat_interleave(f) for f in self.nodes_per_layer])

    @cached_property
    def edge_slices(self) -> list[tuple[int, int]]:
        """``edge_index[:, a:b]`` are the edges from layer ``l`` to ``l + 1``."""
        bounds = [0]
        for f in self.nodes_per_layer[:-1]:
            bounds.append(bounds[-1] + self.num_tokens * f)
        return list(zip(bounds[:-1], bounds[1:]))

    @cached_property
    def edge_index(self) -> Tensor:
        """``[2, E]`` child -> parent in layer-major node ids."""
        parts = []
        for l, (a, b) in enumerate(self.edge_slices):
            local = self.layer_edge_index(l)  # parents of layer l + 1 start where layer l ends
            parts.append(torch.stack([local[0] + a, local[1] + b]))
        return torch.cat(parts, dim=1)

    @cached_property
    def edge_weight(self) -> Tensor:
        return torch.cat([s.reshape(-1) for s in self.scores])

    @property
    def num_nodes(self) -> int:
        return self.num_tokens * sum(self.nodes_per_layer)

    # ---- PyG views ----------------------------------------------------------------------
    def to_batch(self) -> Batch:
        """A genuine :class:`~torch_geometric.data.Batch`, one graph per token (token-major).

        Node attributes: ``layer``, ``expert`` (-1 at the root); edge attributes:
        ``edge_index`` (child -> parent), ``edge_weight``. Built from the template with tensor
        ops; equal to ``Batch.from_data_list`` of the per-token trees.
        """
        n, dev = self.num_tokens, self.device
        layer_t, edges_t = (t.to(dev) for t in tree_template(tuple(self.fanout)))
        size = layer_t.numel()
        root = torch.full((n, 1), -1, dtype=torch.long, device=dev)
        expert = torch.cat([e.long() for e in self.experts] + [root], dim=1)  # [N, T]
        weight = torch.cat([s.detach() for s in self.scores], dim=1)  # [N, T-1]
        shift = torch.arange(n, device=dev) * size  # [N]
        edge_index = edges_t[:, None, :] + shift[None, :, None]  # [2, N, T-1]
        graph = Batch(
            edge_index=edge_index.reshape(2, -1),
            edge_weight=weight.reshape(-1),
            layer=layer_t.repeat(n),
            expert=expert.reshape(-1),
            batch=torch.arange(n, device=dev).repeat_interleave(size),
            ptr=torch.arange(n + 1, device=dev) * size,
            num_nodes=n * size,
        )
        graph._store._num_nodes = [size] * n  # what collate records; get_example reads it
        num_edges = edges_t.size(1)
        steps = torch.arange(n + 1)
        graph._num_graphs = n
        graph._slice_dict = {
            "edge_index": steps * num_edges,
            "edge_weight": steps * num_edges,
            "layer": steps * size,
            "expert": steps * size,
        }
        graph._inc_dict = {
            "edge_index": torch.arange(n) * size,
            "edge_weight": torch.zeros(n, dtype=torch.long),
            "layer": torch.zeros(n, dtype=torch.long),
            "expert": torch.zeros(n, dtype=torch.long),
        }
        return graph

    def get_example(self, token: int) -> Data:
        """Token ``token``'s routed sub-tree as a :class:`~torch_geometric.data.Data`."""
        if not 0 <= token < self.num_tokens:
            raise IndexError(f"RoutingTree has {self.num_tokens} tokens (got token={token})")
        sub = RoutingTree(
            [e[token : token + 1] for e in self.experts],
            [s[token : token + 1] for s in self.scores],
            self.fanout,
        )
        return sub.to_batch().get_example(0)


def build_routing_tree(routing: RoutingResult) -> RoutingTree:
    """Materialise the router's choices for ``N`` tokens as one batched graph."""
    return RoutingTree.from_routing(routing)

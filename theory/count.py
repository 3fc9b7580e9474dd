"""Count distinct adapter outputs over all routing structures, through the real GNN pass.

``dist(x; Theta)`` (docs/spec.md §7) is measured by brute force: every structure of
:mod:`theory.enumerate` is pushed, for one token ``x`` repeated ``N`` times, through
:meth:`smore_gnn.SMoRELinear.propagate_tree` and the final projection ``W_proj`` in one batched
pass, and the ``N`` outputs are grouped with a tolerance. Parameters are generic (random normal,
biases included, float64) and every edge weight is the same constant, so only the structure and
the propagation rule can make two outputs differ.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from smore_gnn import RoutingTree, SMoREConfig, SMoRELinear
from theory.distinct import distinct_rows
from theory.enumerate import iter_structures


def generic_layer(
    num_experts: Sequence[int],
    fanout: Sequence[int],
    propagation: str = "smore",
    *,
    in_features: int = 8,
    out_features: int = 8,
    rank: int | Sequence[int] = 2,
    act: str = "tanh",
    seed: int = 0,
    **config,
) -> SMoRELinear:
    """A float64 adapter with generic random parameters (nothing zero, biases included).

    The same ``seed`` gives the same parameters for every ``propagation``. Extra keyword
    arguments go to :class:`~smore_gnn.SMoREConfig`.
    """
    cfg = SMoREConfig(
        num_experts=list(num_experts),
        fanout=list(fanout),
        rank=[rank] * len(num_experts) if isinstance(rank, int) else list(rank),
        expert_act=act,
        propagation=propagation,
        **config,
    )
    with torch.random.fork_rng():  # a reproducible router, global RNG left untouched
        torch.manual_seed(seed)
        layer = SMoRELinear(nn.Linear(in_features, out_features).double(), cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith(("router.", "base_layer.")):
                continue  # the router is bypassed; W0 x is the same for every structure
            fan_in = p.size(-1) if p.dim() > 1 and "bias" not in name else 4.0
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * fan_in**-0.5)
    return layer.eval()


def _positional(tree: RoutingTree, seed: int = 12345) -> RoutingTree:
    """``tree`` with generic edge weights that depend on (layer, position), not on the expert."""
    gen = torch.Generator().manual_seed(seed)
    scores = [
        (0.25 + 0.5 * torch.rand(s.size(1), generator=gen, dtype=s.dtype)).expand_as(s)
        for s in tree.scores
    ]  # [N, F_l] each
    return RoutingTree(tree.experts, scores, tree.fanout)


@torch.no_grad()
def structure_outputs(
    layer: SMoRELinear,
    x: Tensor,
    chunk_size: int | None = None,
    edge_weights: float | str = 0.5,
) -> Tensor:
    """Adapter outputs ``W_proj m_root`` of token ``x`` [d] for every structure: ``[N, d_out]``.

    One batched GNN pass per chunk (default: a single pass over all structures).

    Args:
        layer: the adapter (its router is not used).
        x: one token ``[d]``.
        chunk_size: trees per pass (default: all).
        edge_weights: the weight of every edge, or ``"positional"`` for generic weights that
            depend only on the layer and the position under the parent.
    """
    cfg, dtype = layer.config, layer.proj.weight.dtype
    positional = edge_weights == "positional"
    score = 0.5 if positional else float(edge_weights)
    outs = []
    for tree in iter_structures(cfg.num_experts, cfg.fanout, chunk_size, score, dtype):
        tree = _positional(tree) if positional else tree
        x_rep = x.to(dtype).expand(tree.num_tokens, -1)  # [N, d], the same token N times
        outs.append(layer.proj(layer.propagate_tree(x_rep, tree)))  # [N, d_out]
    return torch.cat(outs)


@dataclass
class Measurement:
    """``dist(x; Theta)`` of one propagation rule for several random tokens ``x``.

    ``min_count`` is Theorem 3.4's quantity (a min over ``x``), ``max_count`` Theorem 3.3's
    (a max); ``min_gap`` is the smallest and ``max_within`` the largest over the tokens.
    """

    propagation: str
    counts: list[int]
    min_gap: float
    min_gap_exact: bool
    max_within: float
    seconds: float

    @property
    def min_count(self) -> int:
        return min(self.counts)

    @property
    def max_count(self) -> int:
        return max(self.counts)


def measure(
    num_experts: Sequence[int],
    fanout: Sequence[int],
    propagation: str = "smore",
    tokens: int = 3,
    seed: int = 0,
    chunk_size: int | None = None,
    tol: float = 1e-9,
    edge_weights: float | str = 0.5,
    **layer_kwargs,
) -> Measurement:
    """Count distinct outputs over all structures for ``tokens`` random tokens.

    One generic layer (``seed``) for all tokens; see :func:`structure_outputs` for
    ``edge_weights``; ``layer_kwargs`` go to :func:`generic_layer`.
    """
    start = time.perf_counter()
    layer = generic_layer(num_experts, fanout, propagation, seed=seed, **layer_kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    counts, gaps, exact, within = [], [], [], []
    for _ in range(tokens):
        x = torch.randn(layer.in_features, generator=gen, dtype=torch.float64)
        res = distinct_rows(structure_outputs(layer, x, chunk_size, edge_weights), tol)
        counts.append(res.count), gaps.append(res.min_gap)
        exact.append(res.min_gap_exact), within.append(res.max_within)
    worst = min(range(tokens), key=gaps.__getitem__)
    return Measurement(
        propagation, counts, gaps[worst], exact[worst], max(within), time.perf_counter() - start
    )

"""Every routing structure the hierarchical router can produce, as batched ``RoutingTree``s.

How many there are is :func:`smore_gnn.nn.counting.num_structures` (Theorem 3.4, re-exported
here as ``num_structures``: the product of all digit radices below).

The root picks one ``f_{L-1}``-subset of the top layer; every parent in layer ``l + 1`` picks,
independently, one ``f_l``-subset of layer ``l``. Sibling order does not change the tree, so
children are the subset in increasing expert order and each structure appears exactly once.

A structure is a mixed-radix number: one digit per parent (``F_{l+1}`` digits of radix
``C(s_l, f_l)`` for layer ``l``). A chunk of consecutive numbers is decoded with integer tensor
arithmetic, never a Python loop over structures.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from functools import lru_cache

import torch
from torch import Tensor

from smore_gnn import RoutingTree
from smore_gnn.nn.counting import nodes_per_layer, num_structures


@lru_cache(maxsize=128)
def subset_table(num_experts: int, fanout: int) -> Tensor:
    """``[C(s, f), f]`` long: every sorted ``f``-subset of ``range(s)``, in lexicographic order."""
    combos = list(itertools.combinations(range(num_experts), fanout))
    return torch.tensor(combos, dtype=torch.long).view(len(combos), fanout)


def decode(
    num_experts: Sequence[int],
    fanout: Sequence[int],
    numbers: Tensor,
    score: float = 0.5,
    dtype: torch.dtype = torch.float64,
) -> RoutingTree:
    """The structures with the given numbers (``[N]`` long, each in ``[0, count)``) as one tree.

    Args:
        num_experts: ``s_l`` per layer, bottom first.
        fanout: ``f_l`` per layer, bottom first.
        numbers: structure numbers; digit ``k`` of layer ``l`` is parent ``k``'s subset.
        score: the edge weight of every edge, the same for every structure.
        dtype: dtype of the edge weights.

    Returns:
        A tree with ``experts[l]`` of shape ``[N, F_l]``.
    """
    total = num_structures(num_experts, fanout)
    if numbers.numel() and not 0 <= int(numbers.min()) <= int(numbers.max()) < total:
        raise ValueError(f"Expected structure numbers in [0, {total}) (got {numbers})")
    nodes, rest = nodes_per_layer(fanout), numbers.long()
    experts: list[Tensor] = [torch.empty(0)] * len(fanout)
    for l in reversed(range(len(fanout))):  # the top layer holds the most significant digits
        table = subset_table(num_experts[l], fanout[l])
        radix, parents = table.size(0), nodes[l + 1]
        weights = torch.tensor([radix**k for k in reversed(range(parents))], dtype=torch.long)
        digits = (rest[:, None] // weights) % radix  # [N, F_{l+1}], parent 0 most significant
        rest = rest // radix**parents
        experts[l] = table[digits].reshape(-1, parents * fanout[l])  # [N, F_l]
    return RoutingTree(
        experts=experts,
        scores=[torch.full(e.shape, score, dtype=dtype) for e in experts],
        fanout=list(fanout),
    )


def structures(
    num_experts: Sequence[int],
    fanout: Sequence[int],
    start: int = 0,
    stop: int | None = None,
    score: float = 0.5,
    dtype: torch.dtype = torch.float64,
) -> RoutingTree:
    """Structures ``start .. stop - 1`` (default: all) as one tree; see :func:`decode`."""
    total = num_structures(num_experts, fanout)
    stop = total if stop is None else stop
    if not 0 <= start <= stop <= total:
        raise ValueError(f"Expected 0 <= start <= stop <= {total} (got {start=}, {stop=})")
    return decode(num_experts, fanout, torch.arange(start, stop), score, dtype)


def iter_structures(
    num_experts: Sequence[int],
    fanout: Sequence[int],
    chunk_size: int | None = None,
    score: float = 0.5,
    dtype: torch.dtype = torch.float64,
) -> Iterator[RoutingTree]:
    """Yield all structures in chunks of at most ``chunk_size`` trees (default: one chunk)."""
    total = num_structures(num_experts, fanout)
    step = total if chunk_size is None else max(1, chunk_size)
    for start in range(0, total, step):
        yield structures(num_experts, fanout, start, min(start + step, total), score, dtype)

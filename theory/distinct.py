"""Tolerance-aware counting of distinct rows, sort-based (no ``O(N^2)`` distance matrix).

Rows are rounded to a grid and deduplicated with ``torch.unique``; representatives that a grid
line split apart (closer than the tolerance) are merged; then the smallest distance between two
classes is found exactly with a cell list on the leading principal coordinates, so a reader can
see the count is not a rounding accident.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch import Tensor

_MAX_KEY = 2**62


@dataclass
class DistinctCount:
    """Distinct rows of one ``[N, D]`` matrix.

    Attributes:
        count: number of classes (rows equal up to ``tol``).
        num_outputs: ``N``.
        min_gap: smallest distance between two classes, relative to the largest |entry|
            (``inf`` for one class); exact when ``min_gap_exact``, else a lower bound.
        min_gap_exact: whether ``min_gap`` is exact.
        max_within: largest distance of a row from its class representative (relative).
        labels: ``[N]`` class of every row.
    """

    count: int
    num_outputs: int
    min_gap: float
    min_gap_exact: bool
    max_within: float
    labels: Tensor = field(repr=False)


def _expand_pairs(start_a: Tensor, count_a: Tensor, start_b: Tensor, count_b: Tensor):
    """All ``(i, j)``, ``i`` in ``start_a + [0, count_a)``, ``j`` likewise, per segment."""
    sizes = count_a * count_b  # [M]
    seg = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)  # [P]
    local = torch.arange(seg.numel()) - (sizes.cumsum(0) - sizes)[seg]
    return start_a[seg] + local // count_b[seg], start_b[seg] + local % count_b[seg]


def close_pairs(points: Tensor, radius: float, budget: int = 20_000_000):
    """All pairs of rows of ``points`` [K, D] at Euclidean distance ``<= radius``.

    A cell list of side ``radius`` on up to three principal coordinates (an orthonormal
    projection never lengthens a distance, so close pairs lie in the same or adjacent cells).

    Returns:
        ``(pairs [2, P], dist [P])``, or ``None`` when more than ``budget`` candidate pairs
        would have to be compared.
    """
    centred = points - points.mean(0)
    basis = torch.linalg.eigh(centred.t() @ centred)[1][:, -3:].flip(1)  # [D, k] top axes
    cells = torch.floor(centred @ basis / radius).long()  # [K, k]
    cells = cells - cells.min(0).values
    sizes = (cells.max(0).values + 2).tolist()  # +2: a neighbour's offset stays in range
    while len(sizes) > 1 and torch.tensor(sizes, dtype=torch.float64).prod() > _MAX_KEY:
        sizes, cells = sizes[:-1], cells[:, :-1]  # fewer coordinates: more candidates, still exact
    strides = [
        int(torch.tensor(sizes[i + 1 :], dtype=torch.long).prod()) for i in range(len(sizes))
    ]
    key = cells @ torch.tensor(strides)  # [K] cell id
    key, order = key.sort()
    cell_key, counts = torch.unique_consecutive(key, return_counts=True)  # [M]
    starts = counts.cumsum(0) - counts
    found, dists, compared = [], [], 0
    for offset in itertools.product((-1, 0, 1), repeat=len(sizes)):
        if offset < (0,) * len(sizes):
            continue  # each unordered pair of cells once
        target = cell_key + sum(o * s for o, s in zip(offset, strides))
        pos = torch.searchsorted(cell_key, target).clamp(max=cell_key.numel() - 1)
        hit = (cell_key[pos] == target).nonzero().squeeze(1)
        compared += int((counts[hit] * counts[pos[hit]]).sum())
        if compared > budget:
            return None
        i, j = _expand_pairs(starts[hit], counts[hit], starts[pos[hit]], counts[pos[hit]])
        if not any(offset):
            keep = i < j
            i, j = i[keep], j[keep]
        i, j = order[i], order[j]
        d = (points[i] - points[j]).norm(dim=1)
        near = d <= radius
        found.append(torch.stack([i[near], j[near]])), dists.append(d[near])
    return torch.cat(found, dim=1), torch.cat(dists)


def row_ids(rows: Tensor) -> Tensor:
    """``[R]`` ids ``0..K-1`` of the distinct rows of an integer ``[R, C]`` matrix.

    Same classes as ``torch.unique(rows, dim=0, return_inverse=True)[1]``, but built from one
    1-D ``unique`` per column (pairing the ids so far with the next column), which on CPU is
    much faster than ``unique(dim=0)``'s row-by-row comparisons.
    """
    ids = torch.zeros(rows.size(0), dtype=torch.long)
    for column in rows.long().t():
        col_ids = torch.unique(column, return_inverse=True)[1]
        ids = torch.unique(ids * (int(col_ids.max()) + 1) + col_ids, return_inverse=True)[1]
    return ids


def _upper_gap(points: Tensor, neighbours: int = 4) -> float:
    """An upper bound on the smallest pairwise distance: near neighbours along one axis."""
    order = points[:, int(points.var(0).argmax())].argsort()
    p = points[order]
    return min(
        float((p[k:] - p[:-k]).norm(dim=1).min())
        for k in range(1, min(neighbours, len(p) - 1) + 1)
    )


def _merge(num_classes: int, pairs: Tensor) -> Tensor:
    """``[K]`` new class of each of ``num_classes`` classes after uniting those in ``pairs``."""
    parent = list(range(num_classes))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs.t().tolist():
        parent[find(a)] = find(b)
    return torch.unique(torch.tensor([find(a) for a in parent]), return_inverse=True)[1]


def _first_members(labels: Tensor) -> Tensor:
    """``[K]`` the first row of every class."""
    n = labels.numel()
    empty = torch.full((int(labels.max()) + 1,), n)
    return empty.scatter_reduce(0, labels, torch.arange(n), reduce="amin")


def distinct_rows(values: Tensor, tol: float = 1e-9, budget: int = 20_000_000) -> DistinctCount:
    """Group the rows of ``values`` [N, D] that agree up to ``tol`` (relative to max|values|).

    Args:
        values: the outputs to group.
        tol: relative tolerance; rows closer than ``tol * max|values|`` are one class.
        budget: most candidate pairs compared in one neighbour search.

    Returns:
        The count, the smallest gap between classes (exact, or a lower bound when the search
        would exceed ``budget``) and the largest deviation inside a class.
    """
    scale = float(values.abs().max()) or 1.0
    v = values.double() / scale  # [N, D]
    labels = row_ids(torch.round(v / tol))  # [N] grid cell of every row
    reps = v[_first_members(labels)]  # [K, D]
    min_gap, exact = float("inf"), reps.size(0) == 1
    if not exact:
        radius = max(_upper_gap(reps), tol)  # one search finds every pair up to the gap
        close = close_pairs(reps, radius, budget)
        if close is None:
            radius, close = tol, close_pairs(reps, tol, budget)
            if close is None:
                raise ValueError(f"distinct_rows: over {budget} candidate pairs at tol={tol}")
        (i, j), d = close
        rep_class = _merge(reps.size(0), torch.stack([i, j])[:, d <= tol])  # grid-split classes
        labels, between = rep_class[labels], rep_class[i] != rep_class[j]
        if between.any():
            min_gap, exact = float(d[between].min()), True
        reps = v[_first_members(labels)]
    max_within = float((v - reps[labels]).norm(dim=1).max())
    while not exact and radius < 10.0:  # rare: widen the search until a pair shows up
        close = close_pairs(reps, radius * 10, budget)
        if close is None:
            break  # too many candidates: no two classes are closer than ``radius``
        radius *= 10
        if close[1].numel():
            min_gap, exact = float(close[1].min()), True
    if not exact:
        min_gap = radius
    return DistinctCount(reps.size(0), v.size(0), min_gap, exact, max_within, labels)

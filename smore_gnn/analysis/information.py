"""Entropy and normalised mutual information of categorical labels (small numpy versions).

Used by :mod:`smore_gnn.analysis.health` to measure how much a token's task tells about the
experts it is routed to. Natural logarithms throughout; the normalisations are scale-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

AVERAGES = ("arithmetic", "geometric")


def load_entropy(load: Tensor | Sequence[float]) -> float:
    """Entropy of the load share ``load / load.sum()``, normalised to ``[0, 1]`` by ``log s``.

    1 means perfectly balanced experts, 0 means one expert takes every pick.
    """
    load = torch.as_tensor(load, dtype=torch.float64).flatten()
    if load.numel() < 2 or float(load.sum()) <= 0:
        return 0.0
    p = load / load.sum()
    h = -(p * p.clamp_min(1e-300).log()).sum()
    return float(h / math.log(load.numel()))


def codes(labels: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Integer codes ``0..K-1`` of any hashable labels (equal labels, equal codes).

    Rows of a 2-D array are one label each (e.g. a token's sorted expert ids).
    """
    array = np.asarray(labels)
    if array.ndim == 2:
        return np.unique(array, axis=0, return_inverse=True)[1].reshape(-1)
    if array.dtype == object or array.ndim != 1:
        table: dict[Any, int] = {}
        return np.array([table.setdefault(x, len(table)) for x in labels], dtype=np.int64)
    return np.unique(array, return_inverse=True)[1].reshape(-1)


def entropy(labels: Sequence[Any] | np.ndarray) -> float:
    """Entropy ``H = -sum_k p_k log p_k`` (nats) of the empirical distribution of ``labels``."""
    counts = np.bincount(codes(labels)).astype(np.float64)
    return _entropy_of(counts / counts.sum()) if counts.sum() > 0 else 0.0


def _joint(a: Sequence[Any] | np.ndarray, b: Sequence[Any] | np.ndarray) -> np.ndarray:
    """The empirical joint distribution ``p(a, b)``: ``[K_a, K_b]`` float64 (empty: ``[0, 0]``)."""
    ca, cb = codes(a), codes(b)
    if ca.size != cb.size:
        raise ValueError(f"a and b must label the same samples (got {ca.size} and {cb.size})")
    if ca.size == 0:
        return np.zeros((0, 0))
    ka, kb = int(ca.max()) + 1, int(cb.max()) + 1
    joint = np.bincount(ca * kb + cb, minlength=ka * kb).reshape(ka, kb).astype(np.float64)
    return joint / joint.sum()


def _entropy_of(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _mi_of(joint: np.ndarray) -> float:
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())
    return max(mi, 0.0)  # rounding can give -1e-17


def mutual_information(a: Sequence[Any] | np.ndarray, b: Sequence[Any] | np.ndarray) -> float:
    """Mutual information ``I(A; B) = sum p(a, b) log(p(a, b) / (p(a) p(b)))`` in nats.

    Raises:
        ValueError: if ``a`` and ``b`` have different lengths.
    """
    return _mi_of(_joint(a, b))


def normalized_mutual_info(
    a: Sequence[Any] | np.ndarray, b: Sequence[Any] | np.ndarray, average: str = "arithmetic"
) -> float:
    """``I(A; B)`` divided by the mean of ``H(A)`` and ``H(B)``, in ``[0, 1]``.

    ``average="arithmetic"`` divides by ``(H(A) + H(B)) / 2`` (scikit-learn's default, equal
    to the V-measure); ``"geometric"`` by ``sqrt(H(A) H(B))``. 1 means either label determines
    the other; 0 means independence. When either side is constant (``H = 0``) there is no
    information to share and the result is 0 (scikit-learn returns 1 when *both* are constant).

    Raises:
        ValueError: for an unknown ``average`` or labels of different lengths.
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES} (got {average!r})")
    joint = _joint(a, b)
    ha, hb = _entropy_of(joint.sum(1)), _entropy_of(joint.sum(0))
    if ha <= 0.0 or hb <= 0.0:
        return 0.0
    norm = (ha + hb) / 2 if average == "arithmetic" else float(np.sqrt(ha * hb))
    return float(min(max(_mi_of(joint) / norm, 0.0), 1.0))

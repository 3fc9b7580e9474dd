"""Routing statistics of the last forward: per-expert load, entropy, fanout-aware collapse."""

from __future__ import annotations

import math
from typing import Any

from smore_gnn.analysis import load_entropy
from smore_gnn.layer import SMoRELinear


def routing_statistics(
    layers: dict[str, SMoRELinear], collapse_share: float = 0.9, collapse_entropy: float = 0.3
) -> dict[str, Any]:
    """Load and routing entropy of the last forward of every adapted module.

    ``share`` is the fraction of picks each expert got (valid tokens only); ``entropy`` is the
    entropy of that share normalised by ``log s`` (1 = balanced). A parent picks ``f``
    *distinct* children, so with ``f > 1`` no expert can exceed ``1/f`` of the picks and the
    entropy cannot fall below ``log f / log s``; collapse is therefore judged fanout-aware:
    an expert layer (with ``f < s``) has collapsed when its busiest expert is picked by more
    than ``collapse_share`` of the routing events (``max_load_share`` = share x f), or when
    the entropy rescaled to ``[log f, log s] -> [0, 1]`` is below ``collapse_entropy``.

    Returns:
        ``{"modules": {name: {"load": [[...] per layer], "share": ..., "entropy": [...]}},
        "mean_entropy", "min_entropy", "max_load_share", "collapsed": [(name, layer), ...]}``.
    """
    modules, entropies, shares, collapsed = {}, [], [], []
    for name, layer in layers.items():
        routing = layer.last_routing
        if routing is None:
            continue
        load = [t.double() for t in routing.load]  # per layer [s_l]
        share = [t / t.sum().clamp_min(1) for t in load]
        ent = [load_entropy(t) if t.numel() > 1 else 1.0 for t in load]
        modules[name] = {
            "load": [t.tolist() for t in load],
            "share": [t.tolist() for t in share],
            "entropy": ent,
        }
        for l, (s, e) in enumerate(zip(share, ent)):
            f, num = layer.config.fanout[l], s.numel()
            entropies.append(e)
            shares.append(min(1.0, float(s.max()) * f))  # share of events picking it
            if f < num:
                spread = (e * math.log(num) - math.log(f)) / (math.log(num) - math.log(f))
                if shares[-1] > collapse_share or spread < collapse_entropy:
                    collapsed.append((name, l))
    return {
        "modules": modules,
        "mean_entropy": sum(entropies) / len(entropies) if entropies else float("nan"),
        "min_entropy": min(entropies, default=float("nan")),
        "max_load_share": max(shares, default=float("nan")),
        "collapsed": collapsed,
    }

"""Routing statistics of the last forward: per-expert load, entropy, fanout-aware collapse.

The per-layer definitions (share, entropy, top share, collapse) are those of
:func:`smore_gnn.analysis.metrics.load_health`; this module only gathers them over the
adapted modules for the training logs. Held-out routing health (gate spread, structures,
task NMI) is :func:`smore_gnn.analysis.health.routing_health`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from smore_gnn.analysis.metrics import load_health
from smore_gnn.nn.layer import SMoRELinear


def routing_statistics(
    layers: dict[str, SMoRELinear], loads: dict[str, list[Tensor]] | None = None
) -> dict[str, Any]:
    """Load and routing entropy of the last forward of every adapted module.

    ``loads`` (``{name: [[s_l] picks per layer]}``) replaces the layers' own
    ``last_routing.load``, e.g. the loads summed over data-parallel ranks (a module absent
    from ``loads`` is skipped).

    ``share`` is the fraction of picks each expert got (valid tokens only); ``entropy`` is the
    entropy of that share normalised by ``log s`` (1 = balanced); ``max_load_share`` is the
    largest ``top_share`` (share of routing events that picked the busiest expert) over every
    module and layer. Collapse is judged fanout-aware, as in
    :func:`~smore_gnn.analysis.metrics.load_health`.

    Returns:
        ``{"modules": {name: {"load": [[...] per layer], "share": ..., "entropy": [...]}},
        "mean_entropy", "min_entropy", "max_load_share", "collapsed": [(name, layer), ...]}``.
    """
    modules, entropies, shares, collapsed = {}, [], [], []
    for name, layer in layers.items():
        if loads is not None:
            layer_loads = loads.get(name)
        else:
            layer_loads = None if layer.last_routing is None else layer.last_routing.load
        if layer_loads is None:
            continue
        health = [load_health(t, f) for t, f in zip(layer_loads, layer.config.fanout)]
        modules[name] = {
            "load": [t.double().tolist() for t in layer_loads],
            "share": [h["load_share"] for h in health],
            "entropy": [h["load_entropy"] for h in health],
        }
        entropies += modules[name]["entropy"]
        shares += [h["top_share"] for h in health]
        collapsed += [(name, l) for l, h in enumerate(health) if h["collapsed"]]
    return {
        "modules": modules,
        "mean_entropy": sum(entropies) / len(entropies) if entropies else float("nan"),
        "min_entropy": min(entropies, default=float("nan")),
        "max_load_share": max(shares, default=float("nan")),
        "collapsed": collapsed,
    }

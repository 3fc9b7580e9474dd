"""Routing statistics of routed sub-trees: expert counts, co-routing, load entropy.

:func:`routing_stats` is the one definition of the per-layer load statistics of a routing;
:func:`adapters_routing_stats` applies it to every adapter of a model (what
``SMoREModel.routing_stats()`` and the training logs report).

``as_tree`` accepts a :class:`RoutingTree`, the :class:`RoutingResult` it was built from, or an
``SMoRELinear`` after a forward (its ``last_tree``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from smore_gnn.analysis.collect import adapters_of
from smore_gnn.analysis.metrics import load_health
from smore_gnn.nn.layer import SMoRELinear
from smore_gnn.nn.router import RoutingResult
from smore_gnn.nn.tree import RoutingTree

TreeLike = RoutingTree | RoutingResult | SMoRELinear


def as_tree(routing_or_tree: TreeLike) -> RoutingTree:
    """Return a :class:`RoutingTree` for a tree, a :class:`RoutingResult` or an adapted layer."""
    if isinstance(routing_or_tree, RoutingTree):
        return routing_or_tree
    if isinstance(routing_or_tree, RoutingResult):
        return RoutingTree.from_routing(routing_or_tree)
    if isinstance(routing_or_tree, SMoRELinear) and routing_or_tree.last_tree is not None:
        return routing_or_tree.last_tree
    raise TypeError(
        "Expected a RoutingTree, a RoutingResult or an SMoRELinear after a forward "
        f"(got {type(routing_or_tree).__name__})"
    )


def num_experts_of(routing_or_tree: TreeLike) -> list[int] | None:
    """``[s_0, ..., s_{L-1}]`` when the object knows it (a layer, or a routing with loads)."""
    if isinstance(routing_or_tree, SMoRELinear):
        return list(routing_or_tree.config.num_experts)
    if isinstance(routing_or_tree, RoutingResult) and routing_or_tree.load:
        return [int(load.numel()) for load in routing_or_tree.load]
    return None


def _check_layer(tree: RoutingTree, layer: int) -> None:
    if not 0 <= layer < tree.num_layers:
        raise ValueError(f"layer must be in [0, {tree.num_layers - 1}] (got {layer})")


def _num_experts(tree: RoutingTree, layer: int, num_experts: int | None) -> int:
    seen = int(tree.experts[layer].max()) + 1 if tree.experts[layer].numel() else 0
    if num_experts is None:
        return seen
    if num_experts < seen:
        raise ValueError(f"num_experts={num_experts} but layer {layer} uses expert {seen - 1}")
    return num_experts


def expert_counts(routing_or_tree: TreeLike, layer: int, num_experts: int | None = None) -> Tensor:
    """How many nodes of each token's layer-``layer`` tree use each expert.

    Args:
        routing_or_tree: the routed sub-trees (or the routing they were built from).
        layer: expert layer ``l`` (0 = leaves).
        num_experts: ``s_l``; inferred from the largest id used when ``None``.

    Returns:
        ``[N, s_l]`` long counts; every row sums to ``F_l``.
    """
    tree = as_tree(routing_or_tree)
    _check_layer(tree, layer)
    s = _num_experts(tree, layer, num_experts)
    picked = tree.experts[layer].long()  # [N, F_l]
    counts = torch.zeros(picked.size(0), s, dtype=torch.long, device=picked.device)
    return counts.scatter_add_(1, picked, torch.ones_like(picked))  # [N, s_l]


def coroute_counts(
    routing_or_tree: TreeLike,
    layer: int,
    num_experts: Sequence[int] | None = None,
) -> Tensor:
    """Parent-expert -> child-expert counts over all tokens' edges from ``layer`` to ``layer+1``.

    Args:
        routing_or_tree: the routed sub-trees.
        layer: the child layer ``l``; for the top layer the only parent is the root (one row).
        num_experts: ``(s_l, s_{l+1})`` (``s_{l+1}`` is unused for the top layer); inferred
            from the ids used when ``None``.

    Returns:
        ``[s_{l+1}, s_l]`` long counts (``[1, s_l]`` for the top layer); entry ``[p, c]``
        counts the edges whose child uses expert ``c`` and whose parent uses expert ``p``.
    """
    tree = as_tree(routing_or_tree)
    _check_layer(tree, layer)
    s_child, s_parent = (None, None) if num_experts is None else num_experts
    s_child = _num_experts(tree, layer, s_child)
    child = tree.experts[layer].long()  # [N, F_l]
    if layer == tree.num_layers - 1:
        parent, s_parent = torch.zeros_like(child), 1
    else:
        s_parent = _num_experts(tree, layer + 1, s_parent)
        parent = tree.experts[layer + 1].long().repeat_interleave(tree.fanout[layer], dim=1)
    flat = (parent * s_child + child).reshape(-1)  # [N * F_l] joint (parent, child) id
    counts = torch.bincount(flat, minlength=s_parent * s_child)
    return counts.reshape(s_parent, s_child)


def routing_stats(routing_or_tree: TreeLike, num_experts: Sequence[int] | None = None) -> dict:
    """Per-layer load, load share, normalised load entropy, top share and collapse of a routing.

    The routing statistics of the package, defined once: ``SMoREModel.routing_stats()`` (the
    training logs, through :func:`adapters_routing_stats`) and :class:`RoutingRecorder` call
    it. The load is ``RoutingResult.load`` (picks per expert, padding excluded) when a routing
    or a layer is given, else the picks counted in the tree; each layer's figures are
    :func:`smore_gnn.analysis.metrics.load_health`'s (the ones :func:`routing_health` uses).

    Args:
        routing_or_tree: the routed sub-trees, their routing, or an ``SMoRELinear``.
        num_experts: ``[s_0, ..., s_{L-1}]`` for a bare tree; inferred when ``None``.

    Returns:
        ``{"load": [[picks per expert] per layer], "load_share": [[float per expert] per
        layer], "entropy": [float per layer], "top_share": [float per layer], "collapsed":
        [bool per layer]}``; a list of such dicts is what
        :func:`smore_gnn.viz.plot_entropy_curve` reads.
    """
    routing = routing_or_tree
    if isinstance(routing, SMoRELinear):
        routing = routing.last_routing
    if isinstance(routing, RoutingResult) and routing.load:
        loads = [t.detach().double().cpu() for t in routing.load]  # per layer [s_l]
        fanout = list(routing.fanout)
    else:
        tree = as_tree(routing_or_tree)
        sizes = [None] * tree.num_layers if num_experts is None else list(num_experts)
        loads = [expert_counts(tree, l, sizes[l]).sum(0).double() for l in range(len(sizes))]
        fanout = list(tree.fanout)
    return load_stats(loads, fanout)


def load_stats(loads: Sequence[Tensor], fanout: Sequence[int]) -> dict:
    """:func:`routing_stats` from per-layer expert loads (``[s_l]`` picks each) and fanouts,
    e.g. loads summed over data-parallel ranks."""
    loads = [torch.as_tensor(load).detach().double().cpu() for load in loads]
    health = [load_health(load, f) for load, f in zip(loads, fanout)]
    return {
        "load": [load.tolist() for load in loads],
        "load_share": [h["load_share"] for h in health],
        "entropy": [h["load_entropy"] for h in health],
        "top_share": [h["top_share"] for h in health],
        "collapsed": [h["collapsed"] for h in health],
    }


def _selected(name: str, modules: Sequence[str] | None) -> bool:
    return modules is None or any(name == p or name.endswith("." + p) for p in modules)


def adapters_routing_stats(
    adapters: Mapping[str, SMoRELinear],
    modules: Sequence[str] | None = None,
    loads: Mapping[str, Sequence[Tensor]] | None = None,
) -> dict[str, Any]:
    """:func:`routing_stats` of every adapter's last forward, and their summary.

    Args:
        adapters: ``{name: SMoRELinear}``, e.g. ``SMoREModel.adapters()``; adapters without a
            forward yet are skipped.
        modules: names to include, each matching exactly or as a dotted suffix (default: all).
        loads: ``{name: [[s_l] picks per layer]}`` to use instead of each adapter's own
            ``last_routing.load``, e.g. the loads summed over ranks; an adapter absent from it
            is skipped.

    Returns:
        ``{"modules": {name: routing_stats(...)}, "mean_entropy", "min_entropy" (over modules
        and layers; NaN without any forward), "max_load_share" (the largest ``top_share``:
        the share of routing events that picked the busiest expert), "collapsed":
        [(name, layer), ...]}``.
    """
    if modules is not None and (
        isinstance(modules, str) or not all(isinstance(m, str) for m in modules)
    ):
        raise TypeError(
            f"modules must be a list of module names (got {modules!r}); e.g. ['up_proj']"
        )
    if loads is not None:
        stats = {
            name: load_stats(loads[name], layer.config.fanout)
            for name, layer in adapters.items()
            if name in loads and _selected(name, modules)
        }
    else:
        stats = {
            name: routing_stats(layer.last_routing)
            for name, layer in adapters.items()
            if layer.last_routing is not None and _selected(name, modules)
        }
    entropies = [e for s in stats.values() for e in s["entropy"]]
    shares = [t for s in stats.values() for t in s["top_share"]]
    return {
        "modules": stats,
        "mean_entropy": sum(entropies) / len(entropies) if entropies else float("nan"),
        "min_entropy": min(entropies, default=float("nan")),
        "max_load_share": max(shares, default=float("nan")),
        "collapsed": [(n, l) for n, s in stats.items() for l, c in enumerate(s["collapsed"]) if c],
    }


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class RoutingRecorder:
    """A Hugging Face ``TrainerCallback`` that records :func:`routing_stats` during training.

    After every ``every`` optimizer steps it reads the last forward's routing of the adapted
    modules, averages the per-layer entropy and load share over them and appends
    ``{"step", "entropy", "load_share"}`` to :attr:`history` (ready for
    :func:`smore_gnn.viz.plot_entropy_curve`). Duck-typed so that this module does not import
    ``transformers``: every other ``on_*`` event is a no-op.

    Args:
        modules: adapted module names (exact or dotted suffix) to include (default: all).
        every: record every ``every`` steps.

    Example:
        >>> recorder = RoutingRecorder(every=5)
        >>> trainer = build_trainer(model, tokenizer, records, args, callbacks=[recorder])
        >>> trainer.train(); plot_entropy_curve(recorder.history, keys=("entropy",))
    """

    def __init__(self, modules: Sequence[str] | None = None, every: int = 1):
        if every < 1:
            raise ValueError(f"RoutingRecorder.every must be >= 1 (got {every})")
        self.modules, self.every = modules, every
        self.history: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return _noop
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def record(self, model: torch.nn.Module, step: int) -> dict[str, Any] | None:
        """Append the current routing statistics of ``model``'s adapters as step ``step``."""
        layers = adapters_of(model, required=False)
        stats = list(adapters_routing_stats(layers, self.modules)["modules"].values())
        if not stats:
            return None
        layers = range(len(stats[0]["entropy"]))
        entry = {
            "step": step,
            "entropy": torch.tensor([s["entropy"] for s in stats]).mean(0).tolist(),  # [L]
            "load_share": [
                torch.tensor([s["load_share"][l] for s in stats]).mean(0).tolist() for l in layers
            ],
        }
        self.history.append(entry)
        return entry

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """``TrainerCallback`` event: record every ``every`` global steps."""
        model = kwargs.get("model")
        if model is not None and state.global_step % self.every == 0:
            self.record(model, state.global_step)

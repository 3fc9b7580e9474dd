"""Routing health on held-out tokens: score spread, load, structures, task specialisation.

The metrics are defined once, in :mod:`smore_gnn.analysis.metrics` (read its docstring for
the exact definitions). This module applies them to a model:

* :func:`routing_health` runs the model on held-out batches (padding left out) and returns
  per module and layer metrics plus a JSON-ready ``summary``;
* :func:`last_forward_health` measures the adapters' last forward the same way (spreads and
  structures included);
* :class:`RoutingHealthCallback` logs the summary, prefixed ``routing/``, during training.

The load statistics the training logs report every step (``SMoREModel.routing_stats()``) are
:func:`smore_gnn.analysis.routing.routing_stats`, built on the same per-layer definitions
(:func:`smore_gnn.analysis.metrics.load_health`); the health here costs more (it also
measures spreads and structures), so call it at logging time, not every step.

Task specialisation is the normalised mutual information (arithmetic mean of entropies)
between a token's task, i.e. its sequence's task, and its routing. The *shuffled control*
permutes the tasks among the sequences with ``seed`` (the same tokens, each sequence's tokens
keeping one task), so it shows the NMI that chance and the finite sample give.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from smore_gnn.analysis.collect import CollectedRouting, collect_routings
from smore_gnn.analysis.metrics import median, module_health
from smore_gnn.nn.layer import SMoRELinear
from smore_gnn.nn.tree import RoutingTree


def task_codes(collected: CollectedRouting, seed: int | None = None) -> tuple[Tensor, list[str]]:
    """Per valid token, the code of its sequence's task; ``seed`` permutes the sequences' tasks.

    Returns:
        ``([N] long codes into the sorted task names, sorted task names)``.
    """
    if collected.sequence_tasks is None:
        raise ValueError("the routings were collected without tasks; pass tasks=[...]")
    names = sorted(set(collected.sequence_tasks))
    per_sequence = np.array([names.index(t) for t in collected.sequence_tasks], dtype=np.int64)
    if seed is not None:
        per_sequence = np.random.default_rng(seed).permutation(per_sequence)
    return torch.from_numpy(per_sequence)[collected.sequence], names


def health_of(
    collected: CollectedRouting, shuffled_control: bool = True, seed: int = 0
) -> dict[str, Any]:
    """:func:`routing_health` of routings already collected (see :func:`collect_routings`)."""
    tasks = shuffled = None
    names: list[str] = []
    if collected.sequence_tasks is not None:
        tasks, names = task_codes(collected)
        if shuffled_control:
            shuffled = task_codes(collected, seed)[0]
    modules = {}
    for name, tree in collected.trees.items():
        modules[name] = module_health(tree, collected.num_experts[name], tasks, shuffled)
        if tasks is not None:
            modules[name]["tasks"] = names
    return {"modules": modules, "summary": summarize(modules, collected.num_tokens)}


def routing_health(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    tasks: Sequence[str] | None = None,
    shuffled_control: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Routing-health metrics of ``model``'s adapters on held-out ``batches``.

    Args:
        model: an ``SMoREModel`` (anything with ``.adapters()``) or a module holding
            ``SMoRELinear`` layers. Run without gradients in eval mode; every module's
            train/eval mode and the adapters' last routing are restored.
        batches: dicts with ``input_ids`` and ``attention_mask`` ``[B, T]`` (padding, 0, is
            left out), e.g. :func:`smore_gnn.analysis.text_batches`.
        tasks: one task per sequence, in batch order; spread to that sequence's tokens.
            Without tasks the NMI entries are absent.
        shuffled_control: also compute the NMI with the tasks permuted among sequences.
        seed: seed of that permutation.

    Returns:
        JSON-ready ``{"modules": {name: {"tokens", "layers": [per layer: "layer",
        "num_experts", "fanout", "events", "spread_median", "spread_mean", "load_share",
        "top_share", "uniform_top_share", "load_entropy", "collapsed", "task_nmi",
        "task_nmi_picks", "task_nmi_shuffled", "task_expert_counts"], "distinct_structures",
        "task_nmi_tree", "task_nmi_tree_shuffled", "tasks"}}, "summary": {...}}`` (see
        :func:`summarize` for the summary keys and :mod:`smore_gnn.analysis.metrics` for
        the definitions).

    Example:
        >>> batches = text_batches(tokenizer, [mc_prompt(r) for r in test])
        >>> health = routing_health(smore, batches, [r["task"] for r in test])
        >>> health["summary"]["task_nmi"], health["summary"]["task_nmi_shuffled"]
    """
    collected = collect_routings(model, batches, tasks)
    return health_of(collected, shuffled_control, seed)


def summarize(modules: Mapping[str, Mapping[str, Any]], num_tokens: int) -> dict[str, Any]:
    """Reduce per-module health to floats and ints.

    Keys: ``num_modules``, ``num_tokens``; ``median_spread`` (median over modules and layers
    with ``f_l >= 2`` of the layer's median spread); ``max_top_share`` and
    ``median_top_share`` (over modules, of the **top** layer's top share);
    ``max_top_share_any_layer``; ``mean_load_entropy`` and ``min_load_entropy`` (over
    modules and layers); ``num_collapsed`` (module layers flagged collapsed);
    ``median_distinct_structures``; with tasks ``task_nmi`` (mean over modules of the
    whole-tree NMI), ``task_nmi_top_layer`` (mean of the top layer's NMI) and
    ``task_nmi_layer_<l>``; with the control ``task_nmi_shuffled`` and
    ``task_nmi_top_layer_shuffled``.
    """
    items = list(modules.values())
    layers = [layer for m in items for layer in m["layers"]]
    tops = [m["layers"][-1] for m in items]
    out: dict[str, Any] = {
        "num_modules": len(items),
        "num_tokens": int(num_tokens),
        "median_spread": median([x["spread_median"] for x in layers if x["fanout"] >= 2]),
        "max_top_share": max((x["top_share"] for x in tops), default=0.0),
        "median_top_share": median([x["top_share"] for x in tops]),
        "max_top_share_any_layer": max((x["top_share"] for x in layers), default=0.0),
        "mean_load_entropy": float(np.mean([x["load_entropy"] for x in layers] or [0.0])),
        "min_load_entropy": min((x["load_entropy"] for x in layers), default=0.0),
        "num_collapsed": sum(bool(x["collapsed"]) for x in layers),
        "median_distinct_structures": median([m["distinct_structures"] for m in items]),
    }

    def mean(key: str, rows: Sequence[Mapping[str, Any]]) -> float:
        return float(np.mean([r[key] for r in rows]))

    if items and "task_nmi_tree" in items[0]:
        out["task_nmi"] = mean("task_nmi_tree", items)
        out["task_nmi_top_layer"] = mean("task_nmi", tops)
        depth = min(len(m["layers"]) for m in items)
        for l in range(depth):
            out[f"task_nmi_layer_{l}"] = mean("task_nmi", [m["layers"][l] for m in items])
    if items and "task_nmi_tree_shuffled" in items[0]:
        out["task_nmi_shuffled"] = mean("task_nmi_tree_shuffled", items)
        out["task_nmi_top_layer_shuffled"] = mean("task_nmi_shuffled", tops)
    return out


def last_forward_health(
    adapters: Mapping[str, SMoRELinear], attention_mask: Tensor | None = None
) -> dict[str, Any]:
    """Routing health of the adapters' last forward (no tasks): ``{"modules", "summary"}``.

    The held-out :func:`routing_health` of one batch already run: the same definitions and
    key names, without tasks.

    Args:
        adapters: ``{name: SMoRELinear}`` after a forward (modules without one are skipped).
        attention_mask: the last batch's mask (any shape with ``N`` entries); padding is then
            left out. Without it every routed token is measured, padding included.
    """
    trees, sizes, count = {}, {}, 0
    for name, layer in adapters.items():
        routing = layer.last_routing
        if routing is None:
            continue
        experts, scores = routing.experts, routing.scores
        if attention_mask is not None:
            valid = attention_mask.reshape(-1).bool().to(experts[0].device)
            if valid.numel() != routing.num_tokens:
                raise ValueError(
                    f"attention_mask has {valid.numel()} entries but adapter {name!r} routed "
                    f"{routing.num_tokens} tokens; pass the mask of the last forward"
                )
            experts, scores = [e[valid] for e in experts], [s[valid] for s in scores]
        trees[name] = RoutingTree(experts, scores, list(routing.fanout))
        sizes[name], count = list(layer.config.num_experts), trees[name].num_tokens
    modules = {n: module_health(t, sizes[n]) for n, t in trees.items()}
    return {"modules": modules, "summary": summarize(modules, count)}


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class RoutingHealthCallback:
    """A ``transformers.TrainerCallback`` logging :func:`routing_health`'s summary.

    Every ``every_n_steps`` optimizer steps (and at every evaluation) it measures the model on
    the held-out ``batches`` and keeps ``{"step", **summary}`` in :attr:`history`. The newest
    summary, prefixed ``routing/`` (e.g. ``routing/task_nmi``), is added to the next training
    log (so it reaches ``trainer.state.log_history`` and the console) and to the metrics that
    ``trainer.evaluate()`` returns. Duck-typed, so this module does not import
    ``transformers``: every other ``on_*`` event is a no-op.

    Under several ranks (DDP, FSDP) every rank measures all of ``batches`` (an FSDP forward
    needs every rank), so every rank, rank 0 included, reports the whole held-out set: pass
    the same batches on every rank.

    Args:
        batches: held-out batches (see :func:`routing_health`); kept as a list.
        tasks: one task per sequence of ``batches``, or ``None``.
        every_n_steps: measure every this many optimizer steps.
        shuffled_control: also log ``routing/task_nmi_shuffled``.
        seed: seed of the shuffled control.
    """

    prefix = "routing/"

    def __init__(
        self,
        batches: Iterable[Mapping[str, Any]],
        tasks: Sequence[str] | None = None,
        every_n_steps: int = 50,
        shuffled_control: bool = True,
        seed: int = 0,
    ):
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be an int >= 1 (got {every_n_steps!r})")
        self.batches, self.tasks = list(batches), None if tasks is None else list(tasks)
        self.every_n_steps, self.seed = every_n_steps, seed
        self.shuffled_control = shuffled_control
        self.history: list[dict[str, Any]] = []
        self._pending: dict[str, Any] | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return _noop
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def measure(self, model: nn.Module, step: int) -> dict[str, Any]:
        """Measure ``model`` now, append ``{"step", **summary}`` to :attr:`history`."""
        summary = routing_health(
            model, self.batches, self.tasks, self.shuffled_control, self.seed
        )["summary"]
        entry = {"step": int(step), **summary}
        self.history.append(entry)
        self._pending = entry
        return entry

    def prefixed(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """``entry`` without ``step``, keys prefixed with ``routing/``."""
        return {self.prefix + k: v for k, v in entry.items() if k != "step"}

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Measure every ``every_n_steps`` global steps."""
        model = kwargs.get("model")
        if model is not None and state.global_step % self.every_n_steps == 0:
            self.measure(model, state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs):
        """Attach the newest unlogged summary to this training log."""
        if self._pending is None or logs is None or any(k.startswith("eval_") for k in logs):
            return
        extra = self.prefixed(self._pending)
        logs.update(extra)
        history = getattr(state, "log_history", None)
        if history and history[-1].get("step") == state.global_step:
            history[-1].update(extra)  # the Trainer recorded a copy of logs before on_log
        self._pending = None

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any
    ) -> None:
        """Measure now and add the summary to the evaluation metrics."""
        model = kwargs.get("model")
        if model is None or metrics is None:
            return
        latest = self.history[-1] if self.history else None
        if latest is None or latest["step"] != state.global_step:
            latest = self.measure(model, state.global_step)
        metrics.update(self.prefixed(latest))

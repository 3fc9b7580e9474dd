"""Routing-health metrics of one adapted module's routed sub-trees (one definition each).

All functions read a :class:`~smore_gnn.nn.tree.RoutingTree` whose tokens are the ones to measure
(padding already removed, see :mod:`smore_gnn.analysis.collect`). Definitions, for expert layer
``l`` with ``s_l`` experts and fanout ``f_l``; a *routing event* is one parent (a node of layer
``l + 1``, or the root for the top layer) picking its ``f_l`` children, so a token has
``F_{l+1}`` events in layer ``l``:

* **spread** of an event: ``max - min`` of the gate scores ``alpha`` of its ``f_l`` picked
  children. 0 means the parent weighs its children alike (the router's scores carry no
  structure); with the switch gate and ``f_l = 2`` the scores are ``(p, 1 - p)`` and the
  spread is ``|2p - 1|``. With ``f_l = 1`` there is one child and the spread is 0 by
  definition (such layers are left out of summaries; see :func:`layer_health`).
* **load share** of expert ``e``: its picks over all picks (sums to 1). **top share**: the
  busiest expert's picks over the number of events, i.e. the fraction of events that pick
  it (siblings are distinct); uniform routing gives ``f_l / s_l``, full collapse 1.
* **load entropy**: entropy of the load share divided by ``log s_l`` (1 = balanced). With
  distinct siblings it cannot fall below ``log f_l / log s_l``.
* **distinct structures**: number of distinct routed trees, two tokens sharing one when their
  trees are isomorphic as rooted trees labelled by ``(layer, expert)`` (siblings unordered,
  scores ignored): :func:`smore_gnn.analysis.tree_signature`, computed here in bulk by
  :func:`structure_ids`.
* **task NMI** (see :func:`smore_gnn.analysis.information.normalized_mutual_info`, arithmetic
  mean of entropies): between the token's task and, per layer, the *multiset of experts the
  token uses in that layer* (:func:`layer_ids`), and, for the whole tree, its structure.
  ``task_nmi_picks`` pairs every pick with its token's task instead (what the task x expert
  heat-map shows); it cannot reach 1 when ``f_l > 1``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from smore_gnn.analysis.information import load_entropy, normalized_mutual_info
from smore_gnn.nn.tree import RoutingTree

COLLAPSE_SHARE = 0.9  # an expert picked by more than 90 % of the events
COLLAPSE_ENTROPY = 0.3  # entropy rescaled from [log f, log s] to [0, 1] below 0.3


def gate_spread(scores: Tensor, fanout: int) -> Tensor:
    """Per routing event, ``max - min`` of its picked children's scores.

    Args:
        scores: ``[N, F_l]`` gate scores of layer ``l``; node ``j`` belongs to event
            ``j // fanout`` of its token.
        fanout: ``f_l``.

    Returns:
        ``[N * F_{l+1}]`` float64 spreads (zeros when ``fanout == 1``).
    """
    if scores.dim() != 2 or scores.size(1) % fanout:
        raise ValueError(
            f"scores must be [N, F_l] with F_l a multiple of fanout={fanout} "
            f"(got {tuple(scores.shape)})"
        )
    events = scores.detach().double().reshape(scores.size(0), -1, fanout)  # [N, F_{l+1}, f_l]
    return (events.amax(-1) - events.amin(-1)).reshape(-1)


def expert_load(experts: Tensor, num_experts: int) -> Tensor:
    """Picks per expert over every node of ``experts`` ``[N, F_l]`` -> ``[s_l]`` float64."""
    if experts.numel() and int(experts.max()) >= num_experts:
        raise ValueError(f"num_experts={num_experts} but expert {int(experts.max())} is used")
    flat = experts.reshape(-1).long()
    return torch.bincount(flat, minlength=num_experts).double()


def load_health(load: Tensor | Sequence[float], fanout: int) -> dict[str, Any]:
    """Load share, top share, normalised entropy and the collapse flag of one expert layer.

    Args:
        load: ``[s_l]`` picks per expert (e.g. :func:`expert_load`, or ``RoutingResult.load``
            whose padding is already excluded).
        fanout: ``f_l``; the number of events is ``sum(load) / f_l``.

    Returns:
        ``load_share`` (list), ``top_share``, ``uniform_top_share`` (``f_l / s_l``),
        ``load_entropy`` and ``collapsed``: with ``f_l < s_l``, top share above
        :data:`COLLAPSE_SHARE` or the entropy rescaled from ``[log f, log s]`` to ``[0, 1]``
        below :data:`COLLAPSE_ENTROPY`.
    """
    load = torch.as_tensor(load, dtype=torch.float64).flatten()
    s, total = load.numel(), float(load.sum())
    events = total / fanout
    top = float(load.max()) / events if events > 0 else 0.0
    ent = load_entropy(load) if s > 1 else 1.0
    collapsed = False
    if fanout < s and total > 0:
        rescaled = (ent * math.log(s) - math.log(fanout)) / (math.log(s) - math.log(fanout))
        collapsed = top > COLLAPSE_SHARE or rescaled < COLLAPSE_ENTROPY
    share = (load / total).tolist() if total > 0 else [0.0] * s
    return {
        "load_share": share,
        "top_share": min(top, 1.0),
        "uniform_top_share": fanout / s,
        "load_entropy": ent,
        "collapsed": bool(collapsed),
    }


def row_ids(rows: Tensor) -> Tensor:
    """Ids of the distinct rows of a non-negative ``[M, k]`` integer tensor: ``[M]`` long.

    Rows are packed into one int64 key each (base ``max + 1``) when that fits, since
    ``torch.unique(dim=0)`` is slow on CPU.
    """
    rows = rows.long()
    if rows.numel() == 0:
        return torch.zeros(rows.size(0), dtype=torch.long, device=rows.device)
    base, width = int(rows.max()) + 1, rows.size(1)
    if width * math.log2(max(base, 2)) < 62:
        weights = base ** torch.arange(width, dtype=torch.long, device=rows.device)  # [k]
        return torch.unique((rows * weights).sum(1), return_inverse=True)[1]
    return torch.unique(rows, dim=0, return_inverse=True)[1]


def layer_ids(tree: RoutingTree, layer: int) -> Tensor:
    """Per token, an id of the multiset of experts it uses in ``layer``: ``[N]`` long."""
    return row_ids(tree.experts[layer].long().sort(dim=1).values)  # [N, F_l], order-free


def structure_ids(tree: RoutingTree) -> Tensor:
    """Per token, an id of its routed tree's structure: ``[N]`` long.

    Equal ids iff :func:`smore_gnn.analysis.tree_signature` is equal (isomorphic trees
    labelled by ``(layer, expert)``): bottom-up, every node gets the id of the pair (its
    expert, the sorted ids of its children), numbered over all tokens at once.
    """
    n = tree.num_tokens
    labels = tree.experts[0].long()  # [N, F_0]: a leaf is its expert
    for l in range(1, tree.num_layers + 1):
        f = tree.fanout[l - 1]
        kids = labels.reshape(n, -1, f).sort(dim=-1).values  # [N, F_l, f]
        if l < tree.num_layers:
            own = tree.experts[l].long()[..., None]  # [N, F_l, 1]
        else:
            own = kids.new_zeros((n, 1, 1))  # the root
        rows = torch.cat([own, kids], dim=-1).reshape(-1, f + 1)  # [N * F_l, 1 + f]
        labels = row_ids(rows).reshape(n, -1)
    return labels[:, 0]


def task_expert_counts(experts: Tensor, task_codes: Tensor, num_tasks: int, num_experts: int):
    """``[num_tasks, s_l]`` picks of each expert by the tokens of each task."""
    per_node = task_codes.long()[:, None].expand_as(experts).reshape(-1)  # [N * F_l]
    flat = per_node * num_experts + experts.reshape(-1).long()
    return torch.bincount(flat, minlength=num_tasks * num_experts).reshape(num_tasks, -1)


def _nmi(tasks: Tensor, labels: Tensor) -> float:
    return normalized_mutual_info(tasks.cpu().numpy(), labels.cpu().numpy())


def layer_health(
    tree: RoutingTree,
    layer: int,
    num_experts: int,
    tasks: Tensor | None = None,
    shuffled: Tensor | None = None,
) -> dict[str, Any]:
    """Every metric of one expert layer (see the module docstring).

    Args:
        tree: routed sub-trees of the measured tokens.
        layer: expert layer ``l``.
        num_experts: ``s_l``.
        tasks: ``[N]`` task codes ``0..K-1`` of the tokens, or ``None``.
        shuffled: ``[N]`` task codes of the shuffled control, or ``None``.

    Returns:
        ``layer``, ``num_experts``, ``fanout``, ``events``, ``spread_median``,
        ``spread_mean``, :func:`load_health`'s keys and, with tasks, ``task_nmi``,
        ``task_nmi_picks``, ``task_expert_counts`` (``[K][s_l]``) and, with a control,
        ``task_nmi_shuffled``.
    """
    f = tree.fanout[layer]
    spread = gate_spread(tree.scores[layer], f)
    out: dict[str, Any] = {
        "layer": layer,
        "num_experts": num_experts,
        "fanout": f,
        "events": int(spread.numel()),
        "spread_median": float(spread.median()) if spread.numel() else 0.0,
        "spread_mean": float(spread.mean()) if spread.numel() else 0.0,
        **load_health(expert_load(tree.experts[layer], num_experts), f),
    }
    ids = None
    if tasks is not None:
        experts = tree.experts[layer]
        num_tasks = int(tasks.max()) + 1 if tasks.numel() else 0
        picks_tasks = tasks[:, None].expand_as(experts).reshape(-1)
        ids = layer_ids(tree, layer)
        out["task_nmi"] = _nmi(tasks, ids)
        out["task_nmi_picks"] = _nmi(picks_tasks, experts.reshape(-1))
        counts = task_expert_counts(experts, tasks, num_tasks, num_experts)
        out["task_expert_counts"] = counts.tolist()
    if shuffled is not None:
        out["task_nmi_shuffled"] = _nmi(shuffled, layer_ids(tree, layer) if ids is None else ids)
    return out


def module_health(
    tree: RoutingTree,
    num_experts: Sequence[int],
    tasks: Tensor | None = None,
    shuffled: Tensor | None = None,
) -> dict[str, Any]:
    """:func:`layer_health` of every layer plus the whole-tree metrics of one module.

    Returns:
        ``{"tokens", "layers": [...], "distinct_structures"}`` plus, with tasks,
        ``task_nmi_tree`` and, with a control, ``task_nmi_tree_shuffled``.
    """
    if len(num_experts) != tree.num_layers:
        raise ValueError(
            f"num_experts has {len(num_experts)} entries for a {tree.num_layers}-layer tree"
        )
    ids = structure_ids(tree)
    out: dict[str, Any] = {
        "tokens": tree.num_tokens,
        "layers": [
            layer_health(tree, l, int(s), tasks, shuffled) for l, s in enumerate(num_experts)
        ],
        "distinct_structures": int(ids.unique().numel()),
    }
    if tasks is not None:
        out["task_nmi_tree"] = _nmi(tasks, ids)
    if shuffled is not None:
        out["task_nmi_tree_shuffled"] = _nmi(shuffled, ids)
    return out


def typical_tokens(
    tree: RoutingTree, token_tasks: Sequence[str], per_task: int = 1
) -> dict[str, list[tuple[int, float]]]:
    """Per task, tokens whose routed tree has the task's most frequent structures.

    Args:
        tree: routed sub-trees of ``N`` tokens.
        token_tasks: each token's task (``N`` entries).
        per_task: structures per task, most frequent first (ties: first seen).

    Returns:
        ``{task (sorted): [(token, share of the task's tokens with that structure), ...]}``;
        the token is the first one with the structure.
    """
    if len(token_tasks) != tree.num_tokens:
        raise ValueError(
            f"token_tasks has {len(token_tasks)} entries for {tree.num_tokens} tokens"
        )
    if per_task < 1:
        raise ValueError(f"per_task must be >= 1 (got {per_task})")
    ids = structure_ids(tree).tolist()
    out = {}
    for task in sorted(set(token_tasks)):
        tokens = [i for i, t in enumerate(token_tasks) if t == task]
        counts = Counter(ids[i] for i in tokens)
        first = {}
        for i in tokens:
            first.setdefault(ids[i], i)
        out[task] = [(first[k], n / len(tokens)) for k, n in counts.most_common(per_task)]
    return out


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (0.0 for none)."""
    return float(np.median(np.asarray(values, dtype=np.float64))) if len(values) else 0.0

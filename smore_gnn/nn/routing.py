"""How :class:`~smore_gnn.nn.router.SMoRERouter` computes its routing: the router of docs/spec.md
§3 in fewer, larger operations than its readable form
(:meth:`~smore_gnn.nn.router.SMoRERouter.route_reference`), where per-operation overhead, not
arithmetic, sets the time:

* ``fc1`` of a child router is split by its input blocks,
  ``fc1(concat(u, k_1, ..., k_j)) = (W_u u + b) + W_1 k_1 + ... + W_j k_j``: the ``W_u u + b``
  of every layer come from ONE GEMM and each ``W_j k`` from a per-key table ``[s, d_g]``
  whose picked rows are gathered, so no concatenation and no expansion per layer; when the
  noisy top-k gate trains, its noise layer is split the same way;
* under the ``switch`` and ``dense`` gates ``fc2`` and the keys fold into one matrix,
  ``logits = scale (a (K W_2)^T + K b_2)`` (``a`` the activated ``fc1`` output).

With autograd (training) the tables are built per forward, so gradients reach every weight,
and each layer's gate (:func:`~smore_gnn.nn.gates.gate_output`) runs with its balance loss.
Without autograd in eval mode (evaluation, generation) the tables are cached and rebuilt when
a parameter changes (:func:`~smore_gnn.nn.staleness.cached`), the picks come from
:func:`~smore_gnn.nn.gates.pick` (no noise, no statistics), and the balance statistics are left
to the
:class:`~smore_gnn.nn.routing_result.RoutingResult`, computed on first access. Every way equals
the reference up to float32 rounding, gradients included (``tests/test_routing.py``), so
a reentrant checkpoint of an eval-mode forward, recomputed with autograd, routes the same
except at ties closer than that rounding. :mod:`smore_gnn.nn.decode` applies the cached
tables to a whole ``SMoRELinear`` forward of a few tokens.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smore_gnn.nn.gates import (
    GateOutput,
    gate_output,
    pick,
    switch_backward,
    switch_forward,
    transposed_for,
)
from smore_gnn.nn.routing_result import RoutingResult
from smore_gnn.nn.staleness import cached


def no_autograd() -> bool:
    """Whether autograd is off and no ``torch.compile`` trace is running."""
    return not torch.is_grad_enabled() and not torch.compiler.is_compiling()


def _f32(t: Tensor) -> Tensor:
    return t if t.dtype == torch.float32 else t.float()


def router_tensors(router: nn.Module) -> list[Tensor]:
    """The parameters :func:`build_tables` reads."""
    out = []
    for layer in router.layers:
        fc1, fc2 = layer.fc1, layer.fc2
        out += [fc1.weight, fc1.bias, fc2.weight, fc2.bias, layer.keys]
        if layer.log_logit_scale is not None:
            out.append(layer.log_logit_scale)
    return out


def build_tables(router: nn.Module) -> dict:
    """The float32 tables of an :class:`~smore_gnn.nn.router.SMoRERouter` (see module docstring)
    and per layer what routing reads (``plan``)."""
    layers = router.layers
    num_layers, d_g = len(layers), layers[0].fc2.out_features
    d_u = layers[0].fc1.in_features - (num_layers - 1) * d_g
    # [s_l, d_g] float32 keys handed down (the leaves hand down none)
    keys = [None] + [layer.passed_keys for layer in layers[1:]]
    token_w, token_b, noise_w, plan = [], [], [], []
    for l, layer in enumerate(layers):
        w1, b1 = _f32(layer.fc1.weight), _f32(layer.fc1.bias)  # [d_g, d_u + j d_g]
        token_w.append(w1[:, :d_u])
        token_b.append(b1)
        blocks = w1[:, d_u:].split(d_g, dim=1) if l < num_layers - 1 else ()  # top first
        ancestors = [keys[num_layers - 1 - j] @ w.t() for j, w in enumerate(blocks)]  # [s_j, d_g]
        w2, b2, k = _f32(layer.fc2.weight), _f32(layer.fc2.bias), _f32(layer.keys)
        scale = layer.logit_scale
        if layer.gate_type == "noisy_topk":  # cosine: q is normalised, nothing folds
            head = (w2, b2, F.normalize(k, dim=-1).t().contiguous(), scale)
        elif isinstance(scale, float) and scale == 1.0:  # [s, d_g], [s]
            head = (k @ w2, k @ b2, None, 1.0)
        else:
            head = ((k @ w2) * scale, (k @ b2) * scale, None, 1.0)
        act = torch.relu if layer.act == "relu" else layer.activate  # the default: one call
        noise = None
        if layer.noise is not None and layer.training:  # noise(h) split as fc1 is
            wn = _f32(layer.noise.weight)  # [s, d_u + j d_g]
            bn = None if layer.noise.bias is None else _f32(layer.noise.bias)
            parts = wn[:, d_u:].split(d_g, dim=1) if l < num_layers - 1 else ()
            noise_w.append(wn[:, :d_u])  # the token part, [s, d_u]
            noise = (
                bn,
                [keys[num_layers - 1 - j] @ w.t() for j, w in enumerate(parts)],
                layer.noise_eps,
            )
        plan.append(
            (
                act,
                head,
                ancestors,
                layer.gate_type,
                layer.fanout,
                layer.weight,
                layer.z_loss_weight,
                noise,
            )
        )
    return {
        "token_w": torch.cat(token_w),  # [L d_g, d_u], layer 0 first
        "token_b": torch.cat(token_b),  # [L d_g]
        "plan": plan,
        # training the noisy top-k gate: the noise layers' token parts, [sum s_l, d_u]
        "noise_w": torch.cat(noise_w) if noise_w else None,
        "noise_sizes": [w.size(0) for w in noise_w],
        "d_g": d_g,
        "fanout": list(router.fanout),
        "transposed": router.transposed_softmax,  # SpeedSettings.transposed_softmax
    }


def routing_tables(router: nn.Module, cache: dict) -> dict:
    """:func:`build_tables`, cached in ``cache`` (:func:`~smore_gnn.nn.staleness.cached`)."""
    return cached(cache, "tables", router, router_tensors, build_tables)


def _logits(a: Tensor, head: tuple) -> Tensor:
    # a: [E, d_g] activated fc1 output -> [E, s] logits
    w, b, unit_keys, scale = head
    if unit_keys is None:  # switch / dense: fc2, keys and scale folded
        return F.linear(a, w, b)
    logits = F.normalize(F.linear(a, w, b), dim=-1) @ unit_keys  # cosine
    return logits if isinstance(scale, float) and scale == 1.0 else logits * scale


def _stats(
    plan: list, logits: list[tuple[Tensor, int]], valid: Tensor | None, transposed: bool | None
) -> list[GateOutput]:
    # every layer's gate on its [N P, s] logits (P parents per token), with its statistics
    return [
        gate_output(
            p[3], layer_logits, p[4], _events(valid, parents), p[5], p[6], transposed=transposed
        )
        for p, (layer_logits, parents) in zip(plan, logits)
    ]


def _events(valid: Tensor | None, parents: int) -> Tensor | None:
    # [N] -> [N P]: which routing events (token, parent) are real
    return valid if valid is None or parents == 1 else valid.repeat_interleave(parents)


def _ancestor_ids(experts: list, l: int) -> list[Tensor]:
    """Per ancestor layer ``j > l`` (top first), each routing event's ancestor at ``j``:
    ``[N F_{l+1}]`` ids (event ``p`` descends from ancestor ``p // (F_{l+1} / F_j)``)."""
    parents, out = experts[l + 1].size(1), []
    for j in range(len(experts) - 1, l, -1):
        ids = experts[j]  # [N, F_j]
        if ids.size(1) != parents:
            ids = ids.repeat_interleave(parents // ids.size(1), dim=1)  # [N, F_{l+1}]
        out.append(ids.reshape(-1))
    return out


def _with_ancestors(own: Tensor, tables: list[Tensor], ids: list[Tensor]) -> Tensor:
    """``own`` [N, c] (one row per token) plus, per ancestor layer, the row of its table
    (``[s_j, c]``) picked by ``ids`` (:func:`_ancestor_ids`): ``[N P, c]``."""
    n, c = own.size(0), own.size(1)
    h = own
    for table, picked in zip(tables, ids):
        rows = table.index_select(0, picked)  # [N P, c]
        # [N, P, c] + [N, 1, c]; one token: [P, c] + [1, c], a 2-D broadcast (fewer calls)
        h = h + rows if n == 1 else (h.view(n, -1, c) + rows.view(n, -1, c)).view(-1, c)
    return h


class _SwitchStep(torch.autograd.Function):
    """One layer of the top-down walk under the switch gate, with a hand-written backward:
    the routing events' ``fc1`` sums (the token's part plus each ancestor's table row), ReLU,
    the folded ``fc2``/keys head and the gate (:func:`~smore_gnn.nn.gates.switch_forward`).

    Inputs: ``token`` [N, d_g]; ``head_w`` [s, d_g], ``head_b`` [s]; ``valid`` [N P] or None;
    ``fanout``, ``weight`` (balance), ``transposed`` (softmax kernel), ``parents`` ``P``;
    then ``num_tables`` ancestor tables [s_j, d_g] and as many id vectors [N P].
    Outputs: as :func:`~smore_gnn.nn.gates.switch_gate`'s ``GateOutput`` fields.
    """

    @staticmethod
    def forward(ctx, token, head_w, head_b, valid, fanout, weight, transposed, parents, k, *rest):
        tables, ids = rest[:k], rest[k:]
        n, c = token.shape
        h = token
        if k:  # [N P, d_g]: the ancestors' rows, plus the token's own part per event
            h = tables[0].index_select(0, ids[0])
            for table, picked in zip(tables[1:], ids[1:]):
                h.add_(table.index_select(0, picked))
            h.view(n, parents, c).add_(token[:, None])
        a = torch.relu(h)
        logits = torch.addmm(head_b, a, head_w.t())  # [N P, s]
        outputs, saved = switch_forward(ctx, logits, valid, fanout, weight, transposed)
        ctx.shape = (n, parents, c, [t.size(0) for t in tables])
        ctx.save_for_backward(a, head_w, *ids, *saved)
        return outputs

    @staticmethod
    def backward(ctx, _experts, g_scores, g_loss, _load, _importance):
        n, parents, c, sizes = ctx.shape
        a, head_w, *rest = ctx.saved_tensors
        ids, saved = rest[: len(sizes)], rest[len(sizes) :]
        need = ctx.needs_input_grad
        g_logits = switch_backward(ctx, saved, g_scores, g_loss)  # [N P, s]
        g_head_w = g_logits.t() @ a if need[1] else None
        g_head_b = g_logits.sum(0) if need[2] else None
        g_h = torch.ops.aten.threshold_backward(g_logits @ head_w, a, 0)  # [N P, d_g]
        g_token = g_h if parents == 1 else g_h.view(n, parents, c).sum(1)
        g_tables = [
            g_h.new_zeros(size, c).index_add_(0, picked, g_h) for size, picked in zip(sizes, ids)
        ]
        nones = [None] * len(sizes)
        return (g_token, g_head_w, g_head_b, None, None, None, None, None, None, *g_tables, *nones)


def _fused_switch(plan_entry: tuple) -> bool:
    """Whether a layer's training step runs as :class:`_SwitchStep`: the switch gate with its
    folded head, a ReLU router, no z-loss; not under ``torch.compile`` (whose tracer does not
    take the Function's variable arguments; the compiled graph fuses the plain ops anyway)."""
    act, head, _, gate_type, _, _, z_weight, _ = plan_entry
    fits = gate_type == "switch" and head[2] is None and act is torch.relu and z_weight <= 0
    return fits and not torch.compiler.is_compiling()


def route(
    token: Sequence[Tensor],
    valid: Tensor | None,
    tables: dict,
    noise: Sequence[Tensor] | None = None,
    lazy: bool = True,
) -> RoutingResult:
    """Route ``N`` tokens from their own part of every layer's ``fc1`` (and of the noise
    layer's, when training the noisy top-k gate).

    Args:
        token: per layer (bottom first) ``[N, d_g]`` float32, ``W_u u + b`` of its ``fc1`` for
            the router input ``u`` (padding rows zero: ``token`` is the bias there).
        valid: ``[N]`` bool (False: padding, left out of the statistics) or None.
        tables: :func:`build_tables` of the router, with autograd (training) or
            :func:`routing_tables` (cached, no autograd).
        noise: per layer ``[N, s_l]``, the noise layer's ``u`` part (noisy top-k training);
            None: no router noise.
        lazy: compute the statistics on first access (evaluation without autograd); else
            every layer's gate (:func:`~smore_gnn.nn.gates.gate_output`) runs here, with its
            balance loss.
    """
    plan, n, num_layers = tables["plan"], token[0].size(0), len(tables["plan"])
    transposed = tables["transposed"]
    experts: list = [None] * num_layers  # filled top-down, stored bottom first
    scores: list = [None] * num_layers
    stats: list = [None] * num_layers
    for l in reversed(range(num_layers)):
        act, head, ancestors, gate_type, f, weight, z_weight, noise_plan = plan[l]
        top = l == num_layers - 1
        parents = 1 if top else experts[l + 1].size(1)  # events (token, parent) per token
        ids = [] if top else _ancestor_ids(experts, l)
        if not lazy and _fused_switch(plan[l]):  # the whole step, one autograd node
            events = _events(valid, parents)
            use = transposed_for(token[l].device.type, head[0].size(0), transposed)
            out = GateOutput(
                *_SwitchStep.apply(
                    token[l],
                    head[0],
                    head[1],
                    events,
                    f,
                    weight,
                    use,
                    parents,
                    len(ids),
                    *ancestors,
                    *ids,
                )
            )
            picked, score, stats[l] = out.experts, out.scores, out
            if parents > 1:
                picked, score = picked.reshape(n, parents * f), score.reshape(n, parents * f)
            experts[l], scores[l] = picked, score  # [N, F_l]
            continue
        h = token[l] if top else _with_ancestors(token[l], ancestors, ids)  # [N P, d_g]
        a = act(h)
        logits = F.linear(a, head[0], head[1]) if head[2] is None else _logits(a, head)  # [N P, s]
        if not lazy:  # the gate with its statistics and balance loss (autograd)
            std = None
            if noise is not None and noise_plan is not None:
                bias, noise_tables, eps = noise_plan
                own = noise[l] if bias is None else noise[l] + bias  # [N, s]
                pre = own if top else _with_ancestors(own, noise_tables, ids)
                std = F.softplus(pre) + eps  # [N P, s]
            events = _events(valid, parents)
            out = gate_output(gate_type, logits, f, events, weight, z_weight, std, transposed)
            picked, score, stats[l] = out.experts, out.scores, out
        else:
            (picked, score), stats[l] = pick(gate_type, logits, f, transposed), (logits, parents)
        if parents > 1:
            picked, score = picked.reshape(n, parents * f), score.reshape(n, parents * f)
        experts[l], scores[l] = picked, score  # [N, F_l]
    if lazy:
        return RoutingResult(
            experts,
            scores,
            tables["fanout"],
            stats=partial(_stats, plan, stats, valid, transposed),
        )
    return RoutingResult(
        experts,
        scores,
        tables["fanout"],
        balance_loss=functools.reduce(
            operator.add, [o.loss for o in stats]
        ),  # no stack: fewer ops
        load=[o.load for o in stats],
        importance=[o.importance for o in stats],
        layer_losses=[o.loss for o in stats],
    )

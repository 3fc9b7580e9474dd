"""Routing without autograd in fewer, larger operations (evaluation, generation; issue 13).

The same router as :class:`~smore_gnn.router.SMoRERouter` (docs/spec.md §3), rearranged for
the steps that need no gradient, where a decode step routes a handful of tokens and the
number of operations, not the arithmetic, sets the time:

* ``fc1`` of a child router is split by its input blocks,
  ``fc1(concat(u, k_1, ..., k_j)) = (W_u u + b) + W_1 k_1 + ... + W_j k_j``: the ``W_u u + b``
  of every layer come from ONE GEMM and each ``W_j k`` from a per-key table ``[s, d_g]``
  whose picked rows are gathered, so no concatenation and no expansion per layer;
* under the ``switch`` and ``dense`` gates ``fc2`` and the keys fold into one matrix,
  ``logits = scale (a (K W_2)^T + K b_2)`` (``a`` the activated ``fc1`` output);
* the switch gate's renormalised top-``f`` probabilities (``f > 1``) are the softmax of the
  top-``f`` logits (the same numbers, two operations instead of five);
* the balance statistics are left to the :class:`~smore_gnn.routing_result.RoutingResult`,
  which computes them with the general gate (:func:`~smore_gnn.gates.gate_output`) on first
  access.

The tables are cached and rebuilt when a parameter changes (:func:`cached`; the first adapter
built installs process-wide parameter/module registration hooks that notice replacements in
adapter modules; importing installs nothing). The path is taken only in eval mode (no router
noise) and outside ``torch.compile``; it equals the general path up to float32 rounding
(``tests/test_router_decode.py``, ``tests/test_layer_decode.py``), so a reentrant checkpoint
of an eval-mode forward, recomputed with autograd by the general path, routes the same except
at ties closer than that rounding. :mod:`smore_gnn.decode_layer` does the same for a whole
``SMoRELinear`` forward of a few tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smore_gnn.gates import GateOutput, gate_output, pick
from smore_gnn.routing_result import RoutingResult
from smore_gnn.staleness import cached


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
    """The float32 tables of an :class:`~smore_gnn.router.SMoRERouter` (see module docstring)
    and per layer what routing reads (``plan``)."""
    layers = router.layers
    num_layers, d_g = len(layers), layers[0].fc2.out_features
    d_u = layers[0].fc1.in_features - (num_layers - 1) * d_g
    keys = [layer.passed_keys for layer in layers]  # [s_l, d_g] float32
    token_w, token_b, plan = [], [], []
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
        else:  # [s, d_g], [s]
            head = ((k @ w2) * scale, (k @ b2) * scale, None, 1.0)
        act = torch.relu if layer.act == "relu" else layer.activate  # the default: one call
        plan.append((act, head, ancestors, layer.gate_type, layer.fanout,
                     layer.weight, layer.z_loss_weight))  # fmt: skip
    return {
        "token_w": torch.cat(token_w),  # [L d_g, d_u], layer 0 first
        "token_b": torch.cat(token_b),  # [L d_g]
        "plan": plan,
        "d_g": d_g,
        "fanout": list(router.fanout),
    }


def routing_tables(router: nn.Module, cache: dict) -> dict:
    """:func:`build_tables`, cached in ``cache`` (:func:`cached`)."""
    return cached(cache, "tables", router, router_tensors, build_tables)


def _logits(a: Tensor, head: tuple) -> Tensor:
    # a: [E, d_g] activated fc1 output -> [E, s] logits
    w, b, unit_keys, scale = head
    if unit_keys is None:  # switch / dense: fc2, keys and scale folded
        return F.linear(a, w, b)
    logits = F.normalize(F.linear(a, w, b), dim=-1) @ unit_keys  # cosine
    return logits if isinstance(scale, float) and scale == 1.0 else logits * scale


def _stats(plan: list, logits: list[tuple[Tensor, int]], valid: Tensor | None) -> list[GateOutput]:
    # every layer's gate on its [N P, s] logits (P parents per token), with its statistics
    out = []
    for (_, _, _, gate_type, fanout, weight, z_weight), (layer_logits, parents) in zip(
        plan, logits
    ):
        events = valid if valid is None or parents == 1 else valid.repeat_interleave(parents)
        out.append(gate_output(gate_type, layer_logits, fanout, events, weight, z_weight))
    return out


def route_without_autograd(
    token: Sequence[Tensor], valid: Tensor | None, tables: dict
) -> RoutingResult:
    """Route ``N`` tokens from their own part of every layer's ``fc1``.

    Args:
        token: per layer (bottom first) ``[N, d_g]`` float32, ``W_u u + b`` of its ``fc1`` for
            the router input ``u`` (padding rows zero: ``token`` is the bias there).
        valid: ``[N]`` bool (False: padding, left out of the statistics) or None.
        tables: :func:`routing_tables` of the router (in eval mode).

    Returns:
        The routing, its statistics computed on first access.
    """
    plan, d_g, n = tables["plan"], tables["d_g"], token[0].size(0)
    num_layers = len(plan)
    experts: list = [None] * num_layers  # filled top-down, stored bottom first
    scores: list = [None] * num_layers
    stats: list = [None] * num_layers
    for l in reversed(range(num_layers)):
        act, head, ancestors, gate_type, f = plan[l][:5]
        h, parents = token[l], 1
        if l < num_layers - 1:  # events (token, parent): own part plus the ancestors' keys
            parents = experts[l + 1].size(1)  # F_{l+1}
            for j, table in zip(range(num_layers - 1, l, -1), ancestors):
                ids = experts[j]  # [N, F_j]; parent p descends from ancestor p // (F_{l+1}/F_j)
                if ids.size(1) != parents:
                    ids = ids.repeat_interleave(parents // ids.size(1), dim=1)  # [N, F_{l+1}]
                keys = table.index_select(0, ids.reshape(-1))  # [N P, d_g]
                if n == 1:  # [P, d_g] + [1, d_g]: a 2-D broadcast (fewer calls)
                    h = h + keys
                else:  # [N, P, d_g] + [N, 1, d_g]
                    h = (h.view(n, -1, d_g) + keys.view(n, parents, d_g)).view(n * parents, d_g)
        a = act(h)  # [N P, d_g]
        logits = F.linear(a, head[0], head[1]) if head[2] is None else _logits(a, head)  # [N P, s]
        if gate_type == "switch" and f > 1:  # softmax is monotone: the same picks, and
            top, picked = logits.topk(f, dim=-1)  # p_i / sum_top p = softmax(top logits)
            score = top.softmax(dim=-1)  # [N P, f]
        else:
            picked, score = pick(gate_type, logits, f)  # [N P, f]
        if parents > 1:
            picked, score = picked.reshape(n, parents * f), score.reshape(n, parents * f)
        experts[l], scores[l], stats[l] = picked, score, (logits, parents)  # [N, F_l]
    return RoutingResult(
        experts, scores, tables["fanout"], stats=partial(_stats, plan, stats, valid)
    )

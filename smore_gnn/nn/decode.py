"""A whole ``SMoRELinear`` forward of a few tokens without autograd (a decode step).

The GNN pass of :meth:`SMoRELinear._propagate` on the regular trees (docs/spec.md §4-§5, §10)
in fewer operations, from weights rearranged once and cached
(:func:`smore_gnn.nn.staleness.cached`):

* ONE GEMM projects the tokens for every expert layer (``A_l``) and for every layer's router:
  with the router input ``u = D x + d`` only feeding ``fc1``, its rows ``W_u D`` (bias
  ``W_u d + b``) join the stack, so the router starts from ``fc1``'s token part
  (:func:`smore_gnn.nn.routing.route`); with ``router_input_norm`` the stack holds
  ``D`` and ``u`` is normalised first, as in the general path;
* each layer's residual bias carries ``W_l``'s bias and the scale ``c_l`` is folded into ``B``;
  residuals are computed for every expert and the picked rows gathered;
* children are summed with their scores by one batched matmul per layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smore_gnn.nn.fused import picked_rows, token_column
from smore_gnn.nn.masks import resolve_mask
from smore_gnn.nn.routing import _f32, build_tables, no_autograd, route, router_tensors
from smore_gnn.nn.routing_result import RoutingResult
from smore_gnn.nn.staleness import cached


def forward_mask(
    explicit: Tensor | None, stored: Tensor | None, lead: torch.Size, checked: bool, layer
) -> Tensor | None:
    """:func:`~smore_gnn.nn.masks.resolve_mask`, then ``None`` for an all-real mask on the CPU (no
    masking work). The mask a model wrapper sets on the layer (``stored``) is resolved once and
    the resolution kept in ``layer._mask_memo`` while that object is unchanged (same version)
    for the same token shape, so decode steps of one generate call do not check it again. An
    inference tensor has no version counter: a mask made under ``torch.inference_mode`` and
    then changed in place is not noticed (the wrapper makes a new mask per forward)."""
    if explicit is not None or stored is None or checked or torch.compiler.is_compiling():
        return _none_if_all_real(resolve_mask(explicit, stored, lead, checked=checked))
    version = None if stored.is_inference() else stored._version
    hit = layer._mask_memo
    if hit is not None and hit[0] is stored and hit[1] == version and hit[2] == lead:
        return hit[3]
    mask = _none_if_all_real(resolve_mask(None, stored, lead))
    layer._mask_memo = (stored, version, lead, mask)
    return mask


def _none_if_all_real(mask: Tensor | None) -> Tensor | None:
    if mask is not None and mask.device.type == "cpu" and not torch.compiler.is_compiling():
        return None if bool(mask.all()) else mask  # [N] bool
    return mask


def small_forward_applies(layer: nn.Module, num_tokens: int) -> bool:
    """Whether :func:`small_forward` serves this forward of an ``SMoRELinear``: eval mode, no
    autograd, the GNN backend, ``1..settings.small_max_tokens`` tokens, ``smore``/``smore_star``.
    """
    cfg = layer.config
    return (
        0 < num_tokens <= layer.settings.small_max_tokens
        and not layer.training
        and cfg.backend == "gnn"
        and cfg.propagation != "momor"
        and no_autograd()
    )


def _banks(layer: nn.Module) -> list[nn.Module]:
    return [layer.experts[0]] if layer.config.shared_pool else list(layer.experts)


def _tensors(layer: nn.Module) -> list[Tensor]:
    # every adapter parameter _build reads (not W_proj: read per call)
    out = router_tensors(layer.router)
    down = layer.router.down_proj
    if down is not None:
        out += [down.weight, down.bias]
    for bank in _banks(layer):
        out += [bank.lora_A.weight, bank.lora_A.bias, bank.lora_B, bank.lora_B_bias]
    for conv in layer.convs:
        if conv.lin is not None:
            out += [conv.lin.weight, conv.lin.bias]
    return [t for t in out if t is not None]


def _stack(rows: list[tuple[Tensor, Tensor | None]], dtype: torch.dtype):
    # [(W [o_i, d], b [o_i] | None)] -> W [sum o_i, d], b [sum o_i] | None, in dtype
    weight = torch.cat([w.to(dtype) for w, _ in rows])
    if all(b is None for _, b in rows):
        return weight, None
    biases = [weight.new_zeros(w.size(0)) if b is None else b.to(dtype) for w, b in rows]
    return weight, torch.cat(biases)


def _propagation(layer: nn.Module) -> list[tuple]:
    # per layer l: (c_l B^T [s, r, d_{l+1}], c_l b + b_W [s, 1, d_{l+1}] or None, W^T or None)
    out = []
    for bank, conv, c in zip(layer.experts, layer.convs, layer.config.residual_scales):
        weight = bank.lora_B.transpose(1, 2) * c  # [s, r, d_{l+1}]
        bias = None if bank.lora_B_bias is None else bank.lora_B_bias * c  # [s, d_{l+1}]
        lin = conv.lin
        if lin is not None and lin.bias is not None:  # W m + b_W: b_W joins the residual
            bias = lin.bias.expand(bank.num_experts, -1) if bias is None else bias + lin.bias
        bias = None if bias is None else bias[:, None, :].contiguous()
        out.append((weight.contiguous(), bias, None if lin is None else lin.weight.t()))
    return out


def _build(layer: nn.Module) -> dict:
    # everything a decode step of ``layer`` reads but W_proj (cached by small_forward)
    router = layer.router
    tables = build_tables(router)
    down, fold = router.down_proj, not router.input_norm
    lead: list[tuple[Tensor, Tensor | None]] = []
    if fold:  # fc1's token part of every layer: W_u (D x + d) + b = (W_u D) x + (W_u d + b)
        w_u, b_u = tables["token_w"], tables["token_b"]  # [L d_g, d_u], [L d_g]
        if down is None:
            lead.append((w_u, b_u))
        else:
            bias = b_u if down.bias is None else b_u + w_u @ _f32(down.bias)
            lead.append((w_u @ _f32(down.weight), bias))
    elif down is not None:
        lead.append((down.weight, down.bias))
    banks = [(bank.lora_A.weight, bank.lora_A.bias) for bank in _banks(layer)]
    return {
        "tables": tables,
        "fold": fold,
        "stack": _stack(lead + banks, layer.proj.weight.dtype),  # ([R, d], [R] | None)
        "sizes": [w.size(0) for w, _ in lead + banks],  # the router block, then each A_l
        # with the fold, the router block split per layer (fc1's token part of each)
        "pieces": [tables["d_g"]] * len(layer.router.layers) + [w.size(0) for w, _ in banks],
        # router chunks before the A_l: of "pieces" with the fold, else of "sizes" (0 or 1)
        "lead": len(layer.router.layers) if fold else len(lead),
        "propagation": _propagation(layer),
        "star": layer.config.propagation == "smore_star",
    }


def _activation(module: nn.Module):
    if isinstance(module, nn.Identity):
        return None
    if isinstance(module, nn.Tanh):
        return torch.tanh
    return torch.relu if isinstance(module, nn.ReLU) else module


def _residuals(
    hidden: Tensor, experts: Tensor, weight: Tensor, bias: Tensor | None, column: Tensor | None
) -> Tensor:
    # hidden [N, s r], experts [N, K] -> [N K, d]: every expert's residual, picked rows gathered
    n, s, r = hidden.size(0), weight.size(0), weight.size(1)
    h = hidden.view(s, 1, r) if n == 1 else hidden.view(n, s, r).transpose(0, 1)  # [s, N, r]
    every = torch.bmm(h, weight) if bias is None else torch.baddbmm(bias, h, weight)  # [s, N, d]
    rows = experts.view(-1) if n == 1 else picked_rows(experts, column)  # [N K], row e N + t
    return every.view(s * n, -1).index_select(0, rows)  # [N K, d]


def small_forward(
    layer: nn.Module, x: Tensor, mask: Tensor | None
) -> tuple[Tensor, RoutingResult]:
    """``(delta [N, d_out], routing)`` of an ``SMoRELinear`` for tokens ``x`` [N, d] (padding
    rows zero; ``mask`` [N] bool or None), where
    :func:`small_forward_applies`; the routing's statistics are computed on first access."""
    w = cached(layer._cache, "decode", layer, _tensors, _build)
    router, tables, dtype = layer.router, w["tables"], w["stack"][0].dtype
    x = x if x.dtype == dtype else x.to(dtype)
    out, lead = F.linear(x, *w["stack"]), w["lead"]  # [N, sum o_i]
    if w["fold"] and mask is None and x.dtype == torch.float32:  # fc1's token parts first
        chunks = out.split_with_sizes(w["pieces"], dim=1)
        token, hidden = chunks[:lead], chunks[lead:]
    else:
        chunks = out.split_with_sizes(w["sizes"], dim=1)  # [N, o_i] each
        if w["fold"]:  # padding rows: x = 0 gives W_u d + b, and b is wanted
            token = _f32(chunks[0])  # [N, L d_g]
            if mask is not None:
                token = torch.where(mask[:, None], token, tables["token_b"])
        else:
            u = router.router_input(x, mask, chunks[0] if lead else None)  # [N, d_u]
            token = F.linear(u, tables["token_w"], tables["token_b"])  # [N, L d_g]
        token, hidden = token.split(tables["d_g"], dim=1), chunks[min(lead, 1) :]
    if layer.config.shared_pool:
        hidden = hidden * len(layer.convs)
    routing = route(token, mask, tables)
    star, n, z = w["star"], x.size(0), None
    column = layer._cached(("column", n, x.device), token_column) if n > 1 else None
    for l, (conv, (weight, bias, lin_t)) in enumerate(zip(layer.convs, w["propagation"])):
        act = _activation(conv.act)  # not cached: the module may be swapped (or learn: PReLU)
        res = _residuals(hidden[l], routing.experts[l], weight, bias, column)  # [N F_l, d_l+1]
        if z is None:  # leaves
            z = res if star or act is None else act(res)
            continue
        alpha = routing.scores[l - 1]  # [N, F_{l-1}] = [N, F_l f]
        alpha = alpha if alpha.dtype == dtype else alpha.to(dtype)
        nodes = res.size(0)
        f = alpha.size(1) * n // nodes
        m = torch.bmm(alpha.view(nodes, 1, f), z.view(nodes, f, -1)).view(nodes, -1)
        if star:  # z = r + W sigma(m); m: [N F_l, d_l]
            z = torch.addmm(res, m if act is None else act(m), lin_t)
        else:  # z = sigma(r + W m)
            z = torch.addmm(res, m, lin_t)
            z = z if act is None else act(z)
    alpha = routing.scores[-1]  # [N, F_{L-1}]
    alpha = alpha if alpha.dtype == dtype else alpha.to(dtype)
    root = torch.bmm(alpha.view(n, 1, -1), z.view(n, alpha.size(1), -1)).view(n, -1)  # [N, d_L]
    proj = layer.proj
    return F.linear(root, proj.weight, proj.bias), routing

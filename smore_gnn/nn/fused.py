"""One fused hop of the routed tree: picked residuals, weighted child sum and node update.

A routed tree is regular: parent ``p`` of a layer has the ``f`` children ``p f .. p f + f - 1``
of the layer below (docs/spec.md §4). One hop of the bottom-up pass (docs/spec.md §5, Eq. 3)

.. math::
    \\mathbf{z}_p = \\sigma\\Big(c\\,(\\mathbf{B}^{e(p)} \\mathbf{h}_{e(p)} + \\mathbf{b}^{e(p)})
    + \\mathbf{W} \\sum_{j < f} \\alpha_{p f + j} \\mathbf{z}_{p f + j} + \\mathbf{b}_W\\Big)

(S'MoRE*: :math:`\\mathbf{r}_p + \\mathbf{W}\\sigma(\\mathbf{m}_p) + \\mathbf{b}_W`) is then a
handful of large operations: every expert's residual for every token by one batched matmul
(``h`` the token's slice of the one ``x @ A_cat^T`` GEMM), the picked rows gathered, the children
summed by a reshape, weighted by their gate scores, and ``W`` plus the residual
by one ``addmm``. :class:`TreeHop` writes the backward by hand (autograd would record a node
per operation above); the root with ``W_proj`` is the same hop without residual or
activation. :meth:`~smore_gnn.nn.conv.SMoREConv.message_and_aggregate` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Activations the hop computes itself (a learnable PReLU takes the unfused update);
#: ``"fast_tanh"`` is ``tanh`` as ``2 sigmoid(2x) - 1`` on float32 CPU tensors.
FUSED_ACTS = ("identity", "tanh", "fast_tanh", "relu")


@dataclass(frozen=True)
class PickedExperts:
    """What a hop needs to compute the residuals of its nodes' experts.

    Args:
        hidden: ``A x + a`` of every expert for every token, ``[N, s r]`` (a column slice of the
            layer's one projection GEMM).
        rows: ``[N F]`` long, node ``(n, k)``'s row ``e(n, k) N + n`` of ``[s N, d]``
            (:func:`picked_rows`).
        weight: the bank's ``B``, ``[s, d, r]``.
        bias: the bank's ``b``, ``[s, d]``, or ``None``.
        scale: the residual scale ``c_l``.
    """

    hidden: Tensor
    rows: Tensor
    weight: Tensor
    bias: Tensor | None
    scale: float


def picked_rows(experts: Tensor, column: Tensor | None = None) -> Tensor:
    """``[N, K]`` expert ids -> ``[N K]`` rows ``e N + n`` of the ``[s N, d]`` residual table
    (``column``: ``arange(N)[:, None]`` if the caller has it)."""
    n = experts.size(0)
    if column is None:
        column = torch.arange(n, device=experts.device)[:, None]  # [N, 1]
    return torch.add(column, experts, alpha=n).view(-1)


def autocast_state(tensor: Tensor) -> tuple:
    """The autocast state of ``tensor``'s device, for :func:`as_in_forward` in a backward."""
    device = tensor.device.type
    return device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)


def as_in_forward(state: tuple) -> torch.autocast:
    """A hand-written backward under its forward's autocast state (``custom_bwd``'s way, on
    any device): bf16 forwards get bf16 products in the backward too."""
    device, enabled, dtype = state
    return torch.autocast(device, dtype=dtype, enabled=enabled)


def token_column(key: tuple) -> Tensor:
    """``(name, N, device) -> arange(N)[:, None]``: :func:`picked_rows`' offsets (a layer
    keeps one per size)."""
    return torch.arange(key[1], device=key[2])[:, None]


def _activate(act: str, x: Tensor) -> Tensor:
    if act == "fast_tanh" and x.device.type == "cpu" and x.dtype == torch.float32:
        return x.mul(2.0).sigmoid_().mul_(2.0).sub_(1.0)  # 2 sigmoid(2x) - 1: faster on CPUs
    if act in ("tanh", "fast_tanh"):
        return torch.tanh(x)
    return torch.relu(x) if act == "relu" else x


def _activate_backward(act: str, grad: Tensor, out: Tensor) -> Tensor:
    # d act / d x from the activation's output
    if act in ("tanh", "fast_tanh"):
        return torch.ops.aten.tanh_backward(grad, out)
    return torch.ops.aten.threshold_backward(grad, out, 0) if act == "relu" else grad


class TreeHop(torch.autograd.Function):
    """``z`` of one tree layer's nodes ``[P, d_out]`` (see the module docstring).

    Inputs (``None`` where the hop has no such term): ``hidden`` [N, s r], ``rows`` [P] (of
    :class:`PickedExperts`), ``weight_b`` [s, d_out, r], ``bias_b`` [s, d_out], ``scale``;
    ``children`` [P f, d_in] with their gate scores ``alpha`` [P, f], ``weight`` [d_out, d_in],
    ``bias`` [d_out]; ``act`` in :data:`FUSED_ACTS`; ``star``: S'MoRE*'s order.
    """

    @staticmethod
    def forward(
        ctx,
        hidden,
        rows,
        weight_b,
        bias_b,
        scale,
        children,
        alpha,
        weight,
        bias,
        act,
        star,
    ):
        ctx.act, ctx.star, ctx.scale = act, star, scale
        ctx.autocast = autocast_state(hidden if hidden is not None else children)
        res = h = m = a = None
        if hidden is not None:  # every expert's residual for every token, picked rows kept
            n, s = hidden.size(0), weight_b.size(0)
            h = hidden.view(n, s, -1).transpose(0, 1)  # [s, N, r]
            w_t = weight_b.transpose(1, 2)  # [s, r, d_out]
            if bias_b is None:
                every = torch.bmm(h, w_t) if scale == 1.0 else torch.bmm(h, w_t).mul_(scale)
            else:  # [s, 1, d_out] + [s, N, r] @ [s, r, d_out]
                every = torch.baddbmm(bias_b[:, None], h, w_t, beta=scale, alpha=scale)
            res = every.view(-1, every.size(2)).index_select(0, rows)  # [P, d_out]
        out = res
        if children is not None:  # the children's messages, summed per parent by a reshape
            p = alpha.size(0)
            kids = children.view(p, -1, children.size(1))  # [P, f, d_in]
            m = (kids * alpha[:, :, None]).sum(1)  # [P, d_in]; on CPUs twice bmm's speed
            a = _activate(act, m) if star else m  # [P, d_in]
            if weight is None:  # the root of propagate_tree: the sum itself
                out = a
            elif res is None:  # the root with W_proj
                out = torch.addmm(bias, a, weight.t()) if bias is not None else a @ weight.t()
            else:
                out = torch.addmm(res, a, weight.t())
                if bias is not None:
                    out.add_(bias)
        if not star:
            out = _activate(act, out)
        ctx.has = (hidden is not None, bias_b is not None, children is not None, bias is not None)
        ctx.save_for_backward(h, rows, weight_b, children, alpha, weight, m, a, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        with as_in_forward(ctx.autocast):
            return TreeHop._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad):
        h, rows, weight_b, children, alpha, weight, m, a, out = ctx.saved_tensors
        has_res, has_bias_b, has_children, has_bias = ctx.has
        need = ctx.needs_input_grad
        act, star, scale = ctx.act, ctx.star, ctx.scale
        g_pre = grad if star else _activate_backward(act, grad, out)  # [P, d_out]
        g_hidden = g_wb = g_bb = g_children = g_alpha = g_w = g_b = None
        if has_bias and need[8]:
            g_b = g_pre.sum(0)
        if has_children:
            p, d_in = m.shape
            g_a = g_pre if weight is None else g_pre @ weight  # [P, d_in]
            if weight is not None and need[7]:
                g_w = g_pre.t() @ a
            g_m = _activate_backward(act, g_a, a) if star else g_a
            if need[5]:  # [P, f, 1] * [P, 1, d_in] -> [P f, d_in]
                g_children = (alpha[:, :, None] * g_m[:, None]).view(children.shape)
            if need[6]:  # [P, f, d_in] @ [P, d_in, 1]
                g_alpha = torch.bmm(children.view(p, -1, d_in), g_m[:, :, None]).view(p, -1)
        if has_res and (need[0] or need[2] or need[3]):
            s, n = h.size(0), h.size(1)
            g_res = g_pre if scale == 1.0 else g_pre * scale
            g_every = g_res.new_zeros(s * n, g_res.size(1)).index_add_(0, rows, g_res)
            g_every = g_every.view(s, n, -1)  # [s, N, d_out]
            if need[0]:  # [s, N, d_out] @ [s, d_out, r] -> [N, s r]
                g_hidden = torch.bmm(g_every, weight_b).transpose(0, 1).reshape(n, -1)
            if need[2]:  # [s, d_out, N] @ [s, N, r]
                g_wb = torch.bmm(g_every.transpose(1, 2), h)
            if has_bias_b and need[3]:
                g_bb = g_every.sum(1)
        return g_hidden, None, g_wb, g_bb, None, g_children, g_alpha, g_w, g_b, None, None


def tree_hop(
    picked: PickedExperts | None,
    children: Tensor | None,
    alpha: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    act: str = "identity",
    star: bool = False,
) -> Tensor:
    """One hop of the routed tree by :class:`TreeHop`: ``[P, d_out]`` node states.

    Args:
        picked: the residuals' inputs (``None`` at the root).
        children: child states ``[P f, d_in]`` (``None`` at the leaves).
        alpha: gate scores ``[P, f]`` of the children (given with ``children``).
        weight, bias: ``W`` [d_out, d_in] and ``b_W`` (the root: ``W_proj``), or ``None``.
        act: the expert activation, one of :data:`FUSED_ACTS`.
        star: S'MoRE*'s ``r + W sigma(m)`` instead of ``sigma(r + W m)``.
    """
    if act not in FUSED_ACTS:
        raise ValueError(f"tree_hop expected act in {list(FUSED_ACTS)} (got {act!r})")
    h = rows = weight_b = bias_b = None
    scale = 1.0
    if picked is not None:
        h, rows, weight_b, bias_b, scale = (
            picked.hidden,
            picked.rows,
            picked.weight,
            picked.bias,
            picked.scale,
        )
    return TreeHop.apply(
        h, rows, weight_b, bias_b, scale, children, alpha, weight, bias, act, star
    )


def picked_residuals(picked: PickedExperts) -> Tensor:
    """``c (B^e h_e + b^e)`` of the picked experts, ``[N K, d]``, with plain autograd ops (the
    residual of the unfused update; :class:`TreeHop` computes the same inside the hop)."""
    n, s = picked.hidden.size(0), picked.weight.size(0)
    h = picked.hidden.view(n, s, -1).transpose(0, 1)  # [s, N, r]
    every = torch.bmm(h, picked.weight.transpose(1, 2))  # [s, N, d]
    if picked.bias is not None:
        every = every + picked.bias[:, None]
    if picked.scale != 1.0:
        every = every * picked.scale
    return every.reshape(-1, every.size(2)).index_select(0, picked.rows)


def as_tensor(residual: Tensor | PickedExperts | None) -> Tensor | None:
    """The residual as a tensor ``[nodes, d]`` (:func:`picked_residuals` if it is not one)."""
    return picked_residuals(residual) if isinstance(residual, PickedExperts) else residual


def residual_rows(residual: Tensor | PickedExperts) -> int:
    """How many nodes ``residual`` describes."""
    return residual.rows.numel() if isinstance(residual, PickedExperts) else residual.size(0)

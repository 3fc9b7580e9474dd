"""The three gates of S'MoRE's router and their balance losses (docs/spec.md §3).

A *routing event* is one parent choosing its children (the root choosing the top layer counts
as one). Every gate maps the logits of ``E`` events to ``f`` picked experts and their scores,
and reduces the valid events (padding excluded) to per-expert ``importance`` and ``load``.
``valid`` is an ``[E]`` bool mask, or ``None`` when every event is valid (no masking work).
Padding is removed with ``torch.where``, never by multiplying with 0, so a non-finite value
in a padding event cannot reach a statistic. Statistics that no loss uses (hard counts; the
switch and dense gates' importance) are computed outside autograd.

The balance losses are on the scale of the authors' code (ZimpleX/SMoRE-LLM,
``moe_gates.py``), so a ``balance_loss_weight`` taken from the paper means what it meant there.

References: Shazeer et al. 2017 (noisy top-k, arXiv 1701.06538), Fedus et al. 2021 (switch,
arXiv 2101.03961).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

#: Rows up to this many experts count as short for :func:`uses_transposed_softmax`.
TRANSPOSED_SOFTMAX_MAX_EXPERTS = 16


@dataclass
class GateOutput:
    """What one layer's gate returns for ``E`` routing events."""

    experts: Tensor  # [E, f] long, picked expert ids
    scores: Tensor  # [E, f] float32, gate score alpha of each pick
    loss: Tensor  # [] float32, weighted balance loss of the layer
    load: Tensor  # [s] float32, picks per expert over valid events
    importance: Tensor  # [s] float32, summed scores per expert over valid events


def softmax_rows(logits: Tensor, transposed: bool | None = None) -> Tensor:
    """``logits.softmax(-1)`` for ``[E, s]`` logits with few experts ``s``.

    On CPU the row-wise kernel is slow for short rows (about 3.5x slower for ``s = 4`` than
    the kernel that reduces over dim 0), so there the softmax runs on the transposed view.
    Other devices keep the row-wise kernel. ``transposed`` (``SpeedSettings.
    transposed_softmax``) overrides the choice.
    """
    if uses_transposed_softmax(logits, transposed):
        return logits.t().softmax(dim=0).t()
    return logits.softmax(dim=-1)


def uses_transposed_softmax(logits: Tensor, transposed: bool | None = None) -> bool:
    """Whether :func:`softmax_rows` takes the transposed kernel for these ``[E, s]`` logits:
    ``transposed`` if given, else on CPU tensors only; short rows only either way."""
    return transposed_for(logits.device.type, logits.size(-1), transposed)


def transposed_for(device_type: str, num_experts: int, transposed: bool | None) -> bool:
    """:func:`uses_transposed_softmax` for rows of ``num_experts`` on ``device_type``."""
    use = device_type == "cpu" if transposed is None else transposed
    return use and num_experts <= TRANSPOSED_SOFTMAX_MAX_EXPERTS


def cv_squared(x: Tensor) -> Tensor:
    """Squared coefficient of variation ``var(x) / mean(x)^2`` with the unbiased variance.

    The authors' ``x.var() / (x.mean()^2 + 1e-10)``; 0 for a single expert.
    """
    if x.numel() <= 1:
        return x.new_zeros(())
    return x.var() / (x.mean() ** 2 + 1e-10)


def _keep(values: Tensor, valid: Tensor | None) -> Tensor:
    # values: [E, ...]; the rows of invalid events become exactly 0 (NaN/inf included)
    if valid is None:
        return values
    return torch.where(valid.view(-1, *[1] * (values.dim() - 1)), values, 0.0)


def _per_expert(values: Tensor, experts: Tensor, valid: Tensor | None, num_experts: int) -> Tensor:
    # values, experts: [E, f]; valid: [E] or None -> [s]
    values = _keep(values, valid)
    return values.new_zeros(num_experts).index_add_(0, experts.reshape(-1), values.reshape(-1))


def _count(experts: Tensor, valid: Tensor | None, num_experts: int, dtype: torch.dtype) -> Tensor:
    """Hard picks per expert over the valid events (no gradient): ``[s]``."""
    ones = torch.ones(experts.shape, dtype=dtype, device=experts.device)
    return _per_expert(ones, experts, valid, num_experts)


def _normal_cdf(z: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))


def noisy_topk_gate(
    logits: Tensor,
    noise_std: Tensor | None,
    fanout: int,
    valid: Tensor | None,
    weight: float,
    transposed: bool | None = None,
) -> GateOutput:
    """Noisy top-k gate (Shazeer et al. 2017) on cosine ``logits`` [E, s].

    ``noise_std`` [E, s] is None outside training. Scores are the softmax over the picked
    (noisy) logits, or the raw logit when ``fanout == 1`` (as the authors': no softmax over a
    single pick). Balance loss ``w * (cv^2(importance) + cv^2(load))`` (:func:`cv_squared`,
    unbiased variance) where load is the smooth probability of each expert being in the top
    ``f`` when noise is on, else the hard count.
    """
    num_experts = logits.size(-1)
    noisy = logits if noise_std is None else logits + torch.randn_like(logits) * noise_std
    k = min(fanout + 1, num_experts)
    top_val, top_idx = noisy.topk(k, dim=-1)  # [E, k]
    experts, picked = top_idx[:, :fanout], top_val[:, :fanout]
    scores = softmax_rows(picked, transposed) if fanout > 1 else picked
    importance = _per_expert(scores, experts, valid, num_experts)
    hard_load = _count(experts, valid, num_experts, scores.dtype)
    if noise_std is not None and fanout < num_experts:
        # P(expert e stays in the top f if only its own noise were redrawn).
        threshold_if_in = top_val[:, fanout : fanout + 1]  # [E, 1]
        threshold_if_out = top_val[:, fanout - 1 : fanout]  # [E, 1]
        is_in = noisy > threshold_if_in
        prob = torch.where(
            is_in,
            _normal_cdf((logits - threshold_if_in) / noise_std),
            _normal_cdf((logits - threshold_if_out) / noise_std),
        )  # [E, s]
        load = _keep(prob, valid).sum(0)
    else:
        load = hard_load
    loss = weight * (cv_squared(importance) + cv_squared(load))
    return GateOutput(experts, scores, loss, hard_load, importance)


def switch_forward(
    ctx, logits: Tensor, valid: Tensor | None, fanout: int, weight: float, transposed: bool
) -> tuple[tuple[Tensor, ...], tuple]:
    """The switch gate inside an autograd Function's ``forward`` (``ctx``): its outputs
    ``(experts, scores, loss, load, importance)`` and the tensors :func:`switch_backward`
    needs, for the caller's ``save_for_backward`` (saved there, not as ``ctx`` attributes,
    which would keep the outputs alive in a reference cycle)."""
    num_events, num_experts = logits.shape
    probs = logits.t().softmax(dim=0).t() if transposed else logits.softmax(dim=-1)
    top_val, experts = probs.topk(fanout, dim=-1)  # [E, f]
    total = top_val.sum(-1, keepdim=True) if fanout > 1 else None  # [E, 1]
    scores = top_val / total if fanout > 1 else top_val
    picks = experts.view(-1)
    if valid is None:
        count = scores.new_ones(()).expand(picks.size(0))  # [E f]
        kept, n = scores, max(num_events, 1)
    else:  # padding events pick nothing and weigh nothing
        count = valid[:, None].expand(-1, fanout).reshape(-1).to(scores.dtype)
        kept = torch.where(valid[:, None], scores, 0.0)
        probs_kept = torch.where(valid[:, None], probs, 0.0)
        n = valid.sum().clamp(min=1).to(probs.dtype)
    load = scores.new_zeros(num_experts).index_add_(0, picks, count)  # [s]
    importance = scores.new_zeros(num_experts).index_add_(0, picks, kept.reshape(-1))
    total_prob = (probs if valid is None else probs_kept).sum(0)  # [s]
    # frac = load / n (sums to f), mean_prob = sum of probs / n: w s frac . mean_prob
    coef = (weight * num_experts) / (n * n)
    loss = (load @ total_prob) * coef
    ctx.mark_non_differentiable(experts, load, importance)
    ctx.set_materialize_grads(False)  # no zero gradients for the ids and statistics
    ctx.gate = (fanout, None if isinstance(coef, Tensor) else coef)  # a float: not saved
    saved = (
        probs,
        experts,
        scores,
        total,
        load,
        valid,
        coef if isinstance(coef, Tensor) else None,
    )
    return (experts, scores, loss, load, importance), saved


#: How many tensors :func:`switch_forward` hands over for ``save_for_backward``.
SWITCH_SAVED = 7


def switch_backward(ctx, saved: tuple, g_scores: Tensor | None, g_loss: Tensor | None) -> Tensor:
    """d(scores, loss) / d logits of :func:`switch_forward`'s gate: ``[E, s]``."""
    probs, experts, scores, total, load, valid, coef_tensor = saved
    fanout, coef = ctx.gate
    coef = coef if coef is not None else coef_tensor
    if g_loss is None:
        g_probs = torch.zeros_like(probs)
    else:  # d loss / d probs, [E, s]
        g_probs = (load * (g_loss * coef)).expand_as(probs)
        if valid is not None:
            g_probs = torch.where(valid[:, None], g_probs, 0.0)
        else:
            g_probs = g_probs.clone()
    if g_scores is not None:
        g_top = g_scores  # [E, f]
        if fanout > 1:  # through top / sum(top)
            inner = (g_scores * scores).sum(-1, keepdim=True)
            g_top = (g_scores - inner).div_(total)
        g_probs.scatter_add_(1, experts, g_top)
    return torch.ops.aten._softmax_backward_data(g_probs, probs, 1, probs.dtype)


class _SwitchGate(torch.autograd.Function):
    """:func:`switch_gate`'s picks, scores and balance loss with a hand-written backward
    (autograd would record a node for each of the dozen small operations)."""

    @staticmethod
    def forward(ctx, logits, valid, fanout, weight, transposed):
        outputs, saved = switch_forward(ctx, logits, valid, fanout, weight, transposed)
        ctx.save_for_backward(*saved)
        return outputs

    @staticmethod
    def backward(ctx, _experts, g_scores, g_loss, _load, _importance):
        g_logits = switch_backward(ctx, ctx.saved_tensors, g_scores, g_loss)
        return g_logits, None, None, None, None


def switch_gate(
    logits: Tensor,
    fanout: int,
    valid: Tensor | None,
    weight: float,
    transposed: bool | None = None,
) -> GateOutput:
    """Switch gate (Fedus et al. 2021) on dot-product ``logits`` [E, s].

    Softmax over all experts, top ``f``, picked scores renormalised when ``f > 1``. Balance
    loss ``w * s * sum_e frac(e) * mean_prob(e)`` with ``frac(e)`` = picks of ``e`` per valid
    event, so ``frac`` sums to ``f`` over the experts (the authors' ``tokens_per_expert``):
    uniform probabilities give exactly ``w * f``. Importance (the summed scores per expert)
    is a statistic, outside autograd.
    """
    transposed = uses_transposed_softmax(logits, transposed)
    experts, scores, loss, load, importance = _SwitchGate.apply(
        logits, valid, fanout, weight, transposed
    )
    return GateOutput(experts, scores, loss, load, importance)


def dense_gate(logits: Tensor, valid: Tensor | None, transposed: bool | None = None) -> GateOutput:
    """Dense gate: every expert is picked, scores are the softmax over all; no balance loss."""
    num_events, num_experts = logits.shape
    scores = softmax_rows(logits, transposed)  # [E, s]
    experts = torch.arange(num_experts, device=logits.device).expand(num_events, -1)
    load = _count(experts, valid, num_experts, scores.dtype)
    importance = _per_expert(scores.detach(), experts, valid, num_experts)
    return GateOutput(experts, scores, logits.new_zeros(()), load, importance)


def gate_output(
    gate_type: str,
    logits: Tensor,
    fanout: int,
    valid: Tensor | None,
    weight: float,
    z_loss_weight: float = 0.0,
    noise_std: Tensor | None = None,
    transposed: bool | None = None,
) -> GateOutput:
    """The ``gate_type`` gate on ``logits`` [E, s] with its balance loss (plus the z-loss
    ``z_loss_weight * z_loss(logits, valid)`` when that weight is positive).

    ``noise_std`` [E, s] is the noisy top-k gate's noise scale (None: no noise);
    ``transposed``: :func:`softmax_rows`'s choice.
    """
    if gate_type == "noisy_topk":
        out = noisy_topk_gate(logits, noise_std, fanout, valid, weight, transposed)
    elif gate_type == "switch":
        out = switch_gate(logits, fanout, valid, weight, transposed)
    else:
        out = dense_gate(logits, valid, transposed)
    if z_loss_weight > 0:
        out.loss = out.loss + z_loss_weight * z_loss(logits, valid)
    return out


def pick(
    gate_type: str, logits: Tensor, fanout: int, transposed: bool | None = None
) -> tuple[Tensor, Tensor]:
    """``(experts [E, f], scores [E, f])`` of the gate without noise and without statistics:
    the picks :func:`gate_output` makes when ``noise_std`` is None (evaluation)."""
    if gate_type == "noisy_topk":
        top_val, top_idx = logits.topk(fanout, dim=-1)  # [E, f]
        return top_idx, softmax_rows(top_val, transposed) if fanout > 1 else top_val
    if gate_type == "dense":
        num_events, num_experts = logits.shape
        experts = torch.arange(num_experts, device=logits.device).expand(num_events, -1)
        return experts, softmax_rows(logits, transposed)
    if fanout > 1:  # softmax is monotone: the same picks, and p_i / sum_top p = softmax(top)
        top_logits, experts = logits.topk(fanout, dim=-1)  # [E, f]
        return experts, top_logits.softmax(dim=-1)
    top_val, experts = softmax_rows(logits, transposed).topk(1, dim=-1)  # [E, 1]
    return experts, top_val


def cosine_logits(query: Tensor, keys: Tensor) -> Tensor:
    """``normalize(q) . normalize(k)`` for queries [E, d_g] and keys [s, d_g] -> [E, s]."""
    return F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).t()


def z_loss(logits: Tensor, valid: Tensor | None) -> Tensor:
    """Router z-loss (Zoph et al. 2022, arXiv 2202.08906): mean ``logsumexp(logits)^2`` over
    the valid events of ``logits`` [E, s]; 0 when there is none. It keeps logits small."""
    z = torch.logsumexp(logits, dim=-1).square()  # [E]
    if valid is None:
        return z.mean() if z.numel() else logits.new_zeros(())
    z = torch.where(valid, z, 0.0)
    return z.sum() / valid.sum().clamp(min=1).to(z.dtype)

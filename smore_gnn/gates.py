"""The three gates of S'MoRE's router and their balance losses (SPEC §3).

A *routing event* is one parent choosing its children (the root choosing the top layer counts
as one). Every gate maps the logits of ``E`` events to ``f`` picked experts and their scores,
and reduces the valid events (padding excluded) to per-expert ``importance`` and ``load``.

References: Shazeer et al. 2017 (noisy top-k, arXiv 1701.06538), Fedus et al. 2021 (switch,
arXiv 2101.03961).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class GateOutput:
    """What one layer's gate returns for ``E`` routing events."""

    experts: Tensor  # [E, f] long, picked expert ids
    scores: Tensor  # [E, f] float32, gate score alpha of each pick
    loss: Tensor  # [] float32, weighted balance loss of the layer
    load: Tensor  # [s] float32, picks per expert over valid events
    importance: Tensor  # [s] float32, summed scores per expert over valid events


def cv_squared(x: Tensor) -> Tensor:
    """Squared coefficient of variation ``var(x) / mean(x)^2`` (population variance)."""
    if x.numel() <= 1:
        return x.new_zeros(())
    return x.var(unbiased=False) / (x.mean() ** 2 + 1e-10)


def _per_expert(values: Tensor, experts: Tensor, valid: Tensor, num_experts: int) -> Tensor:
    # values, experts: [E, f]; valid: [E] -> [s]
    weighted = values * valid[:, None].to(values.dtype)
    return weighted.new_zeros(num_experts).index_add_(0, experts.reshape(-1), weighted.reshape(-1))


def noisy_topk_gate(
    logits: Tensor,
    noise_std: Tensor | None,
    fanout: int,
    valid: Tensor,
    weight: float,
) -> GateOutput:
    """Noisy top-k gate (Shazeer et al. 2017) on cosine ``logits`` [E, s].

    ``noise_std`` [E, s] is None outside training. Scores are the softmax over the picked
    (noisy) logits, or the raw logit when ``fanout == 1``. Balance loss
    ``w * (cv^2(importance) + cv^2(load))`` where load is the smooth probability of each
    expert being in the top ``f`` when noise is on, else the hard count.
    """
    num_experts = logits.size(-1)
    noisy = logits if noise_std is None else logits + torch.randn_like(logits) * noise_std
    k = min(fanout + 1, num_experts)
    top_val, top_idx = noisy.topk(k, dim=-1)  # [E, k]
    experts, picked = top_idx[:, :fanout], top_val[:, :fanout]
    scores = picked.softmax(dim=-1) if fanout > 1 else picked
    importance = _per_expert(scores, experts, valid, num_experts)
    hard_load = _per_expert(torch.ones_like(scores), experts, valid, num_experts)
    if noise_std is not None and fanout < num_experts:
        # P(expert e stays in the top f if only its own noise were redrawn).
        threshold_if_in = top_val[:, fanout : fanout + 1]  # [E, 1]
        threshold_if_out = top_val[:, fanout - 1 : fanout]  # [E, 1]
        is_in = noisy > threshold_if_in
        normal = torch.distributions.Normal(0.0, 1.0)
        prob = torch.where(
            is_in,
            normal.cdf((logits - threshold_if_in) / noise_std),
            normal.cdf((logits - threshold_if_out) / noise_std),
        )  # [E, s]
        load = (prob * valid[:, None].to(prob.dtype)).sum(0)
    else:
        load = hard_load
    loss = weight * (cv_squared(importance) + cv_squared(load))
    return GateOutput(experts, scores, loss, hard_load, importance)


def switch_gate(logits: Tensor, fanout: int, valid: Tensor, weight: float) -> GateOutput:
    """Switch gate (Fedus et al. 2021) on dot-product ``logits`` [E, s].

    Softmax over all experts, top ``f``, picked scores renormalised when ``f > 1``. Balance
    loss ``w * s * sum_e frac(e) * mean_prob(e)``, ``frac`` = share of picks that went to
    ``e`` (sums to 1), so uniform probabilities give exactly ``w``.
    """
    num_experts = logits.size(-1)
    probs = logits.softmax(dim=-1)  # [E, s]
    top_val, experts = probs.topk(fanout, dim=-1)  # [E, f]
    scores = top_val / top_val.sum(-1, keepdim=True) if fanout > 1 else top_val
    n_valid = valid.sum().clamp(min=1).to(probs.dtype)
    load = _per_expert(torch.ones_like(scores), experts, valid, num_experts)
    importance = _per_expert(scores, experts, valid, num_experts)
    frac = load / (fanout * n_valid)
    mean_prob = (probs * valid[:, None].to(probs.dtype)).sum(0) / n_valid
    loss = weight * num_experts * (frac * mean_prob).sum()
    return GateOutput(experts, scores, loss, load, importance)


def dense_gate(logits: Tensor, valid: Tensor) -> GateOutput:
    """Dense gate: every expert is picked, scores are the softmax over all; no balance loss."""
    num_events, num_experts = logits.shape
    scores = logits.softmax(dim=-1)  # [E, s]
    experts = torch.arange(num_experts, device=logits.device).expand(num_events, -1)
    load = _per_expert(torch.ones_like(scores), experts, valid, num_experts)
    importance = _per_expert(scores, experts, valid, num_experts)
    return GateOutput(experts, scores, logits.new_zeros(()), load, importance)


def cosine_logits(query: Tensor, keys: Tensor) -> Tensor:
    """``normalize(q) . normalize(k)`` for queries [E, d_g] and keys [s, d_g] -> [E, s]."""
    return F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).t()

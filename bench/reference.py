"""The paper's reference formulation, for scale: every expert on every token as tiny matmuls.

The public S'MoRE code evaluates each expert of each layer for every token as a batch of
per-token matrix-vector products (``[N, s, r, d] @ [N, 1, d, 1]``, docs/spec.md §10), then
picks the routed ones. This re-implementation of that *style* (main propagation rule only)
exists to time it against the GNN path; it shares nothing with ``smore_gnn`` except the
parameters.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from smore_gnn import RoutingResult, SMoRELinear


def _all_experts(layer: SMoRELinear, l: int, x: Tensor) -> Tensor:
    """``c_l (B^i (A^i x + a^i) + b^i)`` of every expert ``i`` for every token: [N, s, d_out]."""
    bank = layer.experts[l]
    n, d = x.shape
    s, r = bank.num_experts, bank.rank
    a = bank.lora_A.weight.view(1, s, r, d).expand(n, s, r, d)  # [N, s, r, d]
    h = a @ x.view(n, 1, d, 1)  # [N, s, r, 1]: one tiny matvec per token and expert
    if bank.lora_A.bias is not None:
        h = h + bank.lora_A.bias.view(1, s, r, 1)
    b = bank.lora_B.unsqueeze(0).expand(n, -1, -1, -1)  # [N, s, d_out, r]
    out = (b @ h).squeeze(-1)  # [N, s, d_out]
    if bank.lora_B_bias is not None:
        out = out + bank.lora_B_bias
    return layer.config.residual_scales[l] * out


def reference_delta(layer: SMoRELinear, x: Tensor, routing: RoutingResult) -> Tensor:
    """``W_proj m_root`` (propagation ``"smore"``) in the reference code's style -> [N, d_out]."""
    if layer.config.propagation != "smore":
        raise ValueError(
            f"reference_delta implements propagation='smore' (got {layer.config.propagation!r})"
        )
    x = x.to(layer.proj.weight.dtype)
    n, z = x.size(0), None
    for l, experts in enumerate(routing.experts):
        every = _all_experts(layer, l, x)  # [N, s, d_{l+1}]
        res = every.gather(1, experts[..., None].expand(-1, -1, every.size(-1)))  # [N, F_l, .]
        conv = layer.convs[l]
        if z is not None:
            f = routing.fanout[l - 1]
            w = routing.scores[l - 1].to(x.dtype).view(n, experts.size(1), f, 1)
            m = (z.view(n, experts.size(1), f, -1) * w).sum(2)  # [N, F_l, d_l]
            res = res + F.linear(m, conv.lin.weight, conv.lin.bias)
        z = conv.act(res)
    root = (z * routing.scores[-1].to(x.dtype)[..., None]).sum(1)  # [N, d_L]
    return F.linear(root, layer.proj.weight, layer.proj.bias)

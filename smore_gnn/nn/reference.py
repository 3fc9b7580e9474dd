"""Dense oracle: the same S'MoRE forward without a graph (the paper's reference formulation).

Expert matrices are gathered per tree node and applied as per-token matrix-vector products,
children are summed through reshapes of the fixed-fanout trees, and MoMOR is computed from
multi-hot expert sets. Nothing here shares code with the GNN path except the parameters; the
tests use it as the oracle and the benchmarks as the speed baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smore_gnn.nn.router import RoutingResult


def _residuals(layer: nn.Module, l: int, x: Tensor, experts: Tensor) -> Tensor:
    # x: [N, d], experts: [N, K] -> c_l * (B^e (A^e x + a^e) + b^e): [N, K, d_{l+1}]
    bank = layer.experts[l]
    s, r = bank.num_experts, bank.rank
    a = bank.lora_A.weight.view(s, r, -1)[experts]  # [N, K, r, d]
    h = torch.einsum("nkrd,nd->nkr", a, x)
    if bank.lora_A.bias is not None:
        h = h + bank.lora_A.bias.view(s, r)[experts]
    out = torch.einsum("nkor,nkr->nko", bank.lora_B[experts], h)  # [N, K, d_{l+1}]
    if bank.lora_B_bias is not None:
        out = out + bank.lora_B_bias[experts]
    return layer.config.residual_scales[l] * out


def _momor_root(layer: nn.Module, x: Tensor, routing: RoutingResult) -> Tensor:
    # The literal flat mixture sum_l sum_{e in U_l} c_l (B_l^e A_l^e x + ...) (docs/spec.md §5),
    # layer l's d_{l+1} coordinates placed last in d_L (where Prop. 3.2's W = [0; I] puts them).
    num_tokens, d_last = x.size(0), layer.config.message_dims[-1]
    total = x.new_zeros(num_tokens, d_last)
    for l, experts in enumerate(routing.experts):
        s = layer.config.num_experts[l]
        every = torch.arange(s, device=x.device).expand(num_tokens, s)
        used = torch.zeros(num_tokens, s, dtype=x.dtype, device=x.device)
        used.scatter_(1, experts, 1.0)  # [N, s] multi-hot set U_l
        own = (_residuals(layer, l, x, every) * used[..., None]).sum(1)  # [N, d_{l+1}]
        total[:, d_last - own.size(1) :] += own
    return total


def dense_delta(layer: nn.Module, x: Tensor, routing: RoutingResult) -> Tensor:
    """Adapter output ``W_proj m_root`` for tokens ``x`` [N, d] routed as ``routing``."""
    cfg = layer.config
    if cfg.propagation == "momor":
        root = _momor_root(layer, x, routing)
    else:
        z = None
        for l, experts in enumerate(routing.experts):
            conv, res = layer.convs[l], _residuals(layer, l, x, experts)  # [N, F_l, d_{l+1}]
            if z is None:
                z = conv.act(res) if cfg.propagation == "smore" else res
                continue
            f = cfg.fanout[l - 1]
            w = routing.scores[l - 1].to(x.dtype)
            children = z.view(x.size(0), experts.size(1), f, -1)  # [N, F_l, f_{l-1}, d_l]
            m = (children * w.view(x.size(0), experts.size(1), f, 1)).sum(2)  # [N, F_l, d_l]
            if cfg.propagation == "smore":
                z = conv.act(res + F.linear(m, conv.lin.weight, conv.lin.bias))
            else:
                z = res + F.linear(conv.act(m), conv.lin.weight, conv.lin.bias)
        root = (z * routing.scores[-1].to(x.dtype)[..., None]).sum(1)  # [N, d_L]
    return F.linear(root, layer.proj.weight, layer.proj.bias)

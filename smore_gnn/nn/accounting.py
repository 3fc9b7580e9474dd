"""Parameter and FLOP accounting of one adapted linear layer (docs/spec.md §8).

FLOPs count a multiply-add as 2. Expert FLOPs follow what the GNN path computes: one GEMM of
every token with the ``A`` of all experts of a layer, every expert's ``B`` (narrow), then per
node the shared ``W_l``, the gate-weighted aggregation and finally ``W_proj``.
"""

from __future__ import annotations

from smore_gnn.nn.config import SMoREConfig


def _router_layer_params(cfg: SMoREConfig, in_dim: int, num_experts: int) -> int:
    g = cfg.router_dim
    params = in_dim * g + g + g * g + g + num_experts * g
    if cfg.gate_type == "noisy_topk":  # W_noise (no bias unless noise_bias)
        params += in_dim * num_experts + (num_experts if cfg.noise_bias else 0)
    return params


def _expert_params(cfg: SMoREConfig, in_features: int, l: int) -> int:
    """Parameters of ONE expert of layer ``l``: ``A`` (r x d), ``B`` (d_{l+1} x r), biases."""
    r, out = cfg.rank[l], cfg.message_dims[l + 1]
    return r * in_features + out * r + (r + out if cfg.bias else 0)


def count_parameters(cfg: SMoREConfig, in_features: int, out_features: int) -> dict[str, int]:
    """Trainable parameters by part, and ``total``; equals the ``numel`` sum of the module."""
    d, dims, b = in_features, cfg.message_dims, int(cfg.bias)
    d_u = cfg.down_proj_dim or d
    parts = {"down_proj": d * cfg.down_proj_dim + cfg.down_proj_dim if cfg.down_proj_dim else 0}
    parts["routers"] = sum(
        _router_layer_params(cfg, d_u + extra, s)
        for extra, s in zip(cfg.router_input_dims, cfg.num_experts)
    )
    layers = [0] if cfg.shared_pool else range(cfg.num_layers)
    parts["experts"] = sum(cfg.num_experts[l] * _expert_params(cfg, d, l) for l in layers)
    momor = cfg.propagation == "momor"  # the flat mixture has no W_l and no activation
    parts["transitions"] = (
        0
        if momor
        else sum(dims[l + 1] * dims[l] + b * dims[l + 1] for l in range(1, cfg.num_layers))
    )
    parts["proj"] = out_features * dims[-1] + b * out_features
    parts["activations"] = cfg.num_layers if cfg.expert_act == "prelu" and not momor else 0
    parts["shared"] = cfg.shared_rank * (in_features + out_features)  # no biases
    parts["total"] = sum(parts.values())
    return parts


def active_parameters(cfg: SMoREConfig, in_features: int, out_features: int) -> int:
    """Parameters one token touches: at most ``min(F_l, s_l)`` distinct experts per layer."""
    parts = count_parameters(cfg, in_features, out_features)
    nodes = cfg.nodes_per_layer
    if cfg.shared_pool:
        used = min(sum(nodes[:-1]), cfg.num_experts[0]) * _expert_params(cfg, in_features, 0)
    else:
        used = sum(
            min(nodes[l], s) * _expert_params(cfg, in_features, l)
            for l, s in enumerate(cfg.num_experts)
        )
    return parts["total"] - parts["experts"] + used


def flops_per_token(
    cfg: SMoREConfig, in_features: int, out_features: int, training: bool = False
) -> dict[str, int | float]:
    """FLOPs per token of the router and of the experts, and the LoRA-of-rank-``d_L`` reference.

    ``delta`` is the extra expert work of S'MoRE over that LoRA, as a fraction (the paper's
    Table 1, router excluded); ``router_fraction`` is the router's work relative to that LoRA
    (the paper's Figure 5 compares the two).
    """
    d, dims, nodes, g = in_features, cfg.message_dims, cfg.nodes_per_layer, cfg.router_dim
    d_u = cfg.down_proj_dim or d
    router = 2 * d * cfg.down_proj_dim if cfg.down_proj_dim else 0
    for l, (extra, s) in enumerate(zip(cfg.router_input_dims, cfg.num_experts)):
        in_dim = d_u + extra
        per_event = in_dim * g + g * g + s * g + (in_dim * s if training else 0)
        router += 2 * nodes[l + 1] * per_event
    layers = [0] if cfg.shared_pool else range(cfg.num_layers)
    down = sum(2 * d * cfg.num_experts[l] * cfg.rank[l] for l in layers)
    up = sum(2 * s * r * dims[l + 1] for l, (s, r) in enumerate(zip(cfg.num_experts, cfg.rank)))
    transitions = sum(2 * nodes[l] * dims[l] * dims[l + 1] for l in range(1, cfg.num_layers))
    transitions *= cfg.propagation != "momor"  # the flat mixture has no W_l
    aggregation = sum(2 * nodes[l] * dims[l + 1] for l in range(cfg.num_layers))
    proj = 2 * dims[-1] * out_features
    shared = 2 * cfg.shared_rank * (d + out_features)  # the extension's shared LoRA term
    experts = down + up + transitions + aggregation + proj + shared
    lora = 2 * dims[-1] * (d + out_features)
    return {
        "router": router,
        "experts": experts,
        "total": router + experts,
        "lora_rank_d_L": lora,
        "delta": (experts - lora) / lora,
        "router_fraction": router / lora,
    }

"""Hierarchical top-down router of S'MoRE (docs/spec.md §3).

The root picks ``f_{L-1}`` experts of the top layer; then every picked parent, separately,
picks its own ``f_l`` children of the layer below from the router input
``concat(u, key(top ancestor), ..., key(parent))``. Under the cosine (``noisy_topk``) gate the
keys handed down are the L2-normalised ones, as in the authors' gate; under ``switch`` and
``dense`` the raw keys. All routing math runs in float32. Padding tokens enter the router as
zero vectors, so whatever they hold (even NaN) cannot reach a statistic or a gradient.

Router-learning options (all off by default, see ``bench/router_study.py``): the logits are
multiplied by ``config.logit_scale`` (a learned scalar per layer router when
``learn_logit_scale``), a z-loss ``z_loss_weight * mean(logsumexp(logits)^2)`` joins each
layer's balance loss, and ``router_input_norm`` RMS-normalises the router input ``u``.

The forward runs this routing in fewer, larger operations (:mod:`smore_gnn.nn.routing`: ``fc1``
split by input blocks, one GEMM for the token parts of every layer, per-key tables);
:meth:`SMoRERouter.route_reference` is the same routing written as above, the oracle of the
fast path. In eval mode without autograd (evaluation, generation) the tables are cached and
the statistics are computed only when read.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smore_gnn.nn.config import SMoREConfig
from smore_gnn.nn.gates import GateOutput, cosine_logits, gate_output
from smore_gnn.nn.routing import _f32, build_tables, no_autograd, route, routing_tables
from smore_gnn.nn.routing_result import RoutingResult

_ACTS = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "silu": F.silu}


def linear32(x: Tensor, layer: nn.Linear) -> Tensor:
    """``layer(x)`` computed in float32 whatever the dtype of ``x`` and of the weights."""
    bias = None if layer.bias is None else _f32(layer.bias)
    return F.linear(_f32(x), _f32(layer.weight), bias)


class LayerRouter(nn.Module):
    """Router of one expert layer: MLP ``g_l``, keys ``K_l`` and (noisy top-k) noise weights."""

    def __init__(self, in_dim: int, num_experts: int, fanout: int, config: SMoREConfig):
        super().__init__()
        self.num_experts, self.fanout = num_experts, fanout
        self.gate_type, self.weight = config.gate_type, config.balance_loss_weight
        self.noise_eps, self.act = config.noise_eps, config.router_act
        self.fc1 = nn.Linear(in_dim, config.router_dim)
        self.fc2 = nn.Linear(config.router_dim, config.router_dim)
        self.key_init = config.key_init
        self.keys = nn.Parameter(torch.empty(num_experts, config.router_dim))
        self.noise = None
        if self.gate_type == "noisy_topk":  # no bias by default, as the authors' noise layer
            self.noise = nn.Linear(in_dim, num_experts, bias=config.noise_bias)
        self.z_loss_weight, self.init_logit_scale = config.z_loss_weight, config.logit_scale
        self.transposed_softmax: bool | None = None  # SpeedSettings.transposed_softmax
        self.log_logit_scale = None  # learned: logits * exp(log_logit_scale), log(init) at init
        if config.learn_logit_scale:
            self.log_logit_scale = nn.Parameter(torch.zeros(()))
        self.reset_parameters()

    @property
    def passed_keys(self) -> Tensor:
        """``[s, d_g]`` float32 keys handed to the children's routers (unit rows: cosine gate)."""
        keys = _f32(self.keys)
        return F.normalize(keys, dim=-1) if self.gate_type == "noisy_topk" else keys

    def reset_parameters(self) -> None:
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()
        if self.key_init == "uniform":  # the authors' nn.init.uniform_: U[0, 1)
            nn.init.uniform_(self.keys)
        else:
            nn.init.normal_(self.keys, std=self.keys.size(1) ** -0.5)
        if self.noise is not None:  # zero: training starts with std = softplus(0) + eps
            nn.init.zeros_(self.noise.weight)
            if self.noise.bias is not None:
                nn.init.zeros_(self.noise.bias)
        if self.log_logit_scale is not None:
            nn.init.constant_(self.log_logit_scale, math.log(self.init_logit_scale))

    @property
    def logit_scale(self) -> Tensor | float:
        """The factor on the logits: learned (a scalar tensor) or ``config.logit_scale``."""
        if self.log_logit_scale is None:
            return self.init_logit_scale
        return _f32(self.log_logit_scale).exp()

    def activate(self, q: Tensor) -> Tensor:
        """The router MLP's activation ``config.router_act`` on ``fc1``'s output ``q``."""
        return _ACTS[self.act](q) if self.act != "identity" else q

    def logits(self, h: Tensor) -> Tensor:
        """``[E, s]`` float32 logits of router inputs ``h`` [E, in_dim], scaled by
        :attr:`logit_scale`: cosine similarities (``noisy_topk``) or ``q . k`` (others)."""
        q = linear32(self.activate(linear32(h, self.fc1)), self.fc2)  # [E, d_g]
        keys = _f32(self.keys)
        logits = cosine_logits(q, keys) if self.gate_type == "noisy_topk" else q @ keys.t()
        scale = self.logit_scale
        return logits if isinstance(scale, float) and scale == 1.0 else logits * scale

    def forward(self, h: Tensor, valid: Tensor | None) -> GateOutput:
        # h: [E, in_dim] float32 router input of E routing events; valid: [E] bool or None
        logits = self.logits(h)  # [E, s]
        std = None
        if self.gate_type == "noisy_topk" and self.training:
            std = F.softplus(linear32(h, self.noise)) + self.noise_eps  # [E, s]
        return self.gate(logits, valid, std)

    def gate(
        self, logits: Tensor, valid: Tensor | None, noise_std: Tensor | None = None
    ) -> GateOutput:
        """This layer's gate on ``logits`` [E, s] (:func:`~smore_gnn.nn.gates.gate_output`)."""
        return gate_output(
            self.gate_type,
            logits,
            self.fanout,
            valid,
            self.weight,
            self.z_loss_weight,
            noise_std,
            self.transposed_softmax,
        )


class SMoRERouter(nn.Module):
    """Top-down hierarchical router over ``L`` layers of experts.

    Args:
        in_features (int): token width ``d``.
        config (SMoREConfig): the adapter configuration.
    """

    def __init__(self, in_features: int, config: SMoREConfig):
        super().__init__()
        self.fanout, self.input_norm = list(config.fanout), config.router_input_norm
        d_u = config.down_proj_dim or in_features
        self.down_proj = nn.Linear(in_features, d_u) if config.down_proj_dim else None
        self.layers = nn.ModuleList(
            LayerRouter(d_u + extra, s, f, config)
            for extra, s, f in zip(config.router_input_dims, config.num_experts, config.fanout)
        )
        # cached no-autograd tables (smore_gnn.nn.routing), rebuilt on change; dropped by a
        # forward with autograd (smore_gnn.nn.staleness) and by train()/eval()
        self._tables: dict = {}
        self.transposed_softmax: bool | None = None  # SpeedSettings.transposed_softmax

    def set_transposed_softmax(self, transposed: bool | None) -> None:
        """``SpeedSettings.transposed_softmax`` for this router and its layer routers."""
        self.transposed_softmax = transposed
        for layer in self.layers:
            layer.transposed_softmax = transposed
        self._tables.clear()

    def train(self, mode: bool = True) -> SMoRERouter:
        self._tables.clear()
        return super().train(mode)

    def reset_parameters(self) -> None:
        if self.down_proj is not None:
            self.down_proj.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()

    def router_input(self, x: Tensor, valid: Tensor | None, u: Tensor | None = None) -> Tensor:
        """The router input ``u`` [N, d_u] float32 of tokens ``x`` [N, d] (``D x``, or ``x``
        without ``D``; ``u`` when precomputed): padding rows zero, then RMS-normalised when
        ``config.router_input_norm``."""
        if u is None:
            if valid is not None:  # no NaN of a padding token may reach D's gradient
                x = torch.where(valid[:, None], x, 0.0)
            u = _f32(x) if self.down_proj is None else linear32(x, self.down_proj)  # [N, d_u]
        if valid is not None:  # padding routes as u = 0 (either way u was obtained)
            u = torch.where(valid[:, None], u, 0.0)
        if self.input_norm:  # RMS-normalised router input (no affine), after the padding
            u = F.rms_norm(_f32(u), (u.size(-1),), eps=1e-6)  # is zeroed: 0 stays 0, no NaN
        return _f32(u)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, u: Tensor | None = None
    ) -> RoutingResult:
        """Route ``x`` [N, d]; ``mask`` [N] (0/False = padding, excluded from statistics).

        ``u`` [N, d_down] float32, when given, is the precomputed down-projection ``D x`` (the
        layer fuses it into one GEMM with the experts' ``A``); else it is computed here.

        Computed in fewer, larger operations than :meth:`route_reference` (the same routing
        up to float32 rounding): ``fc1`` is split by its input blocks, ``W_u u`` per token and
        ``W_j key`` per expert key (:mod:`smore_gnn.nn.routing`).
        """
        valid = None if mask is None else mask.reshape(x.size(0)).bool()  # None: all valid
        u = self.router_input(x, valid, u)  # [N, d_u] float32
        lazy = not self.training and no_autograd()  # evaluation, generation: cached tables
        if not lazy and self._tables and torch.is_grad_enabled():
            self._tables.clear()  # gradients, maybe a fused optimizer step next
        tables = routing_tables(self, self._tables) if lazy else build_tables(self)
        token = F.linear(u, tables["token_w"], tables["token_b"])  # [N, L d_g]
        noise = None
        if tables["noise_w"] is not None:  # training the noisy top-k gate
            noise = F.linear(u, tables["noise_w"]).split(tables["noise_sizes"], dim=1)
        return route(token.split(tables["d_g"], dim=1), valid, tables, noise, lazy)

    def route_reference(
        self, x: Tensor, mask: Tensor | None = None, u: Tensor | None = None
    ) -> RoutingResult:
        """:meth:`forward` as the paper writes it, layer router by layer router on the
        concatenated inputs ``concat(u, key(top ancestor), ..., key(parent))``: the readable
        formulation, kept as the oracle of the fast path (and for probes that hook
        :class:`LayerRouter`)."""
        num_tokens = x.size(0)
        valid = None if mask is None else mask.reshape(num_tokens).bool()  # None: all valid
        u = self.router_input(x, valid, u)  # [N, d_u] float32
        ancestors = None  # [N, F_{l+1}, keys of the path so far]
        experts, scores, outs = [], [], []
        for l in reversed(range(len(self.layers))):
            if ancestors is None:  # the root's event: the token alone
                h, parents, events = u, 1, valid
            else:
                parents = ancestors.size(1)
                h = torch.cat([u[:, None, :].expand(-1, parents, -1), ancestors], dim=-1)
                h = h.reshape(num_tokens * parents, -1)
                events = None if valid is None else valid.repeat_interleave(parents)
            out = self.layers[l](h, events)
            f = out.experts.size(-1)
            picked = out.experts.reshape(num_tokens, parents * f)  # [N, F_l]
            experts.insert(0, picked)
            scores.insert(0, out.scores.reshape(num_tokens, parents * f))
            outs.insert(0, out)
            if l == 0:
                break  # the leaves pick no children: their keys are not needed
            keys = self.layers[l].passed_keys.index_select(0, picked.reshape(-1))
            keys = keys.view(num_tokens, parents * f, -1)  # [N, F_l, d_g]
            if ancestors is not None:
                keys = torch.cat([ancestors.repeat_interleave(f, dim=1), keys], dim=-1)
            ancestors = keys
        return RoutingResult(
            experts=experts,
            scores=scores,
            fanout=self.fanout,
            balance_loss=torch.stack([o.loss for o in outs]).sum(),
            load=[o.load for o in outs],
            importance=[o.importance for o in outs],
            layer_losses=[o.loss for o in outs],
        )

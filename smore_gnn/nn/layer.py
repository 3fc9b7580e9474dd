"""``SMoRELinear``: a frozen ``nn.Linear`` plus the S'MoRE adapter delta (docs/spec.md §1, §5).

Forward: route every token top-down, materialise the routed sub-trees as one batched graph,
then propagate bottom-up with :class:`~smore_gnn.nn.conv.SMoREConv` (``backend="gnn"``) or with
the dense oracle (``backend="dense"``). On the GNN path one GEMM projects the tokens for the
router (``D``) and for every expert layer (``A_l``) at once; each hop of the tree is one
``SMoREConv.propagate`` on the layer's destination-sorted ``EdgeIndex``, which PyG runs as the
conv's ``message_and_aggregate``: one :func:`~smore_gnn.nn.fused.tree_hop` (picked residuals,
weighted child sum, ``W_l``, activation; the root with ``W_proj``), docs/spec.md §10.
``SpeedSettings(message_passing="edges")`` passes one message per edge instead (the oracle).
An eval forward of a few tokens without autograd (a decode step) takes
:mod:`smore_gnn.nn.decode` (fewer operations still, from cached folded weights).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from smore_gnn.nn.balance_grad import AttachBalanceLoss, in_backward, probe
from smore_gnn.nn.checkpoint import ForwardState, is_recording, record, replayed
from smore_gnn.nn.config import SMoREConfig
from smore_gnn.nn.conv import SMoREConv, Tanh, regular_adjacency
from smore_gnn.nn.decode import forward_mask, small_forward, small_forward_applies
from smore_gnn.nn.experts import ResidualExperts, stacked_linear
from smore_gnn.nn.fused import PickedExperts, picked_rows, token_column
from smore_gnn.nn.masks import check_mask_values
from smore_gnn.nn.reference import dense_delta
from smore_gnn.nn.router import RoutingResult, SMoRERouter
from smore_gnn.nn.settings import SpeedSettings
from smore_gnn.nn.tree import RoutingTree

_ADJACENCY_CACHE_SIZE = 64  # (children, fanout, device) entries per layer; cleared when full


class SMoRELinear(nn.Module):
    """Wraps a frozen ``base_layer``; returns ``base_layer(x) + W_proj m_root(x)`` (plus the
    extension's shared term ``B_s A_s x`` when ``config.shared_rank > 0``, docs/spec.md §12).

    Args:
        base_layer (nn.Linear): the frozen map ``W0``.
        config (SMoREConfig): adapter configuration.
        settings (SpeedSettings, optional): how to compute (not what); default
            ``SpeedSettings.for_device`` of the base layer's device. (default: :obj:`None`)

    Attributes:
        balance_loss: the last forward's summed balance loss, a scalar to ADD to the loss
            (see below), or ``None`` before the first forward.
        last_routing: the last forward's :class:`RoutingResult` (detached).
        attention_mask: the padding mask a model wrapper sets for the layers of a model that
            calls them as ``layer(x)`` (see :meth:`forward`).

    **Balance loss and gradient checkpointing.** Train with ``loss = task_loss +
    sum(layer.balance_loss)`` (``SMoREModel.balance_loss()``), in ONE backward call: the
    gradients are then the same without and with reentrant or non-reentrant checkpointing
    (:mod:`smore_gnn.nn.balance_grad`), loss scaling included. Log ``balance_loss.detach()``.
    """

    def __init__(
        self, base_layer: nn.Linear, config: SMoREConfig, settings: SpeedSettings | None = None
    ):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"SMoRELinear wraps an nn.Linear (got {type(base_layer).__name__})")
        if not isinstance(config, SMoREConfig):
            raise TypeError(f"SMoRELinear expects an SMoREConfig (got {type(config).__name__})")
        self.base_layer, self.config = base_layer, config
        self.base_layer.requires_grad_(False)
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        dims, cfg = config.message_dims, config
        self.router = SMoRERouter(self.in_features, cfg)
        banks = [
            ResidualExperts(self.in_features, s, r, dims[l + 1], cfg.bias)
            for l, (s, r) in enumerate(zip(cfg.num_experts, cfg.rank))
        ]
        if cfg.shared_pool:  # S'MoRE#: one pool, registered once per layer, stored once
            banks = [banks[0]] * cfg.num_layers
        self.experts = nn.ModuleList(banks)
        self.convs = nn.ModuleList(
            SMoREConv(
                dims[l],
                dims[l + 1],
                cfg.expert_act,
                cfg.propagation,
                cfg.bias,
                scatter=cfg.scatter,
            )
            for l in range(cfg.num_layers)
        )
        self.root = SMoREConv(
            dims[-1], dims[-1], propagation=cfg.propagation, root=True, scatter=cfg.scatter
        )
        self.proj = nn.Linear(dims[-1], self.out_features, bias=cfg.bias)
        # the extension (docs/spec.md §12): B_s A_s x beside the routed delta; None when off
        self.shared: nn.Sequential | None = None
        if cfg.shared_rank:
            self.shared = nn.Sequential(
                nn.Linear(self.in_features, cfg.shared_rank, bias=False),  # A_s
                nn.Linear(cfg.shared_rank, self.out_features, bias=False),  # B_s
            )
        weight = base_layer.weight
        dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
        for module in (self.router, self.experts, self.convs, self.proj, self.shared):
            if module is not None:  # not the base layer
                module.to(device=weight.device, dtype=dtype)
        self._balance_value: Tensor | None = None  # detached
        self._balance_routing: RoutingResult | None = None  # lazy statistics, not yet read
        self._balance_graph: Tensor | None = None  # with grad; dropped by deepcopy/pickle
        self.register_buffer(
            "_balance_grad", torch.zeros((), dtype=dtype, device=weight.device), persistent=False
        )
        self._balance_cell: Tensor | None = None  # the last forward's own cell; None: the buffer
        self._last_routing: RoutingResult | None = None  # detached when read (last_routing)
        self._attention_mask: Tensor | None = None  # the wrapper's mask for this batch
        self._forward_mask: Tensor | None = None  # the last fresh forward's (a fallback)
        self.disable_adapters = False  # True: forward returns base_layer(x) (disable_adapter())
        self._cache: dict = {}  # no-grad stacked projection weight (experts.stacked_linear)
        self._adjacency: dict = {}  # index tensors per size: regular_adjacency(...), columns
        self._mask_memo: tuple | None = None  # the last resolved stored mask (forward_mask)
        self.settings = settings or SpeedSettings.for_device(weight.device.type)
        self.reset_parameters()
        self.register_load_state_dict_post_hook(_drop_caches)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``init_method`` (docs/spec.md §5): ``w_final_zero`` (``W_proj = 0``), ``eq_1_layer``
        (plus Proposition 3.2's construction) or ``normal`` (the authors' default: ``W_proj``
        Kaiming-uniform like every other weight, so the adapter starts non-zero)."""
        self.router.reset_parameters()  # keys per config.key_init
        for bank in self.experts:
            bank.reset_parameters()
        for conv in self.convs:
            conv.reset_parameters()
            lin = conv.lin
            if self.config.zero_transition_bias and lin is not None and lin.bias is not None:
                nn.init.zeros_(lin.bias)  # the authors zero every W_l bias
        if self.config.init_method == "normal":
            nn.init.kaiming_uniform_(self.proj.weight, a=math.sqrt(5))  # as the authors' W_final
        else:
            nn.init.zeros_(self.proj.weight)
        if self.proj.bias is not None:
            nn.init.zeros_(self.proj.bias)
        if self.shared is not None:  # as peft's LoRA: A Kaiming-uniform, B = 0
            nn.init.kaiming_uniform_(self.shared[0].weight, a=math.sqrt(5))
            nn.init.zeros_(self.shared[1].weight)
        if self.config.init_method == "eq_1_layer":
            self._init_eq_1_layer()

    def _init_eq_1_layer(self) -> None:
        # B^i writes its r coordinates into slot i of the s r new ones; W_l = [0; I] copies
        # the old d_l coordinates below them (S'MoRE#: W_l = I, slots shared by all layers).
        for bank in self.experts:
            bank.init_slots()
        for conv in self.convs:
            if conv.lin is None:
                continue
            w = conv.lin.weight  # [d_{l+1}, d_l]
            w.zero_()
            w[w.size(0) - w.size(1) :, :] = torch.eye(w.size(1))
            if conv.lin.bias is not None:
                conv.lin.bias.zero_()

    def forward(self, x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``[..., d] -> [..., d_out]``: ``base_layer(x)`` plus the adapter delta.

        Args:
            x: tokens ``[..., d]`` (zero tokens give the base output, an empty tensor).
            attention_mask: padding mask, 1/True for real tokens and 0/False for padding,
                bool or integer/float 0/1, of shape ``x.shape[:-1]`` or flat ``[N]``. Padding
                enters the adapter as the zero token, left out of every balance statistic.
                If omitted, the mask set in :attr:`attention_mask` is used (also accepted with
                ``N`` elements when ``x`` is already flat ``[N, d]``). HF's additive or 4-D
                masks are rejected: ``SMoREModel`` converts them.

        **Gradient checkpointing.** A recomputation inside a backward routes as its forward
        did, with that forward's mask (and, if the forward ran without autograd, adds the
        balance loss's gradient recorded for that forward), whatever other forwards of this
        layer ran between the forward and its backward, when the checkpoint function is a
        :class:`~smore_gnn.nn.checkpoint.RecordingCheckpoint` (``SMoREModel`` installs one in
        transformers' gradient checkpointing). Under ``torch.utils.checkpoint`` called
        directly it falls back to the mask and gradient cell of this layer's *last* fresh
        forward: right only if no other forward of the layer ran in between (a mask passed
        as an argument of the checkpointed function is always right: the recomputation gets
        the same argument). A recomputation changes none of the last forward's attributes
        (:attr:`last_routing`, :attr:`balance_loss`).

        Raises:
            ValueError: ``x`` has the wrong width, or the mask the wrong shape or values.
            TypeError: the mask is not a bool/integer/float tensor.
        """
        if x.size(-1) != self.in_features:
            raise ValueError(
                f"SMoRELinear expected inputs [..., {self.in_features}] (got {tuple(x.shape)})"
            )
        if self.disable_adapters:  # SMoREModel.disable_adapter(): the base output only
            return self.base_layer(x)
        result = self.base_layer(x)
        lead = x.shape[:-1]
        fresh = not in_backward()  # False: a checkpoint recomputation
        own = None if fresh else replayed(self)  # the state its forward recorded, if any
        stored = self._attention_mask if fresh else self._forward_mask  # [N] bool | None
        if own is not None:  # recomputing a recorded forward: its mask (else the last one's)
            stored = own.mask
        mask = forward_mask(attention_mask, stored, lead, not fresh, self)  # [N] bool | None
        # plain attributes below: a dict update is cheaper than nn.Module.__setattr__ per name
        if fresh:
            cell = None  # the buffer, shared by the forwards no RecordingCheckpoint records
            if is_recording():  # its own cell, so its recomputation finds its own gradient
                cell = self._balance_grad.new_zeros(())
                record(self, ForwardState(mask, cell, had_graph=torch.is_grad_enabled()))
            else:
                self._balance_grad.zero_()
            self.__dict__.update(_forward_mask=mask, _balance_graph=None, _balance_cell=cell)
        if torch.is_grad_enabled() and self._cache:  # gradients, so maybe a fused step next:
            self.drop_caches()  # it would leave the version counters the caches check alone
        if lead.numel() == 0:  # nothing to route: the base output, no balance loss
            if fresh:
                self._balance_value = self._balance_grad.new_zeros(())
                self._balance_routing = None
                self._last_routing = None
            return result
        flat = x.reshape(-1, self.in_features)  # [N, d]
        if mask is not None:  # padding enters the adapter as the zero token (NaN-safe)
            flat = torch.where(mask[:, None], flat, flat.new_zeros(()))
        if self.config.backend == "dense":
            routing = self.router(flat, mask)
            delta = dense_delta(self, flat.to(self.proj.weight.dtype), routing)
        elif small_forward_applies(self, flat.size(0)):  # a decode step: fewer ops, same math
            delta, routing = small_forward(self, flat, mask)
        else:  # one GEMM projects x for the router and for every expert (docs/spec.md §10)
            u, hidden = self._project(flat.to(self.proj.weight.dtype), with_router=True)
            routing = self.router(flat, mask, u=u)
            delta = self._propagate(hidden, RoutingTree.from_routing(routing), self.proj)
        if self.shared is not None:  # padding rows are zero: no contribution
            delta = delta + self.shared(flat.to(self.proj.weight.dtype))
        if fresh:  # a recomputation leaves the last forward's attributes alone
            self.__dict__.update(_balance_value=None, _balance_routing=routing)
            self.__dict__["_last_routing"] = routing
        if not routing.is_lazy:  # lazy (no autograd): computed when balance_loss is read
            loss = routing.balance_loss
            if fresh:
                self._balance_graph = loss if loss.requires_grad else None
                self._balance_value, self._balance_routing = loss.detach(), None
            elif loss.requires_grad and (
                self._balance_graph is None if own is None else not own.had_graph
            ):
                # recomputing a forward that ran without autograd (reentrant checkpointing):
                # d(total)/d(loss) = g, recorded by the probe, arrives through the delta
                cell = self._balance_grad if own is None else own.balance_cell
                delta = AttachBalanceLoss.apply(delta, loss, cell)
        delta = delta.view(*lead, self.out_features)
        return result + (delta if delta.dtype == result.dtype else delta.to(result.dtype))

    @property
    def settings(self) -> SpeedSettings:
        """How this layer computes (:class:`~smore_gnn.nn.settings.SpeedSettings`); setting
        it passes the choices on to the convs and the router."""
        return self._settings

    @settings.setter
    def settings(self, settings: SpeedSettings) -> None:
        if not isinstance(settings, SpeedSettings):
            raise TypeError(
                f"SMoRELinear.settings must be a SpeedSettings (got {type(settings).__name__})"
            )
        self._settings = settings
        for conv in [*self.convs, self.root]:
            if isinstance(conv.act, Tanh):
                conv.act.min_numel = settings.fast_tanh_min_numel
        self.router.set_transposed_softmax(settings.transposed_softmax)

    @property
    def last_routing(self) -> RoutingResult | None:
        """The last forward's :class:`RoutingResult`, detached from autograd (on first read:
        a training step that never reads it pays nothing)."""
        routing = self._last_routing
        if routing is not None and any(s.requires_grad for s in routing.scores):
            routing = self._last_routing = routing.detached()
        return routing

    @last_routing.setter
    def last_routing(self, routing: RoutingResult | None) -> None:
        self._last_routing = routing

    @property
    def attention_mask(self) -> Tensor | None:
        """The mask :meth:`forward` uses when given none, kept until set again (a model wrapper
        sets it per model forward); values are checked here, the shape in the forward."""
        return self._attention_mask

    @attention_mask.setter
    def attention_mask(self, mask: Tensor | None) -> None:
        if mask is not None and mask is not self._attention_mask:
            check_mask_values(mask, "SMoRELinear.attention_mask")
        self._attention_mask = mask

    @property
    def balance_loss(self) -> Tensor | None:
        """The last forward's balance loss (``None`` before any forward), to add to the loss.

        With autograd on: the forward's balance loss with its graph or, if the forward had no
        graph (reentrant checkpointing), a probe whose gradient the recomputation applies
        (see the class docstring). Otherwise the detached value.
        """
        if self._balance_value is None and self._balance_routing is not None:
            self._balance_value = self._balance_routing.balance_loss.detach()
            self._balance_routing = None
        value = self._balance_value
        if value is None or not torch.is_grad_enabled():
            return value
        if self._balance_graph is not None:  # the forward ran with autograd
            return self._balance_graph
        if not any(p.requires_grad for p in self.router.parameters()):
            return value
        cell = self._balance_cell
        return probe(value, self._balance_grad if cell is None else cell)

    def drop_caches(self) -> None:
        """Forget every no-autograd cache of this layer (decode tables, the stacked projection,
        the router's tables): rebuilt on the next forward that reads them."""
        self._cache.clear()
        self.router._tables.clear()

    def train(self, mode: bool = True) -> SMoRELinear:
        self.drop_caches()
        return super().train(mode)

    def __getstate__(self) -> dict:
        # deepcopy/pickle (EMA, reference models): the balance loss's graph is the original's
        state = {**self.__dict__, "_balance_graph": None, "_balance_cell": None}
        state.update(_cache={}, _adjacency={})
        return {**state, "_last_routing": self.last_routing}  # detached

    def adapter_delta(self, x: Tensor, routing: RoutingResult) -> Tensor:
        """``W_proj m_root`` (plus ``B_s A_s x`` with ``shared_rank``) for tokens ``x`` [N, d]
        routed as ``routing`` -> [N, d_out]."""
        x = x.to(self.proj.weight.dtype)
        if self.config.backend == "dense":
            delta = dense_delta(self, x, routing)
        else:
            hidden = self._project(x, with_router=False)[1]
            delta = self._propagate(hidden, RoutingTree.from_routing(routing), self.proj)
        return delta if self.shared is None else delta + self.shared(x)

    def propagate_tree(self, x: Tensor, tree: RoutingTree) -> Tensor:
        """The GNN pass: ``L`` message-passing steps plus the root sum -> ``m_root`` [N, d_L]."""
        return self._propagate(self._project(x, with_router=False)[1], tree)

    def _project(self, x: Tensor, with_router: bool) -> tuple[Tensor | None, list[Tensor]]:
        """``(u, [A_l x + a_l per layer])`` from ONE GEMM over the stacked ``D``, ``A_0``, ...

        ``u`` (the router's ``D x``, float32) is fused in only for a float32 adapter, as the
        router computes in float32, and only if ``D`` learns (a dense gate has no balance loss
        and MoMOR ignores the scores); otherwise it is ``None`` and the router projects itself.
        """
        cfg = self.config
        shared = cfg.shared_pool  # S'MoRE#: the one pool is projected once
        parts = [bank.lora_A for bank in ([self.experts[0]] if shared else self.experts)]
        down = self.router.down_proj
        learns = cfg.gate_type != "dense" or cfg.propagation != "momor"
        fuse = with_router and learns and down is not None
        fuse = fuse and x.dtype == down.weight.dtype == torch.float32
        if fuse:
            parts.insert(0, down)
        # [N, d] @ [d, d_u + sum_l s_l r_l]
        chunks = [parts[0](x)] if len(parts) == 1 else list(stacked_linear(x, parts, self._cache))
        u = chunks.pop(0) if fuse else None
        return u, chunks * len(self.experts) if shared else chunks

    def _propagate(
        self, hidden: list[Tensor], tree: RoutingTree, proj: nn.Linear | None = None
    ) -> Tensor:
        """``m_root`` [N, d_L] (or ``proj(m_root)``) from every layer's expert projections
        ``hidden`` [N, s_l r_l]: one :meth:`SMoREConv.propagate` per hop, fused on the
        regular adjacency unless ``settings.message_passing == "edges"``."""
        momor, scales = self.config.propagation == "momor", self.config.residual_scales
        # config.scatter="torch_scatter" asks for that kernel: one message per edge
        fused = self.settings.message_passing == "fused" and self.config.scatter == "native"
        key = ("column", tree.num_tokens, tree.device)
        column = self._cached(key, token_column) if fused else None
        z = None
        for l, conv in enumerate(self.convs):  # [N F_l, d_{l+1}] node states of layer l
            bank, experts = self.experts[l], tree.experts[l]
            if fused and conv.fusable:
                rows = picked_rows(experts, column)
                res = PickedExperts(hidden[l], rows, bank.lora_B, bank.lora_B_bias, scales[l])
            else:
                res = bank.residuals(hidden[l], experts, scales[l], self.settings.residual_costs)
            first = tree.first_use(l).reshape(-1) if momor else None
            if l == 0:
                z = conv(None, res, first_use=first)
            else:
                adj = self._edges(tree, l - 1, fused)
                z = conv(z, res, adj, tree.layer_edge_weight(l - 1), first_use=first)
        top = self.config.num_layers - 1
        adj, ew = self._edges(tree, top, fused), tree.layer_edge_weight(top)
        return self.root(z, None, adj, ew, num_parents=tree.num_tokens, proj=proj)

    def _edges(self, tree: RoutingTree, layer: int, fused: bool) -> Tensor | None:
        """Layer ``layer`` -> ``layer + 1`` edges: the cached :func:`regular_adjacency` (fused;
        ``None`` under ``torch.compile``, see :meth:`SMoREConv.forward`) or a ``[2, E]``
        tensor (messages per edge)."""
        if not fused:
            return tree.layer_edge_index(layer)
        key = (tree.experts[layer].numel(), tree.fanout[layer], tree.device)
        return self._cached(key, lambda key: regular_adjacency(*key))

    def _cached(self, key: tuple, build) -> Tensor | None:
        """``build(key)`` kept per layer (index tensors of a size: no parameter in them), or
        ``None`` under ``torch.compile`` (traced there instead)."""
        if torch.compiler.is_compiling():
            return None
        value = self._adjacency.get(key)
        if value is None:
            if len(self._adjacency) >= _ADJACENCY_CACHE_SIZE:
                self._adjacency.clear()
            with torch.inference_mode(False), torch.no_grad():  # autograd may save it later
                value = self._adjacency[key] = build(key)
        return value

    @property
    def last_tree(self) -> RoutingTree | None:
        """The last forward's routed sub-trees as a batched graph (for inspection)."""
        return None if self.last_routing is None else RoutingTree.from_routing(self.last_routing)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"in={self.in_features}, out={self.out_features}, experts={c.num_experts}, "
            f"fanout={c.fanout}, rank={c.rank}, backend={c.backend!r}"
        )


def _drop_caches(module: SMoRELinear, incompatible_keys) -> None:
    # load_state_dict post hook (in place or assign=True)
    module.drop_caches()

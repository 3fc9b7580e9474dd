"""``SMoREConv``: one bottom-up propagation step of S'MoRE on the routed sub-trees."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric import EdgeIndex
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.aggr import SumAggregation
from torch_geometric.nn.inits import reset
from torch_geometric.typing import Adj

from smore_gnn.nn.config import EXPERT_ACTS, PROPAGATIONS, SCATTERS
from smore_gnn.nn.fused import FUSED_ACTS, PickedExperts, as_tensor, residual_rows, tree_hop

#: The default of ``SpeedSettings.fast_tanh_min_numel``: from this many float32 CPU elements
#: on, :class:`Tanh` computes ``2 sigmoid(2x) - 1`` in place: torch's CPU ``tanh`` kernel runs
#: at ~3.5 ns per element on the benchmark machine, the three passes of the identity at ~1.5
#: (``bench/NOTES.md``). Smaller inputs, other dtypes and devices take ``torch.tanh``.
FAST_TANH_MIN_NUMEL = 4096


class _SigmoidTanh(torch.autograd.Function):
    """``tanh(x) = 2 sigmoid(2x) - 1`` (within 2e-7 of ``torch.tanh`` in float32); the backward
    is ``tanh``'s, from the saved output."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = x.mul(2.0).sigmoid_().mul_(2.0).sub_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def uses_fast_tanh(x: Tensor, min_numel: int | None = FAST_TANH_MIN_NUMEL) -> bool:
    """Whether :func:`tanh` takes ``2 sigmoid(2x) - 1`` for ``x``: a float32 CPU tensor of at
    least ``min_numel`` elements (``None``: never), outside ``torch.compile``."""
    fast = min_numel is not None and x.device.type == "cpu" and x.dtype == torch.float32
    return fast and x.numel() >= min_numel and not torch.compiler.is_compiling()


def tanh(x: Tensor, min_numel: int | None = FAST_TANH_MIN_NUMEL) -> Tensor:
    """``torch.tanh(x)``, by :class:`_SigmoidTanh` for large float32 CPU inputs."""
    return _SigmoidTanh.apply(x) if uses_fast_tanh(x, min_numel) else torch.tanh(x)


class Tanh(nn.Tanh):
    """``nn.Tanh`` by :func:`tanh` (faster on large CPU float32 inputs); ``min_numel`` is the
    layer's ``SpeedSettings.fast_tanh_min_numel``."""

    min_numel: int | None = FAST_TANH_MIN_NUMEL

    def forward(self, x: Tensor) -> Tensor:
        return tanh(x, self.min_numel)


def make_activation(name: str) -> nn.Module:
    """The expert activation sigma: ``identity``, ``tanh``, ``relu`` or learnable ``prelu``."""
    acts = {"identity": nn.Identity, "tanh": Tanh, "relu": nn.ReLU, "prelu": nn.PReLU}
    if name not in acts:
        raise ValueError(f"Expected an expert activation in {list(EXPERT_ACTS)} (got {name!r})")
    return acts[name]()


def regular_adjacency(num_children: int, fanout: int, device: torch.device) -> EdgeIndex:
    """The edges child ``i`` -> parent ``i // fanout`` of a routed tree layer as an
    :class:`~torch_geometric.EdgeIndex` sorted by parent: the adjacency on which
    :meth:`SMoREConv.propagate` takes :meth:`SMoREConv.message_and_aggregate`."""
    src = torch.arange(num_children, device=device)
    parents = num_children // fanout
    index = torch.stack([src, src // fanout])  # [2, C]
    return EdgeIndex(index, sparse_size=(num_children, parents), sort_order="col")


class SMoREConv(MessagePassing):
    r"""One layer of the bottom-up pass of S'MoRE from `"S'MoRE: Structural Mixture of Residual
    Experts for Parameter-Efficient LLM Fine-tuning" <https://arxiv.org/abs/2504.06426>`_
    (Eq. 3), on child -> parent edges of routed sub-trees:

    .. math::
        \mathbf{z}_n = \sigma\Big( \mathbf{r}_n + \mathbf{W} \sum_{c \in \mathcal{C}(n)}
        \alpha_{c} \, \mathbf{z}_c \Big)

    where :math:`\mathbf{r}_n = c_l \mathbf{B}^{e(n)} \mathbf{A}^{e(n)} \mathbf{x}` is the
    residual of node :math:`n`'s expert (computed by the caller) and :math:`\alpha_c` the gate
    score on the edge. Variants (:obj:`propagation`):

    * ``"smore_star"``: :math:`\mathbf{z}_n = \mathbf{r}_n + \mathbf{W}\sigma(\mathbf{m}_n)`;
    * ``"momor"`` (the flat mixture :math:`\sum_l \sum_{e \in U_l} \mathbf{B}_l^e
      \mathbf{A}_l^e \mathbf{x}`, docs/spec.md §5): :math:`\mathbf{z}_n = [n \text{ first use
      of } e(n)]\,\mathbf{r}_n + \mathbf{P} \sum_c \mathbf{z}_c`, no gate scores, no
      :math:`\sigma`, no :math:`\mathbf{W}`; :math:`\mathbf{P}` puts the :math:`d_l` child
      coordinates in the last :math:`d_l` of :math:`d_{l+1}` (where Proposition 3.2's
      :math:`\mathbf{W}_l = [0; I]` puts them). The root sees only the *set* of experts per layer.

    A leaf layer has :obj:`in_channels=0` (no children, no :math:`\mathbf{W}`); a root step
    (:obj:`root=True`) only aggregates :math:`\sum_c \alpha_c \mathbf{z}_c` (then the given
    projection).

    On a routed tree layer's :class:`~torch_geometric.EdgeIndex` sorted by parent
    (:func:`regular_adjacency`) :meth:`propagate` takes PyG's fused hook,
    :meth:`message_and_aggregate`, which runs the whole step as one
    :func:`~smore_gnn.nn.fused.tree_hop` (residuals given as
    :class:`~smore_gnn.nn.fused.PickedExperts`); on a ``[2, E]`` tensor it passes one message
    per edge (:meth:`message`, :meth:`aggregate`, :meth:`update`).

    Args:
        in_channels (int): child state width :math:`d_l` (0 for the leaf layer).
        out_channels (int): node state width :math:`d_{l+1}`.
        act (str, optional): :math:`\sigma`. (default: :obj:`"tanh"`)
        propagation (str, optional): ``"smore"``, ``"smore_star"`` or ``"momor"``.
            (default: :obj:`"smore"`)
        bias (bool, optional): learn a bias in :math:`\mathbf{W}`. (default: :obj:`True`)
        root (bool, optional): plain weighted sum to the root. (default: :obj:`False`)
        scatter (str, optional): ``"native"`` or ``"torch_scatter"`` aggregation kernel.
            (default: :obj:`"native"`)
        **kwargs (optional): Additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:** child states :math:`(|\mathcal{V}_{l-1}|, d_l)` or :obj:`None`,
          residuals :math:`(|\mathcal{V}_l|, d_{l+1})` or their ``PickedExperts``, edge indices
          :math:`(2, |\mathcal{E}|)` or an ``EdgeIndex``,
          edge weights :math:`(|\mathcal{E}|)`, first-use mask :math:`(|\mathcal{V}_l|)`
        - **output:** node states :math:`(|\mathcal{V}_l|, d_{l+1})`
    """

    SUPPORTS_FUSED_EDGE_INDEX = True  # message_and_aggregate on a destination-sorted EdgeIndex

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        act: str = "tanh",
        propagation: str = "smore",
        bias: bool = True,
        root: bool = False,
        scatter: str = "native",
        **kwargs,
    ):
        kwargs.setdefault("aggr", "add")
        super().__init__(**kwargs)
        if propagation not in PROPAGATIONS:
            raise ValueError(f"Expected propagation in {list(PROPAGATIONS)} (got {propagation!r})")
        if scatter not in SCATTERS:
            raise ValueError(f"Expected scatter in {list(SCATTERS)} (got {scatter!r})")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.propagation, self.root, self.scatter = propagation, root, scatter
        if propagation == "momor" and in_channels > out_channels:
            raise ValueError(
                f"Expected in_channels <= out_channels for propagation='momor' (got "
                f"{in_channels} > {out_channels})"
            )
        has_lin = in_channels > 0 and not root and propagation != "momor"
        self.lin = nn.Linear(in_channels, out_channels, bias=bias) if has_lin else None
        plain = root or propagation == "momor"
        self.act = nn.Identity() if plain else make_activation(act)
        self.act_name = "identity" if plain else act
        self.star = propagation == "smore_star"
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        reset(self.lin)
        reset(self.act)

    def forward(
        self,
        x: Tensor | None,
        residual: Tensor | PickedExperts | None = None,
        edge_index: Adj | None = None,
        edge_weight: Tensor | None = None,
        first_use: Tensor | None = None,
        num_parents: int | None = None,
        proj: nn.Linear | None = None,
    ) -> Tensor:
        """Node states of this layer (the root: ``sum_c alpha_c z_c``, then ``proj`` if given).

        ``edge_index`` is either a ``[2, E]`` tensor (messages per edge: :meth:`message`,
        :meth:`aggregate`, :meth:`update`) or the :class:`~torch_geometric.EdgeIndex` of a
        routed tree layer sorted by parent (:func:`regular_adjacency`): then PyG calls
        :meth:`message_and_aggregate`, which runs the whole hop as one
        :func:`~smore_gnn.nn.fused.tree_hop` when ``residual`` is a
        :class:`~smore_gnn.nn.fused.PickedExperts` (or at the root). ``None`` (not at the
        leaves) promises a routed tree layer as well and runs :meth:`hop` without
        :meth:`propagate` (what ``torch.compile`` traces).
        """
        if self.propagation == "momor":
            edge_weight = None  # MoMOR forgets the structure, gate scores included
        fused = self.fusable and (self.root or isinstance(residual, PickedExperts))
        if self.in_channels == 0 and not self.root:  # the leaves receive no messages
            if fused:
                act = self._fused_act(residual_rows(residual))
                return tree_hop(residual, None, None, None, None, act, self.star)
            return self.update(None, as_tensor(residual), first_use)
        parents = num_parents if self.root else residual_rows(residual)
        if edge_index is None:  # a routed tree layer without its EdgeIndex (torch.compile,
            # where one of symbolic size cannot be built): the same hop, without propagate
            residual = residual if fused else as_tensor(residual)
            out = self.hop(parents, x, edge_weight, residual, proj, fused)
            return self.update(out, residual, first_use, proj, fused)
        fused = fused and self.fuses(edge_index)
        return self.propagate(
            edge_index,
            x=x,
            edge_weight=edge_weight,
            residual=residual if fused else as_tensor(residual),
            first_use=first_use,
            proj=proj,
            fused=fused,
            size=(x.size(0), parents),
        )

    def _fused_act(self, nodes: int) -> str:
        # "tanh" as 2 sigmoid(2x) - 1 from the layer's SpeedSettings.fast_tanh_min_numel on
        min_numel = getattr(self.act, "min_numel", None)
        fast = min_numel is not None and nodes * self.out_channels >= min_numel
        return "fast_tanh" if self.act_name == "tanh" and fast else self.act_name

    @property
    def fusable(self) -> bool:
        """Whether :func:`~smore_gnn.nn.fused.tree_hop` computes this step (not MoMOR, and
        an activation it knows)."""
        return self.propagation != "momor" and self.act_name in FUSED_ACTS

    def fuses(self, edge_index: Adj | None) -> bool:
        """Whether :meth:`propagate` takes :meth:`message_and_aggregate` for ``edge_index``
        (PyG's own test: a fusing conv and an ``EdgeIndex`` sorted by destination)."""
        fused = self.fuse and not self.explain and isinstance(edge_index, EdgeIndex)
        return fused and edge_index.is_sorted_by_col

    def message_and_aggregate(
        self,
        edge_index: EdgeIndex,
        x: Tensor,
        edge_weight: Tensor | None = None,
        residual: Tensor | PickedExperts | None = None,
        proj: nn.Linear | None = None,
        fused: bool = False,
    ) -> Tensor:
        """Messages and their sum per parent on a routed tree layer (child ``i`` under parent
        ``i // f``, :func:`regular_adjacency`), by a reshape; with ``fused``, the node update
        too, all in one :func:`~smore_gnn.nn.fused.tree_hop` (:meth:`hop`)."""
        return self.hop(edge_index.num_cols, x, edge_weight, residual, proj, fused)

    def hop(
        self,
        parents: int,
        x: Tensor,
        edge_weight: Tensor | None,
        residual: Tensor | PickedExperts | None,
        proj: nn.Linear | None,
        fused: bool,
    ) -> Tensor:
        """:meth:`message_and_aggregate` for ``parents`` parents of ``f`` children each."""
        alpha = None
        if edge_weight is not None:
            alpha = edge_weight.view(parents, -1)  # [P, f]
            alpha = alpha if alpha.dtype == x.dtype else alpha.to(x.dtype)
        if fused and self.root:
            weight, bias = (None, None) if proj is None else (proj.weight, proj.bias)
            return tree_hop(None, x, alpha, weight, bias)
        if fused:
            lin, act = self.lin, self._fused_act(parents)
            return tree_hop(residual, x, alpha, lin.weight, lin.bias, act, self.star)
        children = x.view(parents, -1, x.size(1))  # [P, f, d]
        if alpha is None:
            return children.sum(1)
        return (children * alpha[:, :, None]).sum(1)  # [P, d]

    def update(
        self,
        inputs: Tensor | None,
        residual: Tensor | PickedExperts | None = None,
        first_use: Tensor | None = None,
        proj: nn.Linear | None = None,
        fused: bool = False,
    ) -> Tensor:
        """Eq. 3's node update from the summed messages ``inputs`` (``None`` at the leaves);
        nothing to do after a fused :meth:`message_and_aggregate`."""
        m = inputs
        if fused:
            return m
        if self.root:
            return m if proj is None else proj(m)
        if self.propagation == "smore":
            return self.act(residual if m is None else residual + self.lin(m))
        if self.propagation == "smore_star":
            return residual if m is None else residual + self.lin(self.act(m))
        own = torch.where(first_use.reshape(-1, 1), residual, 0.0)  # momor: each expert once
        if m is None:
            return own
        return own + F.pad(m, (self.out_channels - self.in_channels, 0))  # [|V_l|, d_{l+1}]

    def message(self, x_j: Tensor, edge_weight: Tensor | None) -> Tensor:
        return x_j if edge_weight is None else edge_weight.view(-1, 1).to(x_j.dtype) * x_j

    def aggregate(
        self, inputs: Tensor, index: Tensor, ptr: Tensor | None = None, dim_size: int | None = None
    ) -> Tensor:
        if self.scatter == "torch_scatter":
            import torch_scatter

            return torch_scatter.scatter(inputs, index, dim=0, dim_size=dim_size, reduce="sum")
        if isinstance(self.aggr_module, SumAggregation) and dim_size is not None:
            # index_add_ sums whole rows: faster on CPU than the broadcast-index scatter_add_
            # of PyG's default path (same result); its backward is one index_select.
            out = inputs.new_zeros((dim_size,) + inputs.shape[1:])
            return out.index_add_(0, index, inputs)
        return super().aggregate(inputs, index, ptr=ptr, dim_size=dim_size)

    def __repr__(self) -> str:
        kind = "root" if self.root else self.propagation
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, {kind})"

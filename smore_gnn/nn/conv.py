"""``SMoREConv``: one bottom-up propagation step of S'MoRE on the routed sub-trees."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.aggr import SumAggregation
from torch_geometric.nn.inits import reset

from smore_gnn.nn.config import EXPERT_ACTS, PROPAGATIONS, SCATTERS

#: From this many float32 CPU elements on, :class:`Tanh` computes ``2 sigmoid(2x) - 1`` in
#: place: torch's CPU ``tanh`` kernel runs at ~3.5 ns per element on the benchmark machine,
#: the three passes of the identity at ~1.5 (``bench/NOTES.md``). Smaller inputs, other
#: dtypes and devices take ``torch.tanh``.
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


def tanh(x: Tensor) -> Tensor:
    """``torch.tanh(x)``, by :class:`_SigmoidTanh` for large float32 CPU inputs."""
    fast = x.device.type == "cpu" and x.dtype == torch.float32
    if fast and x.numel() >= FAST_TANH_MIN_NUMEL and not torch.compiler.is_compiling():
        return _SigmoidTanh.apply(x)
    return torch.tanh(x)


class Tanh(nn.Tanh):
    """``nn.Tanh`` by :func:`tanh` (faster on large CPU float32 inputs)."""

    def forward(self, x: Tensor) -> Tensor:
        return tanh(x)


def make_activation(name: str) -> nn.Module:
    """The expert activation sigma: ``identity``, ``tanh``, ``relu`` or learnable ``prelu``."""
    acts = {"identity": nn.Identity, "tanh": Tanh, "relu": nn.ReLU, "prelu": nn.PReLU}
    if name not in acts:
        raise ValueError(f"Expected an expert activation in {list(EXPERT_ACTS)} (got {name!r})")
    return acts[name]()


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
    (:obj:`root=True`) only aggregates :math:`\sum_c \alpha_c \mathbf{z}_c`.

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
          residuals :math:`(|\mathcal{V}_l|, d_{l+1})`, edge indices :math:`(2, |\mathcal{E}|)`,
          edge weights :math:`(|\mathcal{E}|)`, first-use mask :math:`(|\mathcal{V}_l|)`
        - **output:** node states :math:`(|\mathcal{V}_l|, d_{l+1})`
    """

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
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        reset(self.lin)
        reset(self.act)

    def forward(
        self,
        x: Tensor | None,
        residual: Tensor | None = None,
        edge_index: Tensor | None = None,
        edge_weight: Tensor | None = None,
        first_use: Tensor | None = None,
        num_parents: int | None = None,
        regular: bool = False,
    ) -> Tensor:
        """``regular=True`` promises the edges of a routed tree layer (child ``i`` under parent
        ``i // f``, every parent with ``f`` children, ``edge_index`` then unused): the sum
        runs as a reshape and one reduction instead of a gather and a scatter (same sums)."""
        if self.propagation == "momor":
            edge_weight = None  # MoMOR forgets the structure, gate scores included
        if self.root:
            if regular:
                return self.regular_sum(x, edge_weight, num_parents)
            return self.propagate(
                edge_index, x=x, edge_weight=edge_weight, size=(x.size(0), num_parents)
            )
        m = None
        if self.in_channels > 0 and regular:
            m = self.regular_sum(x, edge_weight, residual.size(0))
        elif self.in_channels > 0:  # [|V_{l-1}|, d_l] -> [|V_l|, d_l]
            size = (x.size(0), residual.size(0))
            m = self.propagate(edge_index, x=x, edge_weight=edge_weight, size=size)
        if self.propagation == "smore":
            return self.act(residual if m is None else residual + self.lin(m))
        if self.propagation == "smore_star":
            return residual if m is None else residual + self.lin(self.act(m))
        own = torch.where(first_use.reshape(-1, 1), residual, 0.0)  # momor: each expert once
        if m is None:
            return own
        return own + F.pad(m, (self.out_channels - self.in_channels, 0))  # [|V_l|, d_{l+1}]

    def regular_sum(self, x: Tensor, edge_weight: Tensor | None, num_parents: int) -> Tensor:
        """``sum_c alpha_c z_c`` per parent when parent ``p`` has children ``p f .. p f + f - 1``:
        ``[P f, d] -> [P, d]`` (the messages of :meth:`message`, summed by a reshape)."""
        if num_parents == 0:
            return x.new_zeros((0, x.size(1)))
        children = x.view(num_parents, -1, x.size(1))  # [P, f, d]; reshaped before the
        if edge_weight is None:  # product, so that the backward needs no copy
            return children.sum(1)
        alpha = edge_weight.view(num_parents, -1, 1).to(x.dtype)  # [P, f, 1]
        return (children * alpha).sum(1)  # [P, d]

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

"""A bank of low-rank residual experts of one layer: ``B^i (A^i x + a^i) + b^i``.

See docs/spec.md §2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smore_gnn.nn.fused import as_in_forward, autocast_state
from smore_gnn.nn.staleness import cached


@dataclass(frozen=True)
class ResidualCosts:
    """Relative cost of the two ways :meth:`ResidualExperts.residuals` evaluates picked experts.

    A multiply-add inside one GEMM costs 1; ``bmm`` is one inside the small per-expert batched
    matmuls, ``gather`` each gathered output element (forward gather plus backward scatter).
    """

    bmm: float
    gather: float

    def __post_init__(self) -> None:
        if self.bmm <= 0 or self.gather < 0:
            raise ValueError(f"Expected ResidualCosts(bmm > 0, gather >= 0) (got {self!r})")


# Per device type (``tensor.device.type``). Only the CPU entry is measured (fitted on the
# benchmarks in bench/). A device type without an entry counts multiply-adds alone
# (``_UNFITTED``: the fewest FLOPs win, i.e. compute-all-and-gather) unless a layer's
# ``SpeedSettings.residual_costs`` gives constants (``bench/adapter_speed.py`` times both).
_FITTED = MappingProxyType({"cpu": ResidualCosts(bmm=1.85, gather=15.0)})
_UNFITTED = ResidualCosts(bmm=1.0, gather=0.0)
PATHS = ("auto", "masked", "gather")
#: Up to this many picked nodes (``N K``: a decode step, a short prompt) ``"auto"`` takes
#: compute-all-and-gather on every device: the fewest operations, where per-op overhead
#: dominates the arithmetic (measured in bench/NOTES.md).
GATHER_MAX_NODES = 64


def residual_costs(device_type: str) -> ResidualCosts:
    """The default cost constants on ``device_type`` (FLOPs alone where none is fitted)."""
    return _FITTED.get(device_type, _UNFITTED)


def _stack(parts: list[nn.Linear]) -> tuple[Tensor, Tensor | None]:
    biases = [p.bias if p.bias is not None else p.weight.new_zeros(p.out_features) for p in parts]
    bias = torch.cat(biases) if any(p.bias is not None for p in parts) else None
    return torch.cat([p.weight for p in parts]), bias


def _part_tensors(parts: list[nn.Linear]) -> list[Tensor]:
    return [t for p in parts for t in (p.weight, p.bias) if t is not None]


class _StackedLinear(torch.autograd.Function):
    """``x @ [W_1; ...; W_k]^T + [b_1; ...; b_k]`` split per part, with a hand-written
    backward: one GEMM each for the input's and the weights' gradients, then one split per
    kind (autograd would add the stacking's and the split's nodes). Every part has a bias."""

    @staticmethod
    def forward(ctx, x, sizes, *tensors):
        weight, bias = torch.cat(tensors[0::2]), torch.cat(tensors[1::2])  # [R, d], [R]
        ctx.sizes, ctx.autocast = sizes, autocast_state(x)
        ctx.save_for_backward(x, weight)
        return torch.addmm(bias, x, weight.t()).split(sizes, dim=1)  # [N, R] -> [N, o_i]

    @staticmethod
    def backward(ctx, *grads):
        with as_in_forward(ctx.autocast):
            return _StackedLinear._backward(ctx, *grads)

    @staticmethod
    def _backward(ctx, *grads):
        x, weight = ctx.saved_tensors
        g = torch.cat(grads, dim=1)  # [N, R]
        g_x = g @ weight if ctx.needs_input_grad[0] else None
        g_w = (g.t() @ x).split(ctx.sizes)  # [o_i, d] each
        g_b = g.sum(0).split(ctx.sizes)
        return (g_x, None, *(t for pair in zip(g_w, g_b) for t in pair))


def stacked_linear(
    x: Tensor, parts: list[nn.Linear], cache: dict | None = None
) -> tuple[Tensor, ...]:
    """``x @ [W_1; W_2; ...]^T + [b_1; b_2; ...]``: ONE GEMM for several linears sharing ``x``,
    returned split per part (``[N, o_i]`` each).

    With autograd and biases on every part, :class:`_StackedLinear` (a hand-written backward).
    Without autograd (evaluation, generation) and given a ``cache`` dict, the stacked weight
    is kept there and rebuilt only when a part changes (:func:`smore_gnn.nn.staleness.cached`),
    so a decode step does not copy the weights again.
    """
    sizes = [p.out_features for p in parts]
    if cache is None or torch.is_grad_enabled() or torch.compiler.is_compiling():
        if torch.is_grad_enabled() and all(p.bias is not None for p in parts):
            return _StackedLinear.apply(x, sizes, *_part_tensors(parts))
        return F.linear(x, *_stack(parts)).split(sizes, dim=1)
    # one entry per set of parts: the layer stacks [D, A_0, ...] in its forward but [A_0, ...]
    # in adapter_delta; one shared entry would be rebuilt at every switch between the two
    name = "stacked:" + ",".join(str(id(p)) for p in parts)
    return F.linear(x, *cached(cache, name, parts, _part_tensors, _stack)).split(sizes, dim=1)


class ResidualExperts(nn.Module):
    """``num_experts`` experts ``A^i: rank x in_features``, ``B^i: out_features x rank``.

    The ``A`` of all experts is stored as one matrix ``[num_experts * rank, in_features]`` so
    that one GEMM projects every token onto every expert (docs/spec.md §10).
    """

    def __init__(
        self, in_features: int, num_experts: int, rank: int, out_features: int, bias: bool = True
    ):
        super().__init__()
        self.num_experts, self.rank, self.out_features = num_experts, rank, out_features
        self.lora_A = nn.Linear(in_features, num_experts * rank, bias=bias)
        self.lora_B = nn.Parameter(torch.empty(num_experts, out_features, rank))
        self.lora_B_bias = nn.Parameter(torch.empty(num_experts, out_features)) if bias else None
        self.path = "auto"  # or "masked" / "gather": force one way of evaluating picked experts
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform ``A`` and ``B`` (as ``nn.Linear`` does), zero biases."""
        self.lora_A.reset_parameters()
        if self.lora_A.bias is not None:
            nn.init.zeros_(self.lora_A.bias)
        bound = 1.0 / math.sqrt(self.rank)  # kaiming_uniform(a=sqrt(5)) with fan_in = rank
        nn.init.uniform_(self.lora_B, -bound, bound)
        if self.lora_B_bias is not None:
            nn.init.zeros_(self.lora_B_bias)

    @torch.no_grad()
    def init_slots(self) -> None:
        """Proposition 3.2's experts: ``B^i`` writes its ``r`` coordinates into slot ``i`` of
        the ``s r`` outputs (identity there, zero elsewhere); biases zero."""
        r = self.rank
        self.lora_B.zero_()
        for i in range(self.num_experts):
            self.lora_B[i, i * r : (i + 1) * r, :] = torch.eye(r)
        for bias in (self.lora_A.bias, self.lora_B_bias):
            if bias is not None:
                bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """Residuals of every expert for every token: ``[N, d] -> [N, s, d_out]``."""
        h = self.lora_A(x).view(x.size(0), self.num_experts, self.rank)  # [N, s, r]
        out = torch.einsum("nsr,sor->nso", h, self.lora_B)  # [N, s, d_out]
        return out if self.lora_B_bias is None else out + self.lora_B_bias

    def use_masked(
        self, picks: int, device_type: str = "cpu", costs: ResidualCosts | None = None
    ) -> bool:
        """Whether :meth:`residuals` takes the one-hot GEMM (True) or compute-all-and-gather.

        Decided by :attr:`path` if it is ``"masked"`` or ``"gather"``, else (``"auto"``) by
        ``costs``, by default those of ``device_type`` (:func:`residual_costs`).
        """
        if self.path not in PATHS:
            raise ValueError(f"ResidualExperts.path must be one of {PATHS} (got {self.path!r})")
        if self.path != "auto":
            return self.path == "masked"
        s, r = self.num_experts, self.rank
        costs = costs or residual_costs(device_type)
        masked = picks * (s * r + s)  # multiply-adds per token and output feature
        return masked <= costs.bmm * s * r + costs.gather * picks

    def choose_path(
        self,
        nodes: int,
        picks: int,
        device_type: str = "cpu",
        costs: ResidualCosts | None = None,
    ) -> str:
        """``"masked"`` or ``"gather"`` for ``nodes`` picked experts, ``picks`` per token:
        :attr:`path` unless ``"auto"``; then ``"gather"`` for at most
        :data:`GATHER_MAX_NODES` nodes, else as :meth:`use_masked` decides."""
        if self.path == "auto" and nodes <= GATHER_MAX_NODES:
            return "gather"
        return "masked" if self.use_masked(picks, device_type, costs) else "gather"

    def residuals(
        self,
        hidden: Tensor,
        experts: Tensor,
        scale: float = 1.0,
        costs: ResidualCosts | None = None,
    ) -> Tensor:
        """``scale * (B^e hidden_e + b^e)`` of the picked experts, by the cheaper of two ways.

        Args:
            hidden: ``A x + a`` of every expert, ``[N, s * r]`` (e.g. a slice of one GEMM).
            experts: picked expert ids ``[N, K]``.
            scale: the residual scale ``c_l``.
            costs: the cost constants of :meth:`choose_path` (default: the device's).

        Returns:
            ``[N * K, d_out]``, node ``(n, k)`` at row ``n * K + k``.

        *Compute-all* runs every expert's ``B`` on every token (one small batched matmul) and
        gathers the ``K`` picked rows; *one-hot* zeroes all but the picked expert's ``r``
        coordinates and runs one GEMM with every ``B`` stacked, ``[N K, s r] @ [s r, d_out]``
        (the bias as ``s`` one-hot columns): ``K`` times the multiply-adds but no gather and no
        scatter in the backward pass (:meth:`choose_path` picks).
        """
        n, k = experts.shape
        s, r = self.num_experts, self.rank
        weight = self.lora_B.transpose(1, 2)  # [s, r, d_out]
        bias = self.lora_B_bias
        if scale != 1.0:
            weight = weight * scale
            bias = None if bias is None else bias * scale
        path = self.choose_path(n * k, k, hidden.device.type, costs)
        if path == "masked":
            # [N, K, s]; not F.one_hot, which checks the ids' range (a host sync) and copies
            onehot = hidden.new_zeros(n, k, s).scatter_(2, experts[..., None], 1.0)
            masked = (hidden.view(n, 1, s, r) * onehot[..., None]).reshape(n * k, s * r)
            weight = weight.reshape(s * r, -1)  # [s r, d_out]
            if bias is not None:  # [N K, s r + s] @ [s r + s, d_out]
                masked = torch.cat([masked, onehot.reshape(n * k, s)], dim=1)
                weight = torch.cat([weight, bias])
            return masked @ weight
        h = hidden.view(n, s, r).transpose(0, 1)  # [s, N, r]
        every = torch.bmm(h, weight) if bias is None else torch.baddbmm(bias[:, None], h, weight)
        rows = experts * n + torch.arange(n, device=experts.device)[:, None]  # [N, K] in [s N]
        return every.reshape(s * n, -1).index_select(0, rows.reshape(-1))  # [N K, d_out]

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, rank={self.rank}, out={self.out_features}"

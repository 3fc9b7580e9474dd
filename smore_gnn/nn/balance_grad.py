"""The balance loss's gradient under reentrant gradient checkpointing.

Under *reentrant* checkpointing the first forward runs without autograd, so a balance loss kept
aside and added to the task loss has no graph, and its gradient would be lost silently. The
layer then carries it through its output instead, without any change to how a trainer writes
its loss (``loss = task_loss + model.balance_loss()``):

* :class:`BalanceLossProbe` (what ``SMoRELinear.balance_loss`` returns when the forward had no
  graph) has the balance loss's *value*; its backward records ``g = d(total loss) /
  d(balance loss)`` into the layer's grad cell. A trainer's scaling of the loss (gradient
  accumulation ``1 / k``, an fp16 ``GradScaler``, a weight) thus reaches the balance term as if
  its graph had been there. Autograd runs the probe before the recomputation: the probe is
  created after the model's forward, so it has a higher sequence number than every node of
  the forward graph, and it is ready as soon as the loss's backward starts.
* :class:`AttachBalanceLoss`, applied by the *recomputation* (inside the backward), is the
  identity on the adapter delta; its backward also sends ``g`` into the recomputed balance
  loss, like DeepSeek-MoE's ``AddAuxiliaryLoss`` (there with a constant ``g = 1``).

Without checkpointing and under non-reentrant checkpointing the forward builds the graph, and
the layer returns that balance loss itself (recomputation then only refills saved tensors).

Reference: DeepSeek-MoE ``AddAuxiliaryLoss`` (modeling_deepseek.py).
"""

from __future__ import annotations

import torch
from torch import Tensor


def in_backward() -> bool:
    """Whether this code runs inside an autograd backward pass (checkpoint recomputation does).

    torch has no public API for this; the private ``torch._C._current_graph_task_id`` is read
    here only, and ``tests/test_checkpointing.py`` fails loudly if torch changes it.
    """
    if torch.compiler.is_compiling():
        return False
    return torch._C._current_graph_task_id() != -1


class AttachBalanceLoss(torch.autograd.Function):
    """``y = delta``; backward: ``d/d delta = grad`` and ``d/d balance_loss = cell`` (``g``)."""

    @staticmethod
    def forward(ctx, delta: Tensor, balance_loss: Tensor, cell: Tensor) -> Tensor:
        # cell is read at backward time (the probe writes it after this forward), hence a ctx
        # attribute rather than save_for_backward, whose version check would reject that.
        ctx.cell = cell
        ctx.loss_dtype = balance_loss.dtype
        return delta.view_as(delta)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor | None, None]:
        grad_loss = None
        if ctx.needs_input_grad[1]:
            grad_loss = ctx.cell.detach().to(device=grad.device, dtype=ctx.loss_dtype).clone()
        return grad, grad_loss, None


class BalanceLossProbe(torch.autograd.Function):
    """``y = value`` (detached); backward adds the incoming gradient ``g`` to ``cell``."""

    @staticmethod
    def forward(ctx, value: Tensor, anchor: Tensor, cell: Tensor) -> Tensor:
        ctx.cell = cell
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, None, None]:
        ctx.cell.add_(grad.detach().sum().to(device=ctx.cell.device, dtype=ctx.cell.dtype))
        return None, None, None


def probe(value: Tensor, cell: Tensor) -> Tensor:
    """``value`` as a scalar whose gradient, when it reaches it, is recorded in ``cell``."""
    anchor = torch.zeros((), device=value.device, requires_grad=True)  # gives y a grad_fn
    return BalanceLossProbe.apply(value, anchor, cell)

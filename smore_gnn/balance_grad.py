"""The balance loss's gradient, carried by the adapter output so that it survives checkpointing.

Under *reentrant* gradient checkpointing the first forward runs without autograd, so a balance
loss kept aside and added to the task loss has no graph: its gradient is silently lost. Under
*non-reentrant* checkpointing the graph exists but recomputation must route exactly as the
first forward did. Both are handled here, in the layer, without any change to how a trainer
writes its loss (``loss = task_loss + model.balance_loss()``):

* :class:`AttachBalanceLoss` is the identity on the adapter delta; its backward also sends
  ``g`` into the layer's (possibly recomputed) balance loss, like DeepSeek-MoE's
  ``AddAuxiliaryLoss``. Recomputation re-creates it, so the gradient reaches the router
  whichever forward built the graph.
* ``g`` is not a constant: :class:`BalanceLossProbe` (what ``SMoRELinear.balance_loss``
  returns when autograd is on) has the balance loss's *value* and a backward that records
  ``g = d(final loss) / d(balance loss)`` into the layer's ``grad cell``. A trainer's scaling
  of the loss (gradient accumulation ``1 / k``, an fp16 ``GradScaler``, a weight ``w``) is thus
  applied to the balance term exactly as if its graph had been there. Autograd runs the probe
  first: it is created after the model's forward, so it has a higher sequence number than
  every node of the forward graph, and it is ready as soon as the loss's backward starts.

A fresh forward (not a recomputation inside a backward) zeroes the cell: a balance loss that is
not added to the loss then gets no gradient, as without checkpointing.

Reference: DeepSeek-MoE ``AddAuxiliaryLoss`` (modeling_deepseek.py).
"""

from __future__ import annotations

import torch
from torch import Tensor


def in_backward() -> bool:
    """Whether this code runs inside an autograd backward pass (checkpoint recomputation does)."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._current_graph_task_id() != -1


class AttachBalanceLoss(torch.autograd.Function):
    """``y = delta``; backward: ``d/d delta = grad``, ``d/d balance_loss = cell`` (``g``)."""

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

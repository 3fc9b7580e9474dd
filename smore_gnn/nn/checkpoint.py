"""Each gradient-checkpoint recomputation sees the state of its own forward.

A checkpointed function runs twice: in the forward, and again inside the backward, to refill
the tensors the forward did not keep. The recomputation of an ``SMoRELinear`` must route as
its forward did, so it needs that forward's resolved padding mask, and under reentrant
checkpointing the cell through which the balance loss's gradient reaches it
(:mod:`smore_gnn.nn.balance_grad`). One slot per layer cannot hold them: other forwards of
the same model (an evaluation batch, a second micro-batch) may run between a forward and its
backward and overwrite it.

:class:`RecordingCheckpoint` wraps a checkpoint function. Each call it checkpoints gets a
frame: the forward run records each layer's :class:`ForwardState` in it, in call order, and
every later run (a recomputation) hands them back to the same layers in the same order. A
layer recomputed outside such a call (``torch.utils.checkpoint`` called directly) falls back
to the state of its last fresh forward. The frames live in a :class:`~contextvars.ContextVar`
and in the checkpoint's closure, not on the layers, and a frame is freed with the
checkpoint's graph.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["ForwardState", "RecordingCheckpoint", "is_recording", "record", "replayed"]


@dataclass
class ForwardState:
    """What a recomputation of one layer call needs from its forward.

    Attributes:
        mask: the resolved ``[N]`` bool padding mask (``None``: every token real).
        balance_cell: the scalar into which that forward's balance-loss probe records
            ``d(loss) / d(balance loss)`` (:func:`~smore_gnn.nn.balance_grad.probe`).
        had_graph: the forward ran with autograd, so its balance loss has its own graph and
            the recomputation must not add the probe's gradient again.
    """

    mask: Tensor | None
    balance_cell: Tensor
    had_graph: bool


@dataclass
class _Frame:
    """The states one checkpointed call's forward recorded, per layer in call order."""

    states: dict[nn.Module, list[ForwardState]] = field(default_factory=dict)
    runs: int = 0


@dataclass
class _Run:
    """One run of a frame's function: the forward (records) or a recomputation (replays)."""

    frame: _Frame
    replaying: bool
    cursor: dict[nn.Module, int] = field(default_factory=dict)


_RUN: ContextVar[_Run | None] = ContextVar("smore_gnn_checkpoint_run", default=None)


def is_recording() -> bool:
    """Whether this code runs in the forward of a call checkpointed by
    :class:`RecordingCheckpoint` (so a layer should :func:`record` its state)."""
    if torch.compiler.is_compiling():
        return False
    run = _RUN.get()
    return run is not None and not run.replaying


def record(layer: nn.Module, state: ForwardState) -> None:
    """Keep ``state`` of this call of ``layer`` for the recomputations (only while
    :func:`is_recording`)."""
    run = None if torch.compiler.is_compiling() else _RUN.get()
    if run is not None and not run.replaying:
        run.frame.states.setdefault(layer, []).append(state)


def replayed(layer: nn.Module) -> ForwardState | None:
    """In a recomputation by :class:`RecordingCheckpoint`: the state this call of ``layer``
    recorded in the forward (the layer's calls are matched in order). ``None`` elsewhere, or
    when the forward recorded no such call."""
    run = None if torch.compiler.is_compiling() else _RUN.get()
    if run is None or not run.replaying:
        return None
    states = run.frame.states.get(layer, ())
    index = run.cursor[layer] = run.cursor.get(layer, -1) + 1
    return states[index] if index < len(states) else None


class RecordingCheckpoint:
    """A checkpoint function whose recomputations see the state of their own forwards.

    ``checkpoint_fn(function, *args, **kwargs)`` is called with ``function`` wrapped so that
    its first run (the forward) records the :class:`ForwardState` of every ``SMoRELinear``
    call and each later run (a recomputation in the backward) replays them, whatever other
    forwards of the same layers ran in between. Reentrant and non-reentrant checkpointing
    alike; every option of ``checkpoint_fn`` (``use_reentrant``, ``context_fn``, ...) is
    passed on. Under ``torch.compile`` the call is passed on unchanged: nothing is recorded
    or replayed (untested).

    Args:
        checkpoint_fn (Callable, optional): the checkpoint function wrapped, e.g. a
            ``functools.partial`` of it with options, as transformers keeps it in a module's
            ``_gradient_checkpointing_func``. (default: ``torch.utils.checkpoint.checkpoint``)

    Example:
        >>> checkpoint = RecordingCheckpoint()
        >>> y = checkpoint(block, x, use_reentrant=False)  # doctest: +SKIP
    """

    def __init__(self, checkpoint_fn: Callable[..., Any] = checkpoint):
        self.checkpoint_fn = checkpoint_fn

    def __call__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return self.checkpoint_fn(function, *args, **kwargs)
        frame = _Frame()

        def run(*inner_args: Any, **inner_kwargs: Any) -> Any:
            # the first run is the forward; each later one a recomputation (also one that a
            # non-reentrant checkpoint stops early, or a second backward with retain_graph)
            token = _RUN.set(_Run(frame, replaying=frame.runs > 0))
            frame.runs += 1
            try:
                return function(*inner_args, **inner_kwargs)
            finally:
                _RUN.reset(token)

        return self.checkpoint_fn(run, *args, **kwargs)

    def __repr__(self) -> str:
        return f"RecordingCheckpoint({self.checkpoint_fn!r})"

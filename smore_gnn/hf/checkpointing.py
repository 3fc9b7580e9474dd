"""Transformers' gradient checkpointing, with each recomputation given its own forward's state.

``gradient_checkpointing_enable`` (``activation_checkpointing_enable`` in transformers 5) gives
every module with a ``gradient_checkpointing`` attribute a checkpoint function,
``module._gradient_checkpointing_func`` (``torch.utils.checkpoint.checkpoint`` with the
``gradient_checkpointing_kwargs``), which the module calls on its forward. ``SMoREModel``
registers :func:`record_forward_states` as a forward pre-hook on those modules: before the
forward checkpoints anything, the function is wrapped once in a
:class:`~smore_gnn.nn.checkpoint.RecordingCheckpoint`, so a recomputation routes with its own
forward's mask even when other forwards of the model ran between the forward and its backward.
This holds whenever checkpointing is enabled (before or after wrapping, through the wrapper or
the base model), reentrant or not; :func:`unwrap` undoes it when the adapters are removed.
"""

from __future__ import annotations

from torch import nn

from smore_gnn.nn.checkpoint import RecordingCheckpoint

_ATTRIBUTE = "_gradient_checkpointing_func"  # transformers' _set_gradient_checkpointing


def checkpointing_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that transformers may give a checkpoint function."""
    return [module for module in model.modules() if hasattr(module, "gradient_checkpointing")]


def record_forward_states(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook: wrap ``module``'s checkpoint function in a ``RecordingCheckpoint``
    (once; nothing happens while checkpointing was never enabled)."""
    checkpoint_fn = module.__dict__.get(_ATTRIBUTE)
    if checkpoint_fn is not None and not isinstance(checkpoint_fn, RecordingCheckpoint):
        setattr(module, _ATTRIBUTE, RecordingCheckpoint(checkpoint_fn))


def unwrap(module: nn.Module) -> None:
    """Give ``module`` back the checkpoint function :func:`record_forward_states` wrapped."""
    checkpoint_fn = module.__dict__.get(_ATTRIBUTE)
    if isinstance(checkpoint_fn, RecordingCheckpoint):
        setattr(module, _ATTRIBUTE, checkpoint_fn.checkpoint_fn)

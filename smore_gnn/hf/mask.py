"""The attention mask a Hugging Face model receives, as the token mask S'MoRE's router needs.

Accepted: ``None``, or a 2-D ``[batch, seq]`` mask of bools or 0/1 numbers (what tokenizers
and data collators give), with ``seq`` equal to the input length or longer (generation with
a KV cache passes the mask of all tokens so far; the newest ``seq`` columns are used).
Rejected with a ``ValueError`` naming the fix: other values (e.g. an additive 0 / -inf mask),
other ranks (e.g. a 4-D mask built inside the model) and shapes that do not fit the input
(e.g. a transposed mask).

The mask of a forward applies to exactly that forward: :func:`push_mask` publishes it when the
model's forward starts and :func:`pop_mask` withdraws it when the forward returns or raises
(``SMoREModel`` does both with forward hooks), and the adapted layers read it with
:func:`current_mask`. The masks live in a :class:`~contextvars.ContextVar`, so a thread (e.g.
a ``DataParallel`` replica) sees only its own. A call that did not come through the model's
forward (e.g. of the inner decoder, ``model.model.model(...)``) finds no mask and treats every
token as real: real tokens get the same outputs, padding is routed as a token. A gradient
checkpoint's recomputation finds no mask either: the layer routes with the mask its forward
recorded (:mod:`smore_gnn.nn.checkpoint`, installed by :mod:`smore_gnn.hf.checkpointing`).
"""

from __future__ import annotations

import inspect
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor


def bind_inputs(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The named inputs of a ``forward`` call (positional arguments mapped to their names)."""
    try:
        return dict(signature.bind_partial(*args, **kwargs).arguments)
    except TypeError:  # an unusual call: leave the error to the model itself
        return dict(kwargs)


def token_mask(inputs: dict[str, Any]) -> Tensor | None:
    """The ``[batch, seq]`` bool mask (True = token, False = padding) of a forward's inputs.

    Args:
        inputs: the forward's named inputs (``attention_mask`` and ``input_ids`` or
            ``inputs_embeds``).

    Returns:
        ``None`` when no mask was given.

    Raises:
        ValueError: a mask of the wrong rank, shape or values.
        TypeError: a mask that is not a tensor.
    """
    mask = inputs.get("attention_mask")
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"attention_mask must be a torch.Tensor [batch, seq] (got {type(mask).__name__}); "
            "pass the tokenizer output with return_tensors='pt'"
        )
    if mask.dim() != 2:
        raise ValueError(
            f"SMoREModel needs the 2-D attention_mask [batch, seq] of 1 (token) / 0 (padding) "
            f"(got a {mask.dim()}-D mask of shape {tuple(mask.shape)}); pass the tokenizer's "
            "attention_mask, not a mask expanded for attention"
        )
    if mask.dtype != torch.bool:
        bad = (mask != 0) & (mask != 1)
        if bool(bad.any()):
            raise ValueError(
                f"attention_mask must hold 0/1 or bools (got the value "
                f"{mask[bad].flatten()[0].item()}); an additive mask (0 = keep, -inf = drop) "
                "converts with (mask == 0).long()"
            )
        mask = mask != 0
    ids = inputs.get("input_ids")
    ids = inputs.get("inputs_embeds") if ids is None else ids
    if isinstance(ids, Tensor) and ids.dim() >= 2:
        batch, seq = ids.shape[0], ids.shape[1]
        if mask.size(0) != batch or mask.size(1) < seq:
            raise ValueError(
                f"attention_mask has shape {tuple(mask.shape)} but the input is "
                f"[{batch}, {seq}]; pass a mask of shape [batch, seq] (not transposed)"
            )
        mask = mask[:, -seq:]  # generation with a KV cache: the newest tokens
    return mask


# (owner, [batch, seq] bool mask or None) of every model forward in progress, innermost last
_MASKS: ContextVar[tuple[tuple[object, Tensor | None], ...]] = ContextVar(
    "smore_gnn_token_masks", default=()
)


def push_mask(owner: object, mask: Tensor | None) -> None:
    """Publish ``mask`` for the forward of the model keyed ``owner`` that starts now."""
    if mask is not None and mask.device.type == "cpu" and bool(mask.all()):
        mask = None  # no padding: the layers skip the masking work (one check, not per layer)
    _MASKS.set((*_MASKS.get(), (owner, mask)))


def pop_mask(owner: object) -> None:
    """Withdraw the mask :func:`push_mask` published for ``owner`` (if it is the innermost)."""
    masks = _MASKS.get()
    if masks and masks[-1][0] is owner:
        _MASKS.set(masks[:-1])


def current_mask(owner: object) -> Tensor | None:
    """The mask of the forward of the model keyed ``owner`` in progress, else ``None``."""
    masks = _MASKS.get()
    if owner is None or not masks or masks[-1][0] is not owner:
        return None
    return masks[-1][1]

"""Validation of the padding masks a :class:`~smore_gnn.nn.layer.SMoRELinear` accepts.

A mask marks real tokens 1/True and padding 0/False (docs/spec.md §3: padding is left out of
every balance statistic). HF's 4-D or additive (0 / -inf) masks are *not* accepted here:
:class:`~smore_gnn.hf.model.SMoREModel` converts what a HF model receives before it reaches a
layer.
"""

from __future__ import annotations

import torch
from torch import Tensor

_HINT = "a padding mask has 1/True for real tokens and 0/False for padding"


def check_mask_values(mask: Tensor, name: str = "attention_mask") -> None:
    """Raise unless ``mask`` is a bool tensor or holds only 0 and 1 (integer or float).

    The value check reads the mask (a device sync on GPU); it is skipped while
    ``torch.compile`` traces, where a data-dependent branch would break the graph.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (got {type(mask).__name__}); {_HINT}")
    if mask.dtype == torch.bool:
        return
    if mask.is_complex() or not (mask.dtype.is_floating_point or _is_integer(mask.dtype)):
        raise TypeError(f"{name} must be bool or hold 0/1 values (got dtype {mask.dtype})")
    if torch.compiler.is_compiling() or mask.numel() == 0:
        return
    if not ((mask == 0) | (mask == 1)).all():
        bad = mask[(mask != 0) & (mask != 1)].flatten()[0].item()
        extra = ""
        if mask.dtype.is_floating_point and (bad < 0 or bad == float("-inf")):
            extra = (
                "; this looks like an additive mask (0 keep / -inf or a large negative value "
                "for padding): pass `(mask == 0)` instead, or call the model through "
                "SMoREModel, which converts HF's masks"
            )
        raise ValueError(f"{name} must hold only 0 and 1 (got the value {bad}){extra}; {_HINT}")


def _is_integer(dtype: torch.dtype) -> bool:
    return not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool


def flat_mask(
    mask: Tensor,
    lead: torch.Size,
    name: str = "attention_mask",
    flattened_ok: bool = False,
    check_values: bool = True,
) -> Tensor:
    """Validate ``mask`` for tokens of leading shape ``lead`` and return it as ``[N]`` bool.

    Args:
        mask: the padding mask.
        lead: ``x.shape[:-1]`` of the layer input.
        name: how the error names the mask.
        flattened_ok: also accept any shape with ``N`` elements when the layer input is
            already flattened (``lead`` of one dimension): a model that flattens its tokens
            ``[B, T, d] -> [B * T, d]`` row-major before the layer sees a ``[B, T]`` mask.
        check_values: check dtype and values (skip for a mask already checked).

    Raises:
        ValueError: the shape is neither ``lead`` nor ``[N]`` (a transposed mask of the same
            size is rejected), or the values are not 0/1.
        TypeError: not a tensor, or not a bool/integer/float tensor.
    """
    if check_values:
        check_mask_values(mask, name)
    num_tokens = lead.numel()
    ok = mask.shape == lead or (mask.dim() == 1 and mask.numel() == num_tokens)
    ok = ok or (flattened_ok and len(lead) == 1 and mask.numel() == num_tokens)
    if not ok:
        raise ValueError(
            f"{name} must have the tokens' shape x.shape[:-1] = {tuple(lead)} or be flat "
            f"[{num_tokens}] (got {tuple(mask.shape)}); pass the mask of this batch, "
            "not a transposed or other batch's mask"
        )
    return mask.reshape(num_tokens).bool()  # [N]


def resolve_mask(
    explicit: Tensor | None, stored: Tensor | None, lead: torch.Size, checked: bool = False
) -> Tensor | None:
    """The ``[N]`` bool mask of a forward: ``explicit`` if given, else ``stored``.

    ``stored`` is the mask set on the layer by a model wrapper (values checked when it was
    set; also accepted with ``N`` elements when the tokens arrive flattened), or with
    ``checked=True`` the validated ``[N]`` mask of an earlier forward (a checkpoint
    recomputation). ``None`` means every token is real.
    """
    if explicit is not None:
        return flat_mask(explicit, lead)
    if stored is None or checked:
        return stored
    name = "SMoRELinear.attention_mask (set by the model wrapper)"
    return flat_mask(stored, lead, name, flattened_ok=True, check_values=False)

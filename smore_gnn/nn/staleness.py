"""When the no-autograd caches of a layer (routing and decode tables, the stacked GEMM
weight) go stale, decided by the layer that owns them, with no process-wide hook.

A cached table is rebuilt when a tensor it was built from is replaced (``module.weight =
...``, ``load_state_dict(assign=True)``: compared by identity), moved (``.to()``: its storage
pointer) or changed in place (its version counter). One update escapes all three: a *fused*
optimizer step (``AdamW(fused=True)``, the Hugging Face Trainer's ``adamw_torch_fused``)
changes parameters in place without moving their version counters. It needs gradients, and
gradients need a forward with autograd, so the owners drop their caches on every forward
with autograd (and on ``train()``/``eval()`` and ``load_state_dict``): the caches serve
evaluation and generation, which run without autograd.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


def cached(
    cache: dict,
    name: str,
    owner: T,
    gather: Callable[[T], Sequence[Tensor]],
    build: Callable[[T], object],
):
    """``build(owner)``, kept in ``cache[name]`` while the tensors it reads (``gather(owner)``)
    are the same objects, in the same storage, at the same versions.

    Built under ``torch.no_grad`` outside inference mode: a plain tensor, no graph. The owner
    clears ``cache`` where those checks cannot see a change (see the module docstring).
    """
    tensors = tuple(gather(owner))
    key = (
        tuple(map(id, tensors)),
        tuple(t._version for t in tensors),
        tuple(t.data_ptr() for t in tensors),
    )
    hit = cache.get(name)
    if hit is None or hit[0] != key or any(a is not b for a, b in zip(hit[1], tensors)):
        with torch.inference_mode(False), torch.no_grad():  # plain tensors, no graph
            hit = cache[name] = (key, tensors, build(owner))
    return hit[2]

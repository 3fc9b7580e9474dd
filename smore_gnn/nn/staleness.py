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
from torch import Tensor, nn

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

    ``owner`` is a module or a list of modules. A replacement is seen without gathering again:
    every ``_modules`` and ``_parameters`` entry under ``owner`` is recorded with the build and
    checked by identity (dictionary look-ups, cheaper than walking the modules per decode
    step). Built under ``torch.no_grad`` outside inference mode: a plain tensor, no graph.
    The owner clears ``cache`` where these checks cannot see a change (module docstring).
    """
    hit = cache.get(name)
    if hit is not None:
        structure, tensors, versions, pointers, value = hit
        same = all(d.get(k, _MISSING) is v for d, k, v in structure)
        same = same and versions == [t._version for t in tensors]
        if same and pointers == [t.data_ptr() for t in tensors]:
            return value
    tensors = tuple(gather(owner))
    with torch.inference_mode(False), torch.no_grad():  # plain tensors, no graph
        value = build(owner)
    versions, pointers = [t._version for t in tensors], [t.data_ptr() for t in tensors]
    cache[name] = (_structure(owner), tensors, versions, pointers, value)
    return value


_MISSING = object()


def _structure(owner: nn.Module | Sequence[nn.Module]) -> list[tuple[dict, str, object]]:
    # (container, key, value) of every submodule and parameter slot under owner
    roots = [owner] if isinstance(owner, nn.Module) else list(owner)
    out = []
    for root in roots:
        for module in root.modules():
            out += [(module._modules, k, v) for k, v in module._modules.items()]
            out += [(module._parameters, k, v) for k, v in module._parameters.items()]
    return out

"""When no-autograd caches (routing and decode tables, the stacked GEMM weight) go stale.

A cached table is rebuilt when a tensor it was built from changes. Three signals together:

* the tensor's version counter and storage pointer (in-place edits, ``.to()``);
* a process-wide epoch, bumped when a parameter or submodule is registered on a
  :func:`watch`-ed module (a replacement: ``module.weight = ...``,
  ``load_state_dict(assign=True)``);
* a process-wide count of optimizer steps: a *fused* optimizer (``AdamW(fused=True)``, the
  Hugging Face Trainer's default ``adamw_torch_fused``) updates parameters in place without
  moving their version counters.

The hooks behind the last two are torch's global module-registration and optimizer-step
hooks; the first adapter built installs them (importing the library installs nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor, nn, optim
from torch.optim.optimizer import register_optimizer_step_post_hook

T = TypeVar("T")

_EPOCH = [0]  # bumped when a parameter or submodule is registered on a watched module
_STEPS = [0]  # optimizer steps taken in this process (any optimizer) since the hooks
_WATCHED = "_smore_gnn_watched"  # marks the modules whose parameters the caches read
_HOOKS: list = []  # the installed hook handles (none until the first watch())


def watch(module: nn.Module) -> None:
    """Mark ``module`` and its submodules: registering a parameter or a submodule on any of
    them (a replacement) then invalidates the caches (SMoRELinear and SMoRERouter call this
    when built). The first call installs the process-wide hooks."""
    install_hooks()
    for m in module.modules():
        m.__dict__[_WATCHED] = True  # a plain attribute; copied by deepcopy and pickle


def install_hooks() -> None:
    """Install the registration and optimizer-step hooks once per process. A cache used
    before any :func:`watch` (a module unpickled in a fresh process) starts a new epoch."""
    if not _HOOKS:
        _HOOKS.append(nn.modules.module.register_module_parameter_registration_hook(_registered))
        _HOOKS.append(nn.modules.module.register_module_module_registration_hook(_registered))
        _HOOKS.append(register_optimizer_step_post_hook(_stepped))
        _EPOCH[0] += 1


def cached(
    cache: dict,
    name: str,
    owner: T,
    gather: Callable[[T], Sequence[Tensor]],
    build: Callable[[T], object],
):
    """``build(owner)``, kept in ``cache[name]`` until one of the tensors it reads
    (``gather(owner)``) is replaced or changed in place, or an optimizer steps.

    A change in place moves the tensor's version counter; ``.to()`` swaps its storage; a
    replacement (``module.weight = ...``, ``load_state_dict(assign=True)``, a new submodule)
    registers a parameter or module on a :func:`watch`-ed module, which bumps a process-wide
    epoch, and only then are the tensors gathered again and compared by identity. So a decode
    step checks version counters and storage pointers only (``gather`` walks the modules).
    Built under ``torch.no_grad`` outside inference mode: a plain tensor, no graph.
    """
    install_hooks()
    hit, epoch = cache.get(name), _EPOCH[0]
    if hit is not None and hit[0] == epoch:
        tensors = hit[1]
    else:
        tensors = tuple(gather(owner))
        same = hit is not None and len(hit[1]) == len(tensors)
        if same and all(a is b for a, b in zip(hit[1], tensors)):  # same tensors, new epoch
            hit = cache[name] = (epoch, tensors, *hit[2:])
    versions = [t._version for t in tensors] + [optimizer_steps()]  # fused steps: no _version
    pointers = [t.data_ptr() for t in tensors]
    if hit is None or hit[0] != epoch or hit[2] != versions or hit[3] != pointers:
        with torch.inference_mode(False), torch.no_grad():  # plain tensors, no graph
            hit = cache[name] = (epoch, tensors, versions, pointers, build(owner))
    return hit[4]


def optimizer_steps() -> int:
    """Optimizer steps taken in this process since the hooks were installed."""
    return _STEPS[0]


def _stepped(optimizer: optim.Optimizer, args: tuple, kwargs: dict) -> None:
    _STEPS[0] += 1


def _registered(module: nn.Module, name: str, value: object) -> None:
    # returns None: the registered object is kept as it is. Containers made on the fly (HF
    # slices its ModuleList of blocks every forward) are not watched and bump nothing.
    if module.__dict__.get(_WATCHED):
        _EPOCH[0] += 1
        if isinstance(value, nn.Module):
            watch(value)

"""Data-parallel and sharded training (DDP, FSDP2, DeepSpeed) of an ``SMoREModel``.

Under the Hugging Face ``Trainer`` and accelerate, three things of an adapter need help when
the model is split over ranks (docs/distributed.md):

* routing statistics: each rank routes only its shard of the batch, so the per-expert loads
  are summed over ranks (one ``all_reduce``) before the load share and entropy are computed
  (:func:`global_routing_statistics`); rank 0 then logs the whole batch's statistics;
* saving: under FSDP the adapter's parameters are ``DTensor`` shards; the ``Trainer`` gathers
  the full state dict (``FULL_STATE_DICT``) on rank 0 and the adapter tensors are taken from
  it (:func:`adapter_tensors_from_state_dict`);
* loading a checkpoint into a sharded model: the saved full tensors are scattered into the
  shards with torch's ``set_model_state_dict`` (:func:`load_adapter_sharded`).

:func:`check_same_adapters` refuses ranks whose adapters were initialised differently (FSDP2
would shard each rank's own initialisation); :func:`warn_if_sharding_ignored` catches
accelerate's silent fallback from FSDP to DDP on CPU-only machines.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from smore_gnn.hf import adapters as io
from smore_gnn.hf.atomic import atomic_folder
from smore_gnn.hf.model import SMoREModel
from smore_gnn.hf.save import adapter_parameters
from smore_gnn.nn.layer import SMoRELinear

# SMoREModel keeps the base model as ``self.model``: its state-dict keys carry this prefix.


def is_distributed() -> bool:
    """Whether a default process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _collective_device() -> torch.device:
    """Where the default process group reduces: the CPU when it has gloo or MPI (accelerate
    pairs NCCL with gloo, ``"cuda:nccl,cpu:gloo"``, for FSDP full state dicts), else the
    current accelerator (NCCL reduces device tensors only; the model may still be on the CPU
    when the ``Trainer`` is built)."""
    backend = str(dist.get_backend())
    if "gloo" in backend or "mpi" in backend:
        return torch.device("cpu")
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is not None and accelerator.is_available():
        kind = accelerator.current_accelerator().type
        return torch.device(kind, accelerator.current_device_index())
    return torch.device("cuda", torch.cuda.current_device())


def summed_loads(layers: dict[str, SMoRELinear]) -> dict[str, list[Tensor]]:
    """Each adapter's per-layer expert loads of the last forward, summed over all ranks.

    Every rank must call it (one ``all_reduce`` of all loads at once). A module without a
    routing on this rank (no forward yet) contributes zeros, so the ranks always reduce
    tensors of the same size.

    Returns:
        ``{name: [[s_l] float64 picks per layer]}`` on the CPU, the same on every rank.
    """
    sizes = [(name, list(layer.config.num_experts)) for name, layer in layers.items()]
    parts = []
    for name, num_experts in sizes:
        routing = layers[name].last_routing
        if routing is None:
            parts += [torch.zeros(s, dtype=torch.float64) for s in num_experts]
        else:
            parts += [t.detach().double().cpu() for t in routing.load]
    flat = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)  # [sum s_l]
    if is_distributed():
        flat = flat.to(_collective_device())
        dist.all_reduce(flat)
        flat = flat.cpu()
    out, start = {}, 0
    for name, num_experts in sizes:
        out[name] = []
        for s in num_experts:
            out[name].append(flat[start : start + s])
            start += s
    return out


def global_routing_statistics(model: SMoREModel) -> dict[str, Any]:
    """``model.routing_stats()`` of the whole data-parallel batch (all ranks' tokens).

    Load share, entropy, ``max_load_share`` and collapse come from the loads summed over ranks
    (:func:`summed_loads`), so they equal the single-process statistics of the concatenated
    batch. Without a process group (or with one rank) this is ``model.routing_stats()``.
    Every rank must call it.
    """
    if not is_distributed():
        return model.routing_stats()
    return model.routing_stats(loads=summed_loads(model.adapters()))


def check_same_adapters(model: SMoREModel) -> None:
    """Raise unless every rank holds the same adapter weights (every rank must call it).

    FSDP2 keeps each rank's own shard of the weights it was given (accelerate broadcasts rank
    0's only with ``fsdp_cpu_ram_efficient_loading``), so adapters initialised with different
    seeds would be stitched together from different initialisations; DDP would silently take
    rank 0's. Compares a sum and a sum of squares per tensor, gathered from all ranks.

    Raises:
        ValueError: the adapters differ; seed (``torch.manual_seed``) before
            ``get_smore_model`` on every rank.
    """
    if not is_distributed() or is_sharded(model):  # sharded already: checked when prepared
        return
    layers = model.adapters()
    params = list(adapter_parameters(layers).values())
    if not params:
        return
    device = _collective_device()
    local = torch.stack(
        [
            torch.stack([p.detach().double().sum(), p.detach().double().square().sum()])
            for p in params
        ]
    ).to(device)  # [tensors, 2]
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    differ = [r for r, other in enumerate(gathered) if not torch.equal(other, gathered[0])]
    if differ:
        raise ValueError(
            f"The adapter weights of ranks {differ} differ from rank 0's; initialise them alike "
            "on every rank: call torch.manual_seed(seed) before get_smore_model"
        )


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a ``DTensor`` (FSDP2 ``fully_shard``)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.4 (no public DTensor): no FSDP2 either
        return False

    return any(isinstance(p, DTensor) for p in model.parameters())


def adapter_tensors_from_state_dict(
    model: SMoREModel, state_dict: dict[str, Tensor]
) -> dict[str, Tensor]:
    """The active adapter's tensors, as saved, taken from a full state dict of ``model``.

    ``state_dict`` is what the ``Trainer`` gathers for saving under FSDP (``FULL_STATE_DICT``)
    or DeepSpeed: full tensors keyed by ``model``'s own parameter names.

    Raises:
        ValueError: an adapter tensor is missing (e.g. a sharded state dict was passed).
    """
    out = {}
    for key, name in model_keys(model).items():
        tensor = state_dict.get(name)
        if tensor is None:
            raise ValueError(
                f"state_dict has no tensor {name!r} of the adapter; pass the full "
                "state dict (FSDP: fsdp_state_dict_type FULL_STATE_DICT)"
            )
        out[key] = tensor.detach().cpu().contiguous()
    return out


def model_keys(model: SMoREModel) -> dict[str, str]:
    """``{key in the adapter folder: parameter name in model}`` of the active adapter.

    Matched by identity, so the folder's ``<module>.<param>`` keys map to wherever the layer
    holds the parameter (``...up_proj.adapters.<name>.<param>``), under any wrapper.
    """
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    return {k: names[id(p)] for k, p in adapter_parameters(model.adapters()).items()}


def save_adapter_from_state_dict(
    model: SMoREModel,
    directory: str | Path,
    state_dict: dict[str, Tensor],
    base_model_name: str | None = None,
) -> None:
    """Write the active adapter folder from a gathered full ``state_dict`` (rank 0 only)."""
    from smore_gnn._version import __version__
    from smore_gnn.hf.save import write_adapter

    spec = model.peft_config[model.active_adapter]
    config = getattr(model.model, "config", None)
    base = base_model_name or getattr(config, "name_or_path", None) or None
    tensors = adapter_tensors_from_state_dict(model, state_dict)
    write_adapter(directory, spec.to_meta(base, __version__), tensors)


def full_state_dict(trainer: Any) -> dict[str, Tensor] | None:
    """The full state dict of ``trainer``'s sharded model (FSDP, DeepSpeed), else ``None``.

    Every rank must call it (the shards are gathered); under FSDP only rank 0 receives the
    tensors, which is where an adapter folder is written from them
    (:func:`save_adapter_gathered`). An unsharded model (one process, DDP) holds its own
    tensors: ``None``, nothing gathered.
    """
    if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        return None
    return trainer.accelerator.get_state_dict(trainer.model)


def save_adapter_gathered(
    model: nn.Module, directory: str | Path, state_dict: dict[str, Tensor]
) -> None:
    """Write the adapter folder of ``model`` (any method) from its gathered full state dict."""
    if isinstance(model, SMoREModel):
        save_adapter_from_state_dict(model, directory, state_dict)
        return
    # A peft model (LoRA) picks its adapter's tensors out of the full state dict itself.
    atomic_folder(directory, lambda tmp: model.save_pretrained(str(tmp), state_dict=state_dict))


def load_adapter_sharded(model: SMoREModel, directory: str | Path) -> None:
    """Load a saved adapter into the active adapter of a sharded (FSDP2) ``model``.

    Every rank reads the folder (validated completely first, as ``load_adapter`` does) and
    keeps its shard of each tensor. The adapter stays trainable.

    Raises:
        ValueError: the folder's adapter differs from the active one (config or modules).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    spec, tensors = io.read_folder(model.model, directory, io.ADAPTER_METHODS)
    mine = model.peft_config[model.active_adapter]
    if (mine.config, sorted(mine.names)) != (spec.config, sorted(spec.names)):
        raise ValueError(
            f"The adapter in {directory} has config {spec.config} on {len(spec.names)} "
            f"modules; the active adapter has {mine.config} on {len(mine.names)}"
        )
    names = model_keys(model)
    full = {names[k]: t for k, t in tensors.items()}
    options = StateDictOptions(full_state_dict=True, strict=False)
    result = set_model_state_dict(model, full, options=options)
    missing = set(full) & set(result.missing_keys)
    if missing:  # strict=False only for the frozen base, absent from the adapter folder
        raise ValueError(f"The adapter tensors {sorted(missing)} did not load into the model")


def warn_if_sharding_ignored(accelerator: Any) -> None:
    """Warn when ``accelerate launch`` asked for FSDP but the processes run without it.

    accelerate turns a CPU-only multi-process run into plain DDP (``MULTI_CPU``) and ignores
    the FSDP plugin: training is then correct but nothing is sharded.
    """
    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked and getattr(accelerator.state, "fsdp_plugin", None) is None:
        warnings.warn(
            f"accelerate was launched with FSDP but runs as {accelerator.distributed_type} "
            "(FSDP needs an accelerator device; CPU processes fall back to DDP): the model is "
            "replicated on every rank, not sharded",
            stacklevel=2,
        )

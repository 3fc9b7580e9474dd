"""Collect the routed sub-trees of held-out tokens from a model, padding left out.

:func:`collect_routings` runs the model on a few batches without gradients and keeps, for
every adapted module, the routing of the valid tokens (``attention_mask == 1``) in batch
order, together with each token's sequence and task. The model's train/eval modes and the
adapters' ``last_routing`` are restored afterwards (their ``balance_loss`` is that of the last
measured batch until the next forward).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from smore_gnn.nn.layer import SMoRELinear
from smore_gnn.nn.tree import RoutingTree


@dataclass(frozen=True)
class CollectedRouting:
    """Routings of ``N`` valid tokens, per adapted module.

    Attributes:
        trees: ``{module name: RoutingTree}`` of the valid tokens, in batch order.
        num_experts: ``{module name: [s_0, ..., s_{L-1}]}``.
        sequence: ``[N]`` long, the sequence (in batch order) each token comes from.
        sequence_tasks: one task per sequence, or ``None``.
    """

    trees: dict[str, RoutingTree]
    num_experts: dict[str, list[int]]
    sequence: Tensor
    sequence_tasks: list[str] | None

    @property
    def num_tokens(self) -> int:
        return int(self.sequence.numel())

    @property
    def token_tasks(self) -> list[str] | None:
        """Each valid token's task: its sequence's task spread to its tokens."""
        if self.sequence_tasks is None:
            return None
        return [self.sequence_tasks[i] for i in self.sequence.tolist()]


def adapters_of(model: nn.Module, required: bool = True) -> dict[str, SMoRELinear]:
    """The active adapters of ``model``: ``{module name: SMoRELinear}``.

    ``model.adapters()`` when the model offers it (an ``SMoREModel``). Otherwise every
    ``SMoRELinear`` inside, except that a slot holding named adapters (a module with an
    ``adapters`` ModuleDict and an ``active_adapter``, as ``smore_gnn.hf.layer.AdaptedLinear``)
    gives its active one under the slot's name, its inactive ones not at all.

    Raises:
        ValueError: no adapter, unless ``required`` is ``False`` (then ``{}``).
    """
    if callable(getattr(model, "adapters", None)):
        layers = dict(model.adapters())
    else:
        layers, slots = {}, []
        for name, module in model.named_modules():
            if any(name.startswith(s) for s in slots):
                continue
            held = getattr(module, "adapters", None)
            if isinstance(held, nn.ModuleDict) and hasattr(module, "active_adapter"):
                slots.append(name + ".")
                active = module.active_adapter
                if active in held and isinstance(held[active], SMoRELinear):
                    layers[name] = held[active]
            elif isinstance(module, SMoRELinear):
                layers[name] = module
    if not layers and required:
        raise ValueError(
            f"{type(model).__name__} has no S'MoRE adapters; wrap it with "
            "smore_gnn.hf.model.get_smore_model(model, config) first"
        )
    return layers


def _batch_mask(batch: Mapping[str, Any], index: int) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise TypeError(
            f"batch {index} must be a dict with 'input_ids' and 'attention_mask' "
            f"(got {type(batch).__name__})"
        )
    ids = torch.as_tensor(batch["input_ids"])
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask)
    if ids.dim() != 2 or mask.shape != ids.shape:
        raise ValueError(
            f"batch {index}: input_ids and attention_mask must both be [batch, seq] "
            f"(got {tuple(ids.shape)} and {tuple(mask.shape)})"
        )
    return ids, mask


def _concat(parts: list[list[Tensor]]) -> list[Tensor]:
    return [torch.cat(layer) for layer in zip(*parts)]  # per layer [N, F_l]


@torch.no_grad()
def collect_routings(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    tasks: Sequence[str] | None = None,
) -> CollectedRouting:
    """Run ``model`` on ``batches`` and keep every adapter's routing of the valid tokens.

    Args:
        model: an ``SMoREModel`` (anything with ``.adapters()``) or a module holding
            ``SMoRELinear`` layers; called as ``model(input_ids=..., attention_mask=...)``.
        batches: dicts with ``input_ids`` ``[B, T]`` and ``attention_mask`` ``[B, T]``
            (0 = padding, left out); other keys are ignored.
        tasks: one task per sequence, in batch order, or ``None``.

    Returns:
        A :class:`CollectedRouting`.

    Raises:
        ValueError: no adapters, malformed batches, an adapter called more than once per
            forward, or a number of ``tasks`` different from the number of sequences.
    """
    layers = adapters_of(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    modes = {m: m.training for m in model.modules()}
    saved = {n: m.last_routing for n, m in layers.items()}
    parts: dict[str, list[list[Tensor]]] = {n: [] for n in layers}
    scores: dict[str, list[list[Tensor]]] = {n: [] for n in layers}
    sequences, calls, offset = [], dict.fromkeys(layers, 0), 0
    current: dict[str, Tensor] = {}

    def hook(name: str):
        def keep(module: SMoRELinear, args: Any, output: Any) -> None:
            routing, valid = module.last_routing, current["valid"]
            if routing is None and valid.numel() == 0:
                return  # an empty batch routes nothing
            routed = 0 if routing is None else routing.num_tokens
            if routed != valid.numel():
                raise ValueError(
                    f"adapter {name!r} routed {routed} tokens for a batch of "
                    f"{valid.numel()} positions; only adapters applied once per position "
                    "to [batch, seq, d] inputs can be measured"
                )
            calls[name] += 1
            parts[name].append([e[valid].to(torch.int32).cpu() for e in routing.experts])
            scores[name].append([s[valid].float().cpu() for s in routing.scores])

        return keep

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        model.eval()
        for index, batch in enumerate(batches):
            ids, mask = _batch_mask(batch, index)
            valid = mask.reshape(-1).bool()  # [B * T]
            current["valid"] = valid.to(device)
            rows = torch.arange(ids.size(0)).repeat_interleave(ids.size(1))  # [B * T]
            sequences.append(rows[valid] + offset)
            offset += ids.size(0)
            before = dict(calls)
            model(input_ids=ids.to(device), attention_mask=mask.to(device))
            twice = [n for n in layers if calls[n] - before[n] > 1]
            if twice:
                raise ValueError(
                    f"adapters {twice[:3]} were applied more than once per forward; their "
                    "routings cannot be matched to tokens"
                )
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
        for name, routing in saved.items():
            layers[name].last_routing = routing
    if tasks is not None:
        tasks = [str(t) for t in tasks]
        if len(tasks) != offset:
            raise ValueError(
                f"tasks must give one task per sequence: {offset} sequences in the batches "
                f"but {len(tasks)} tasks"
            )
    if offset == 0 or not any(parts.values()):
        raise ValueError("batches held no sequences; pass at least one batch")
    trees = {}
    for name, layer in layers.items():
        if not parts[name]:
            raise ValueError(f"adapter {name!r} was not called by the model's forward")
        trees[name] = RoutingTree(
            _concat(parts[name]), _concat(scores[name]), list(layer.config.fanout)
        )
    return CollectedRouting(
        trees=trees,
        num_experts={n: list(m.config.num_experts) for n, m in layers.items()},
        sequence=torch.cat(sequences),
        sequence_tasks=tasks,
    )


def text_batches(
    tokenizer: Any, texts: Sequence[str], batch_size: int = 8, max_length: int = 256
) -> list[dict[str, Tensor]]:
    """Tokenize ``texts`` into padded batches for :func:`collect_routings`.

    Args:
        tokenizer: a Hugging Face tokenizer (its pad token, or else eos, pads).
        texts: one text per sequence, e.g. ``smore_gnn.data.records.mc_prompt(record)``.
        batch_size: sequences per batch.
        max_length: longer texts are truncated.

    Returns:
        ``[{"input_ids", "attention_mask"}]``, ``[B, T]`` long tensors each.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad nor an eos token; set pad_token")
        tokenizer.pad_token = tokenizer.eos_token
    batches = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        enc = tokenizer(
            chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return batches


def token_texts(tokenizer: Any, batches: Iterable[Mapping[str, Any]]) -> list[str]:
    """Each valid token's text, in the order :func:`collect_routings` keeps the tokens."""
    texts = []
    for index, batch in enumerate(batches):
        ids, mask = _batch_mask(batch, index)
        texts += [tokenizer.decode([int(i)]) for i in ids[mask.bool()].tolist()]
    return texts

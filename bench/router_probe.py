"""Measurements of ``bench/router_study.py``: the validation split, logit statistics and
gradient norms of S'MoRE's routers."""

from __future__ import annotations

import math
import random
from typing import Any


def validation_split(n_train: int, n_val: int, seed: int) -> tuple[list[dict], list[dict]]:
    """``(train, val)`` from the bundled multi-task *train* split, grouped by ``key``.

    Keys are shuffled with ``seed``; whole keys go to validation until it holds ``n_val``
    records, then to train until ``n_train``. No key is in both.
    """
    from smore_gnn.data import load_bundled

    records = load_bundled("multitask", "train")
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(f"{r['task']}:{r.get('key', r['question'])}", []).append(r)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    train: list[dict] = []
    val: list[dict] = []
    for key in keys:
        target = val if len(val) < n_val else train
        if target is train and len(train) >= n_train:
            break
        target.extend(groups[key])
    return train[:n_train], val[:n_val]


def grad_norm(grads: list) -> float:
    """L2 norm of a list of gradients (``None`` entries count as 0)."""
    return math.sqrt(sum(float(g.detach().float().pow(2).sum()) for g in grads if g is not None))


def logit_stats(model: Any, batch: dict) -> list[dict[str, float]]:
    """Per expert layer (bottom first), over every adapter's router, on one no-grad forward:
    mean std of the logits over experts (``logit_std``), mean std over tokens of the centred
    logits (``logit_token_std``: the part of the routing that depends on the token), mean
    |logit| and mean largest softmax probability."""
    import torch

    from smore_gnn.nn.router import LayerRouter, SMoRERouter

    calls, captured, hooks = [], {}, []  # (router, args, kwargs); layer -> [(router, h)]
    for module in model.modules():
        if isinstance(module, SMoRERouter):
            hooks.append(
                module.register_forward_pre_hook(
                    lambda mod, args, kwargs: calls.append((mod, args, kwargs)), with_kwargs=True
                )
            )
            for l, layer in enumerate(module.layers):
                hooks.append(
                    layer.register_forward_pre_hook(
                        lambda mod, args, l=l: captured.setdefault(l, []).append((mod, args[0]))
                    )
                )
    was = model.training
    model.eval()
    try:
        with torch.no_grad():  # the fast forward never calls the layer routers: route every
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            for router, args, kwargs in calls:  # captured input again by the reference
                router.route_reference(*args, **kwargs)
            out = []
            for l in sorted(captured):
                stds, absl, pmax, tok = [], [], [], []
                for mod, h in captured[l]:
                    assert isinstance(mod, LayerRouter)
                    logits = mod.logits(h)  # [E, s]
                    centred = logits - logits.mean(-1, keepdim=True)  # [E, s]
                    stds.append(float(logits.std(-1).mean()))
                    tok.append(float(centred.std(0).mean()))  # token-dependent part
                    absl.append(float(logits.abs().mean()))
                    pmax.append(float(logits.softmax(-1).max(-1).values.mean()))
                out.append(
                    {
                        "layer": l,
                        "logit_std": sum(stds) / len(stds),
                        "logit_token_std": sum(tok) / len(tok),
                        "logit_abs": sum(absl) / len(absl),
                        "max_prob": sum(pmax) / len(pmax),
                    }
                )
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return out

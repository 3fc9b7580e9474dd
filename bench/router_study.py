"""Why S'MoRE's router stays flat, and which router-learning knob fixes it (issue 10 item 3).

Every run fine-tunes SmolLM2-135M-Instruct with S'MoRE (the paper's (4-4) with the switch
gate: the demo's settings before it adopted this study's options) on a small slice of the
bundled multi-task train split, with one knob changed, and measures

* routing health (:func:`smore_gnn.analysis.routing_health`) before and after training on the
  prompts of a *validation* split carved out of train (grouped by headword: no key is in both;
  the test split is never read),
* validation accuracy (:func:`smore_gnn.train.evaluation.evaluate_mc`, choice text scored),
* gradient diagnostics at a few steps: the router's and the experts' gradient norms, the
  router gradient split into its language-model and balance-loss parts, the spread of the
  gate scores on the training batch,
* the logits' size at init and after training (per expert layer: std over experts, largest
  softmax probability).

Each run is a subprocess writing ``bench/results/router_study/<name>.json``; a run whose file
exists is skipped, so the study resumes where it stopped. Several drivers may run at once
(e.g. one with ``--only`` in another order): a run another live driver is running is skipped.

    .venv/bin/python -m bench.router_study                 # every missing run, in order
    .venv/bin/python -m bench.router_study --only rlr10    # some runs
    .venv/bin/python -m bench.router_study --report        # the table of finished runs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR
from bench.router_probe import grad_norm, logit_stats, validation_split

ROOT = Path(__file__).resolve().parents[1]
OUT = RESULTS_DIR / "router_study"
SETTINGS = {
    "n_train": 160,
    "n_val": 80,
    "batch_size": 8,
    "lr": 1e-3,
    "warmup": 0.1,
    "max_length": 64,
    "seed": 0,
    "diag_steps": [0, 5, 19],
}
#: name -> knobs. ``smore``: SMoREConfig overrides of :func:`study_config`; ``router_lr_scale``;
#: ``balance_reduce`` "sum" (as SMoREModel.balance_loss) or "mean" over adapted modules;
#: ``balance_warmup``: fraction of the steps over which the balance loss ramps up from 0;
#: ``clip``: gradient-norm clipping as HF Trainer's ``max_grad_norm`` (default: none);
#: ``settings``: overrides of :data:`SETTINGS` (the ``long_*`` runs train as long as the demo).
RUNS: dict[str, dict[str, Any]] = {
    "base": {"eval_only": True},
    "baseline": {},
    "input_norm": {"smore": {"router_input_norm": True}},
    "scale10": {"smore": {"logit_scale": 10.0}},
    "rlr10": {"router_lr_scale": 10.0},
    "init_normal": {"smore": {"init_method": "normal"}},
    "bal_mean": {"balance_reduce": "mean"},
    "no_balance": {"smore": {"balance_loss_weight": 0.0}},
    "zloss": {"smore": {"z_loss_weight": 1e-3}},
    "bal_warmup": {"balance_warmup": 0.5},
    "rlr3": {"router_lr_scale": 3.0},
    "scale_learn": {"smore": {"learn_logit_scale": True}},
    "norm_scale10": {"smore": {"router_input_norm": True, "logit_scale": 10.0}},
    "norm_scale10_learn": {
        "smore": {"router_input_norm": True, "logit_scale": 10.0, "learn_logit_scale": True}
    },
    "norm_scale10_rlr10": {
        "smore": {"router_input_norm": True, "logit_scale": 10.0},
        "router_lr_scale": 10.0,
    },
    # the demo's length (640 questions, 80 steps): does the busiest expert's share stay <= 0.70?
    "long_norm_scale10": {
        "smore": {"router_input_norm": True, "logit_scale": 10.0},
        "settings": {"n_train": 640, "diag_steps": [0, 20, 79]},
    },
    "long_norm_scale10_bal5": {
        "smore": {"router_input_norm": True, "logit_scale": 10.0, "balance_loss_weight": 0.05},
        "settings": {"n_train": 640, "diag_steps": [0, 20, 79]},
    },
    # HF Trainer's default max_grad_norm=1.0 (the demo and bench.quality train with it)
    "long_norm_scale10_clip1": {
        "smore": {"router_input_norm": True, "logit_scale": 10.0},
        "clip": 1.0,
        "settings": {"n_train": 640, "diag_steps": [0, 20, 79]},
    },
}


def run_settings(name: str) -> dict[str, Any]:
    """:data:`SETTINGS` with the run's own overrides."""
    return {**SETTINGS, **RUNS[name].get("settings", {})}


def study_config(**overrides: Any) -> Any:
    """The paper's S'MoRE (4-4) with the switch gate (``smore_paper_config``: the demo's
    settings when the study was run) plus ``overrides``; pinned here, not read from
    ``demo.yaml``, which has since adopted the study's options."""
    from smore_gnn.hf.methods import smore_paper_config

    return smore_paper_config(**overrides)


def run_one(name: str, knobs: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Train and measure one run in this process; the JSON-ready result."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    from smore_gnn.analysis import routing_health, text_batches
    from smore_gnn.analysis.health import last_forward_health
    from smore_gnn.data.records import SFTDataset, make_collator, mc_prompt
    from smore_gnn.hf.loading import load_model_and_tokenizer
    from smore_gnn.hf.methods import build_for_budget
    from smore_gnn.train.evaluation import evaluate_mc
    from smore_gnn.train.optim import is_router_parameter, param_groups

    torch.set_num_threads(1)
    start = time.time()
    train, val = validation_split(settings["n_train"], settings["n_val"], settings["seed"])
    base, tok = load_model_and_tokenizer("smollm2")
    result: dict[str, Any] = {"name": name, "knobs": knobs, "settings": settings}
    if knobs.get("eval_only"):
        result["val"] = evaluate_mc(base, tok, val, answer="text", batch_size=16)
        result["val"].pop("predictions")
        result["wall_s"] = round(time.time() - start, 1)
        return result
    cfg = study_config(**knobs.get("smore", {}))
    model, _ = build_for_budget("smore", base, cfg, seed=settings["seed"])
    val_batches = text_batches(tok, [mc_prompt(r) for r in val], batch_size=16)
    tasks = [r["task"] for r in val]
    result["health_init"] = routing_health(model, val_batches, tasks)["summary"]
    result["logits_init"] = logit_stats(model, val_batches[0])
    data = SFTDataset(train, tok, max_length=settings["max_length"], answer="text")
    gen = torch.Generator().manual_seed(settings["seed"])
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=settings["batch_size"],
        shuffle=True,
        collate_fn=make_collator(tok),
        generator=gen,
    )
    steps = len(loader)
    scale = float(knobs.get("router_lr_scale", 1.0))
    opt = torch.optim.AdamW(param_groups(model, settings["lr"], scale, 0.0))
    sched = get_cosine_schedule_with_warmup(opt, math.ceil(settings["warmup"] * steps), steps)
    router_params = [
        p for n, p in model.named_parameters() if p.requires_grad and is_router_parameter(n)
    ]
    other_params = [
        p for n, p in model.named_parameters() if p.requires_grad and not is_router_parameter(n)
    ]
    n_modules = len(model.adapters())
    reduce = 1.0 / n_modules if knobs.get("balance_reduce") == "mean" else 1.0
    warm = float(knobs.get("balance_warmup", 0.0)) * steps
    diag, log = [], []
    model.train()
    for step, batch in enumerate(loader):
        out = model(**batch)
        lm = out.loss
        coef = reduce * (min(1.0, (step + 1) / warm) if warm > 0 else 1.0)
        aux = model.balance_loss() * coef
        entry: dict[str, Any] = {"step": step, "lm_loss": lm.item(), "aux_loss": aux.item()}
        if step in settings["diag_steps"] or step == steps - 1:
            g_lm = torch.autograd.grad(lm, router_params, retain_graph=True, allow_unused=True)
            g_aux = []
            if aux.requires_grad:
                g_aux = torch.autograd.grad(
                    aux, router_params, retain_graph=True, allow_unused=True
                )
            entry["router_grad_lm"] = grad_norm(g_lm)
            entry["router_grad_balance"] = grad_norm(g_aux)
            mask = batch["attention_mask"]
            entry["train_median_spread"] = last_forward_health(model.adapters(), mask)["summary"][
                "median_spread"
            ]
        opt.zero_grad(set_to_none=True)
        (lm + aux).backward()
        if "router_grad_lm" in entry:
            entry["router_grad"] = grad_norm([p.grad for p in router_params])
            entry["expert_grad"] = grad_norm([p.grad for p in other_params])
            diag.append(entry)
        if "clip" in knobs:
            torch.nn.utils.clip_grad_norm_([*router_params, *other_params], knobs["clip"])
        opt.step()
        sched.step()
        log.append({k: round(v, 5) for k, v in entry.items() if k in ("lm_loss", "aux_loss")})
    model.eval()
    result["train_steps"], result["diagnostics"], result["loss_log"] = steps, diag, log
    result["health"] = routing_health(model, val_batches, tasks)["summary"]
    result["logits"] = logit_stats(model, val_batches[0])
    scales = [
        float(m.logit_scale.detach())
        for m in model.modules()
        if hasattr(m, "log_logit_scale") and m.log_logit_scale is not None
    ]
    if scales:
        result["learned_logit_scale"] = {
            "min": min(scales),
            "max": max(scales),
            "mean": sum(scales) / len(scales),
        }
    result["val"] = evaluate_mc(model, tok, val, answer="text", batch_size=16)
    result["val"].pop("predictions")
    result["wall_s"] = round(time.time() - start, 1)
    return result


def report(out_dir: Path = OUT) -> str:
    """Markdown tables of the finished runs: routing health at init -> after training on the
    validation prompts, validation accuracy, logits and router gradients."""
    rows = [
        "| run | knobs | val acc | median spread | max / median top share | task NMI "
        "(shuffled) | distinct structures |",
        "|---|---|---|---|---|---|---|",
    ]
    grads = [
        "| run | router grad: LM / balance (steps) | expert grad | train-batch spread "
        "| logit std over experts / token part (init -> after) |",
        "|---|---|---|---|---|",
    ]
    for name in RUNS:
        path = out_dir / f"{name}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        if r.get("settings") != run_settings(name):  # made with other settings: stale
            continue
        acc = f"{100 * r['val']['accuracy']:.1f}"
        if "health" not in r:
            rows.append(f"| {name} | (no adapter) | {acc} | | | | |")
            continue
        h0, h, d = r["health_init"], r["health"], r["diagnostics"]
        knobs = json.dumps(r["knobs"]).replace("|", "/")
        rows.append(
            f"| {name} | `{knobs}` | {acc} | {h0['median_spread']:.3f} -> "
            f"{h['median_spread']:.3f} | {h['max_top_share']:.3f} / {h['median_top_share']:.3f} "
            f"| {h['task_nmi']:.3f} ({h['task_nmi_shuffled']:.3f}) | "
            f"{h0['median_distinct_structures']:g} -> {h['median_distinct_structures']:g} |"
        )
        steps = ", ".join(
            f"{e['router_grad_lm']:.2g} / {e['router_grad_balance']:.2g} ({e['step']})" for e in d
        )
        expert = ", ".join(f"{e['expert_grad']:.2g}" for e in d)
        spread = ", ".join(f"{e['train_median_spread']:.3f}" for e in d)
        logits = "- (not captured)"  # runs made while the probe missed the no-autograd path
        if r["logits_init"] and r["logits"]:
            top0, top1 = r["logits_init"][-1], r["logits"][-1]
            logits = (
                f"{top0['logit_std']:.3f} / {top0.get('logit_token_std', float('nan')):.3f}"
                f" -> {top1['logit_std']:.3f} / {top1.get('logit_token_std', float('nan')):.3f}"
            )
        grads.append(f"| {name} | {steps} | {expert} | {spread} | {logits} |")
    note = (
        "Gradient norms over all routers (down-projections, MLPs, keys) and over all other "
        "adapter parameters at the diagnostic steps; logits of the top layer's routers:"
    )
    return "\n".join([*rows, "", note, "", *grads])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", default=None, help="run names (default: all)")
    parser.add_argument("--run", default=None, help="(internal) run one in this process")
    parser.add_argument("--report", action="store_true", help="print the table and exit")
    parser.add_argument("--smoke", default=None, help="(check) --run at 16 questions into DIR")
    args = parser.parse_args(argv)
    if args.smoke:
        tiny = {**run_settings(args.run), "n_train": 16, "n_val": 16, "diag_steps": [0]}
        result = run_one(args.run, RUNS[args.run], tiny)
        Path(args.smoke).mkdir(parents=True, exist_ok=True)
        (Path(args.smoke) / f"{args.run}.json").write_text(json.dumps(result, indent=1))
        print(json.dumps({k: result[k] for k in ("health", "val", "wall_s") if k in result}))
        return
    if args.report:
        print(report())
        return
    OUT.mkdir(parents=True, exist_ok=True)
    if args.run:
        result = run_one(args.run, RUNS[args.run], run_settings(args.run))
        tmp = OUT / f".{args.run}.json.tmp"
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(OUT / f"{args.run}.json")  # only finished runs appear
        return
    unknown = sorted(set(args.only or []) - set(RUNS))
    if unknown:
        parser.error(f"unknown runs {unknown}; known: {list(RUNS)}")
    for name in args.only or RUNS:
        if _done(name) or _running(name):
            print(f"{name}: done or running, skipped", flush=True)
            continue
        marker = OUT / f".{name}.running"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        start = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.router_study", "--run", name],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        marker.write_text(str(proc.pid))
        _, err = proc.communicate()
        marker.unlink(missing_ok=True)
        status = "ok" if proc.returncode == 0 else f"FAILED: {err[-2000:]}"
        print(f"{name}: {status} ({time.time() - start:.0f} s)", flush=True)


def _done(name: str) -> bool:
    """Whether ``name`` finished with its current settings (else it is run again)."""
    path = OUT / f"{name}.json"
    return path.exists() and json.loads(path.read_text()).get("settings") == run_settings(name)


def _running(name: str) -> bool:
    """Whether another driver runs ``name`` now (its marker names a live process)."""
    marker = OUT / f".{name}.running"
    try:
        os.kill(int(marker.read_text()), 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


if __name__ == "__main__":
    main()

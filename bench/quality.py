"""Powered fine-tuning comparison: base, LoRA (peft), MoLRE, S'MoRE at equal trainable budgets.

Two budget levels, both on ``gate_proj``/``up_proj``/``down_proj`` of every block of
SmolLM2-135M-Instruct (134.5 M parameters):

* ``paper``: the paper's S'MoRE (4-4), r = 8 (the demo config), 15.86 M parameters (11.8 %);
* ``small``: the smallest (4-4) tree on those targets, r = 1 with router and down-projection
  width 8, 2.33 M parameters (1.7 %; ``W_proj`` alone keeps (4-4) above 1 % on all three).

LoRA (peft) and MoLRE get the rank whose size is closest to S'MoRE's at each level
(:func:`smore_gnn.hf.methods.build_for_budget`). Each method trains with the library's
``SMoRETrainer`` (LM loss + balance loss, router parameters at ``lr * ROUTER_LR_SCALE``) on
``n_train`` questions drawn with the seed (so S'MoRE and LoRA of one seed see the same
data in the same order: the S'MoRE - LoRA difference is paired by seed), then is scored on
the same fixed test questions (choice text,
:func:`smore_gnn.train.evaluation.evaluate_mc`; multi-task: stratified by task, per-task
accuracy kept). Datasets: the bundled multi-task set and the
bundled WordNet set. Never tuned on these test splits (settings come from
``bench/router_study.py``, which uses a validation split carved out of train).

Every run is a subprocess writing ``bench/results/quality[_quick]/<run>.json``; finished runs
made with the current settings are skipped, so the study resumes where it stopped (a run
made with other settings, e.g. before a router default changed, is run again).

    .venv/bin/python -m bench.quality                    # full: hours on 2 shared cores
    .venv/bin/python -m bench.quality --quick            # 1 seed, multi-task, small budget
    .venv/bin/python -m bench.quality --report [--quick] # Markdown table for BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, machine_info
from bench.quality_report import report, summarise

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("lora", "molre", "smore")
#: router lr = lr * this for the methods with a router (bench/router_study.py: x10 raised
#: task NMI but neither the score spread nor the busiest-expert share)
ROUTER_LR_SCALE = 1.0
#: SMoREConfig overrides of every S'MoRE run (bench/router_study.py: RMS-normalised router
#: input and logits x 10 lift the score spread from 0.01 to 0.55 and the busiest top-layer
#: expert's share from 0.97 to 0.72; MoLRE keeps its registry config)
ROUTER_OPTIONS: dict[str, Any] = {"router_input_norm": True, "logit_scale": 10.0}
BUDGETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "small": {"rank": [1, 1], "router_dim": 8, "down_proj_dim": 8},
}
#: MoLRE's router at each budget (its registry default, width 32, is 4.4 M parameters at
#: rank 1: twice the small budget), as narrow as S'MoRE's there
MOLRE_OPTIONS: dict[str, dict[str, Any]] = {
    "paper": {},
    "small": {"router_dim": 8, "down_proj_dim": 8},
}
FULL = {
    "seeds": [0, 1, 2],
    "datasets": ["multitask", "wordnet"],
    "budgets": ["small", "paper"],
    "n_train": 640,
    "n_test": {"multitask": 700, "wordnet": 500},
    "lr": 1e-3,
    "warmup": 0.1,
    "batch_size": 8,
    "max_length": 64,
}
QUICK = {
    **FULL,
    "seeds": [0],
    "datasets": ["multitask"],
    "budgets": ["small"],
    "n_train": 160,
    "n_test": {"multitask": 140},
}


def settings_for(quick: bool) -> dict[str, Any]:
    """The settings of the full study or of ``--quick``, with the router settings."""
    return {
        **(QUICK if quick else FULL),
        "quick": quick,
        "router_lr_scale": ROUTER_LR_SCALE,
        "router_options": ROUTER_OPTIONS,
    }


def run_config(settings: dict[str, Any], data: str, method: str, budget: str | None) -> dict:
    """What a finished run must have been run with to count under ``settings``."""
    keys = (
        "n_train",
        "lr",
        "warmup",
        "batch_size",
        "max_length",
        "router_lr_scale",
        "router_options",
    )
    out = {**{k: settings[k] for k in keys}, "n_test": settings["n_test"][data]}
    if method == "molre":
        out["molre_options"] = MOLRE_OPTIONS[budget]
    return out


def is_done(path: Path, settings: dict[str, Any]) -> bool:
    """Whether ``path`` holds a finished run made with the current ``settings``."""
    if not path.exists():
        return False
    run = json.loads(path.read_text())
    return run.get("config") == run_config(settings, run["dataset"], run["method"], run["budget"])


def results_dir(quick: bool) -> Path:
    return RESULTS_DIR / ("quality_quick" if quick else "quality")


def run_ids(settings: dict[str, Any]) -> list[str]:
    """Run names, cell by cell (dataset, then budget; seeds inside) so that a partial study
    holds whole cells with standard errors and paired differences: ``base-<data>`` and
    ``<data>-<budget>-<method>-s<seed>``."""
    ids = [f"base-{d}" for d in settings["datasets"]]
    for data in settings["datasets"]:
        for budget in settings["budgets"]:
            for seed in settings["seeds"]:
                ids += [f"{data}-{budget}-{m}-s{seed}" for m in ("smore", "lora", "molre")]
    return ids


def load_data(name: str, n_train: int, n_test: int, seed: int) -> tuple[list, list]:
    """``(train, test)``: ``n_train`` train records drawn with ``seed``; the first ``n_test``
    test records of a fixed shuffle, stratified by task (the same for every run)."""
    from smore_gnn.data import load_bundled

    train, test = load_bundled(name, "train"), load_bundled(name, "test")
    train = random.Random(seed).sample(train, min(n_train, len(train)))
    by_task: dict[str, list] = {}
    for r in random.Random(0).sample(test, len(test)):
        by_task.setdefault(str(r.get("task", "all")), []).append(r)
    per_task = max(1, n_test // len(by_task))
    picked = [r for rows in by_task.values() for r in rows[:per_task]]
    return train, picked[:n_test]


def run_one(run_id: str, settings: dict[str, Any], work_dir: Path) -> dict[str, Any]:
    """One run in this process: train (unless base) and score; the JSON-ready result."""
    import torch

    from smore_gnn.hf.loading import load_model_and_tokenizer
    from smore_gnn.hf.methods import (
        build_for_budget,
        get_method,
        molre_config,
        smore_paper_config,
        trainable_parameters,
    )
    from smore_gnn.train.evaluation import evaluate_mc
    from smore_gnn.train.trainer import build_trainer, training_arguments

    torch.set_num_threads(1)
    start = time.time()
    if run_id.startswith("base-"):
        data, budget, method, seed = run_id[5:], None, "base", 0
    else:
        data, budget, method, seed_text = run_id.split("-")
        seed = int(seed_text[1:])
    train, test = load_data(data, settings["n_train"], settings["n_test"][data], seed)
    model, tok = load_model_and_tokenizer("smollm2")
    out: dict[str, Any] = {
        "run": run_id,
        "dataset": data,
        "budget": budget,
        "method": method,
        "seed": seed,
        "n_train": len(train),
        "n_test": len(test),
        "config": run_config(settings, data, method, budget),
    }
    if method != "base":
        cfg = smore_paper_config(**{**BUDGETS[budget], **settings["router_options"]})
        if method == "molre" and MOLRE_OPTIONS[budget]:
            molre, target = get_method("molre"), get_method("smore").count(model, None, cfg)
            # molre_config(router_dim=...) raises (it sets router_dim itself): replace
            template = dataclasses.replace(molre_config(), **MOLRE_OPTIONS[budget])
            match = molre.match_budget(model, None, target, template=template)
            torch.manual_seed(seed)
            model, out["rank"] = molre.build(model, match.spec), match.rank
        else:
            model, sizes = build_for_budget(method, model, cfg, seed=seed)
            out["rank"] = sizes[method]["rank"]
        out["trainable_parameters"] = trainable_parameters(model)
        args = training_arguments(
            str(work_dir / run_id),
            learning_rate=settings["lr"],
            num_train_epochs=1,
            per_device_train_batch_size=settings["batch_size"],
            warmup_steps=settings["warmup"],
            seed=seed,
            data_seed=seed,
            logging_steps=10,
            disable_tqdm=True,
        )
        trainer = build_trainer(
            model,
            tok,
            train,
            args,
            max_length=settings["max_length"],
            answer="text",
            router_lr_scale=settings["router_lr_scale"],
        )
        # the optimised LM + balance loss, as in the recorded results (training_loss: LM only)
        out["train_loss"] = round(trainer.train().metrics["train_total_loss"], 5)
        model.eval()
    result = evaluate_mc(model, tok, test, answer="text", batch_size=16)
    out["accuracy"], out["per_task"] = result["accuracy"], result["per_task"]
    out["wall_s"] = round(time.time() - start, 1)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, multi-task, small budget")
    parser.add_argument("--report", action="store_true", help="print the Markdown and exit")
    parser.add_argument("--only", nargs="+", default=None, help="run ids (default: all)")
    parser.add_argument("--run-one", default=None, help="(internal) one run in this process")
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "bench_quality"))
    args = parser.parse_args(argv)
    settings, out_dir = settings_for(args.quick), results_dir(args.quick)
    if args.report:
        print(report(out_dir, settings))
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.run_one:
        result = run_one(args.run_one, settings, Path(args.work_dir))
        tmp = out_dir / f".{args.run_one}.json.tmp"
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(out_dir / f"{args.run_one}.json")  # only finished runs appear
        return
    ids = run_ids(settings)
    unknown = sorted(set(args.only or []) - set(ids))
    if unknown:
        parser.error(f"unknown run ids {unknown}; known: {ids}")
    start = time.time()
    for run_id in args.only or ids:
        if is_done(out_dir / f"{run_id}.json", settings):
            continue  # finished with these settings (a run with others is redone)
        cmd = [
            sys.executable,
            "-m",
            "bench.quality",
            "--run-one",
            run_id,
            "--work-dir",
            args.work_dir,
        ] + (["--quick"] if args.quick else [])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        t0 = time.time()
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        status = "ok" if done.returncode == 0 else f"FAILED: {done.stderr[-1500:]}"
        print(f"{run_id}: {status} ({time.time() - t0:.0f} s)", flush=True)
    summary = summarise(out_dir, settings)
    summary.update(machine=machine_info(), wall_s_this_call=round(time.time() - start, 1))
    name = "quality_quick_summary.json" if args.quick else "quality_summary.json"
    (RESULTS_DIR / name).write_text(json.dumps(summary, indent=1) + "\n")
    print(report(out_dir, settings))


if __name__ == "__main__":
    main()

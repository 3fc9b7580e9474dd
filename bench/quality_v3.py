"""Why S'MoRE trails LoRA (issue 21): per-method lr, training size, equal output rank, a variant.

The protocol of :mod:`bench.quality` (SmolLM2-135M-Instruct, ``gate_proj``/``up_proj``/
``down_proj`` of every block, 1 epoch, batch 8, paired seeds 0-2, the same fixed test questions,
answers scored as choice text), in five stages run in this priority order:

a. ``val``: each small-budget arm at lr 1e-3, 3e-3 and 3e-4 (seed 0, 640 training questions),
   scored on a 300-question multi-task validation split carved from train by key (never
   test). The best lr per arm (ties: the smaller) is written to ``lr_choice.json``; every later
   run reads its arm's lr from there (a run whose arm has no choice yet is skipped).
b. ``mt640``: multi-task, small budget, 640 training questions, every arm, 3 seeds;
c. ``mt1920``: the same at 1,920; d. ``wn``: WordNet at the paper budget (all 2,000
   training questions): S'MoRE vs LoRA r64 (= d_L) and r83 (equal parameters), LoRA at scale 2
   (alpha = 2r, as before) and scale 1 (alpha = r); e. ``mtfull``: multi-task at every
   training question outside validation (3,624).

Arms (small budget, 2.3 M parameters): ``smore`` (the project's router options,
``ROUTER_OPTIONS``), ``smore_faithful`` (the paper's router: no input norm, logit scale 1),
``lora12`` (equal parameters), ``lora8`` (equal output rank d_L = 8) and ``smore_shared``
(the extension ``shared_rank``, docs/spec.md §12: a shared LoRA term of rank 2 beside the routed
delta, paid for by a router of width 4; output rank 10). WordNet: ``smore``'s lr for
``smore_paper``, ``lora12``'s for every LoRA. Every run stores the update rank of the adapters
of block 15 (:mod:`smore_gnn.analysis.rank`).

Every run is a subprocess writing ``bench/results/quality_v3/<run>.json``; finished runs with
the current settings are skipped, and the worker commits each finished run to git.

    .venv/bin/python -m bench.quality_v3 [--commit]        # the study, restartable
    .venv/bin/python -m bench.quality_v3 --dry-run         # what it would run, nothing loaded
    .venv/bin/python -m bench.quality_v3 --report          # tables and the issue's verdict
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR
from bench.quality import BUDGETS, ROOT, ROUTER_LR_SCALE, ROUTER_OPTIONS, load_data

OUT_DIR = RESULTS_DIR / "quality_v3"
LR_FILE = "lr_choice.json"
LRS = (1e-3, 3e-3, 3e-4)  # the first is the old study's; ties go to the smaller lr
SEEDS = (0, 1, 2)
N_VAL = 300
SPLIT_SEED = 21  # the validation carve (issue 21); training draws use the run's seed
SIZES = {"mt640": 640, "mt1920": 1920, "mtfull": None}  # None: every non-validation question
SHARED = {"router_dim": 4, "down_proj_dim": 4, "shared_rank": 2}
#: arm -> how it is built. ``smore``: SMoREConfig overrides; ``lora``: rank and alpha / rank
ARMS: dict[str, dict[str, Any]] = {
    "smore": {"smore": {**BUDGETS["small"], **ROUTER_OPTIONS}},
    "lora12": {"lora": 12, "scale": 2.0},
    "lora8": {"lora": 8, "scale": 2.0},
    "smore_faithful": {"smore": dict(BUDGETS["small"])},
    "smore_shared": {"smore": {**BUDGETS["small"], **ROUTER_OPTIONS, **SHARED}},
    # WordNet, paper budget (d_L = 64; LoRA r83 has S'MoRE's parameters)
    "smore_paper": {"smore": {**BUDGETS["paper"], **ROUTER_OPTIONS}, "lr_of": "smore"},
    "lora64": {"lora": 64, "scale": 2.0, "lr_of": "lora12"},
    "lora83": {"lora": 83, "scale": 2.0, "lr_of": "lora12"},
    "lora64_a1": {"lora": 64, "scale": 1.0, "lr_of": "lora12"},
    "lora83_a1": {"lora": 83, "scale": 1.0, "lr_of": "lora12"},
}
SMALL_ARMS = ("smore", "lora12", "lora8", "smore_faithful", "smore_shared")
SIZE_ARMS = {"mt640": SMALL_ARMS, "mt1920": SMALL_ARMS[:4], "mtfull": SMALL_ARMS[:4]}
WN_ARMS = ("smore_paper", "lora64", "lora83", "lora64_a1", "lora83_a1")
SETTINGS = {
    "warmup": 0.1,
    "batch_size": 8,
    "max_length": 64,
    "epochs": 1,
    "router_lr_scale": ROUTER_LR_SCALE,
    "n_test": {"multitask": 700, "wordnet": 500},
    "rank_block": 15,
    "rank_tokens": 600,
}


def lr_tag(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")  # 1e-3, 3e-4


def run_ids() -> list[str]:
    """Every run in priority order: ``val-<arm>-lr<lr>-s0``, then ``<stage>-<arm>-s<seed>``
    cell by cell (seeds outermost inside a stage, so a partial stage holds paired seeds)."""
    ids = [f"val-{arm}-lr{lr_tag(lr)}-s0" for arm in SMALL_ARMS for lr in LRS]
    for stage in ("mt640", "mt1920", "wn", "mtfull"):
        arms = WN_ARMS if stage == "wn" else SIZE_ARMS[stage]
        ids += [f"{stage}-{arm}-s{seed}" for seed in SEEDS for arm in arms]
    return ids


def parse_id(run_id: str) -> dict[str, Any]:
    """``{"stage", "arm", "seed", "lr"}`` (``lr`` only for ``val`` runs)."""
    parts = run_id.split("-")
    out: dict[str, Any] = {"stage": parts[0], "arm": parts[1], "seed": int(parts[-1][1:])}
    if parts[0] == "val":
        out["lr"] = float("-".join(parts[2:-1])[2:])
    return out


def lr_source(arm: str) -> str:
    return ARMS[arm].get("lr_of", arm)


def choose_lrs(out_dir: Path, settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per arm whose three ``val`` runs have finished: the validation accuracy of each lr and
    the chosen one (best; ties: the smaller)."""
    choice = {}
    for arm in SMALL_ARMS:
        acc = {}
        for lr in LRS:
            run = load_run(out_dir / f"val-{arm}-lr{lr_tag(lr)}-s0.json", settings)
            if run is not None:
                acc[lr] = run["accuracy"]
        if len(acc) == len(LRS):
            best = max(sorted(acc), key=lambda lr: acc[lr])  # max keeps the first: smaller lr
            choice[arm] = {"lr": best, "val_accuracy": {lr_tag(k): v for k, v in acc.items()}}
    return choice


def run_config(run_id: str, settings: dict[str, Any], lrs: dict[str, Any]) -> dict | None:
    """What a finished run must have been run with; ``None`` while its arm has no lr yet."""
    p = parse_id(run_id)
    lr = p.get("lr")
    if lr is None:
        chosen = lrs.get(lr_source(p["arm"]))
        if chosen is None:
            return None
        lr = chosen["lr"]
    data = "wordnet" if p["stage"] == "wn" else "multitask"
    n_eval = N_VAL if p["stage"] == "val" else settings["n_test"][data]
    keys = (
        "warmup",
        "batch_size",
        "max_length",
        "epochs",
        "router_lr_scale",
        "rank_block",
        "rank_tokens",
    )
    return {**{k: settings[k] for k in keys}, "arm": ARMS[p["arm"]], "lr": lr, "n_eval": n_eval}


def load_run(path: Path, settings: dict[str, Any], lrs: dict | None = None) -> dict | None:
    """The run in ``path`` if it finished with the current settings and its arm's chosen lr
    (``lrs``, from :func:`choose_lrs`; not needed for ``val`` runs)."""
    if not path.exists():
        return None
    run = json.loads(path.read_text())
    want = run_config(run["run"], settings, lrs or {})
    return run if want is not None and run.get("config") == want else None


def multitask_split() -> tuple[list[dict], list[dict]]:
    """``(val, rest)``: ``N_VAL`` validation questions carved from the multi-task train split
    by key (whole keys, hashed order with ``SPLIT_SEED``), and every question of the other keys.
    Deterministic; no key is in both."""
    from smore_gnn.data import load_bundled

    groups: dict[str, list[dict]] = {}
    for r in load_bundled("multitask", "train"):
        groups.setdefault(f"{r['task']}:{r.get('key', r['question'])}", []).append(r)
    digest = {k: hashlib.sha256(f"{SPLIT_SEED}:{k}".encode()).hexdigest() for k in groups}
    val: list[dict] = []
    rest: list[dict] = []
    for key in sorted(groups, key=digest.__getitem__):
        (val if len(val) < N_VAL else rest).extend(groups[key])
    return val, rest  # val may exceed N_VAL by the last key's other questions: kept whole


def run_data(run_id: str, settings: dict[str, Any]) -> tuple[list[dict], list[dict], str]:
    """``(train, eval records, dataset)`` of a run."""
    p = parse_id(run_id)
    if p["stage"] == "wn":
        train, test = load_data("wordnet", 2000, settings["n_test"]["wordnet"], p["seed"])
        return train, test, "wordnet"
    val, rest = multitask_split()
    n = 640 if p["stage"] == "val" else SIZES[p["stage"]]
    train = random.Random(p["seed"]).sample(rest, len(rest) if n is None else n)
    if p["stage"] == "val":
        return train, val[:N_VAL], "multitask"
    _, test = load_data("multitask", 0, settings["n_test"]["multitask"], 0)
    return train, test, "multitask"


def build_arm(arm: str, model: Any, seed: int) -> Any:
    """The base ``model`` adapted as ``arm`` (seeded as :func:`build_for_budget` seeds)."""
    import torch

    from smore_gnn.hf.methods import get_method, smore_paper_config

    spec = ARMS[arm]
    torch.manual_seed(seed)
    if "smore" in spec:
        return get_method("smore").build(model, smore_paper_config(**spec["smore"]))
    rank = spec["lora"]
    return get_method("lora").build(model, rank, lora_alpha=spec["scale"] * rank)


def adapter_inputs(model: Any, tok: Any, records: list[dict], block: int, n_tokens: int) -> dict:
    """``{target: (module, inputs [n_tokens, d])}``: what the adapters of ``block`` see on the
    prompts of ``records`` (one prompt per forward: no padding)."""
    import torch

    from smore_gnn.data.records import mc_prompt

    found = {}
    modules = dict(model.named_modules())
    if callable(getattr(model, "adapters", None)):  # S'MoRE: the active adapter of each slot
        modules.update(model.adapters())
    for name, module in modules.items():
        for target in ("gate_proj", "up_proj", "down_proj"):
            adapter = hasattr(module, "adapter_delta") or hasattr(module, "lora_A")
            if adapter and name.endswith(f"layers.{block}.mlp.{target}"):
                found[target] = module
    seen: dict[str, list] = {t: [] for t in found}
    hooks = [
        m.register_forward_pre_hook(
            lambda _m, args, t=t: seen[t].append(args[0].detach().reshape(-1, args[0].size(-1)))
        )
        for t, m in found.items()
    ]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for record in records:
                ids = tok(mc_prompt(record), return_tensors="pt")["input_ids"].to(device)
                model(input_ids=ids)
                if sum(x.size(0) for x in seen[next(iter(seen))]) >= n_tokens:
                    break
    finally:
        for h in hooks:
            h.remove()
    return {t: (found[t], torch.cat(seen[t])[:n_tokens]) for t in found}


def run_one(run_id: str, settings: dict[str, Any], lr: float, work_dir: Path) -> dict:
    """One run in this process: train, score, measure the update rank; JSON-ready."""
    import torch

    from smore_gnn.analysis.rank import rank_report
    from smore_gnn.hf.loading import load_model_and_tokenizer
    from smore_gnn.hf.methods import trainable_parameters
    from smore_gnn.train.evaluation import evaluate_mc
    from smore_gnn.train.trainer import build_trainer, training_arguments

    torch.set_num_threads(1)
    start, p, device = time.time(), parse_id(run_id), settings["device"]
    train, evaluation, data = run_data(run_id, settings)
    model, tok = load_model_and_tokenizer(settings["model"])
    model = build_arm(p["arm"], model, p["seed"]).to(device)
    out: dict[str, Any] = {
        "run": run_id,
        **p,
        "lr": lr,
        "dataset": data,
        "n_train": len(train),
        "n_eval": len(evaluation),
        "eval_split": "validation" if p["stage"] == "val" else "test",
        "trainable_parameters": trainable_parameters(model),
        "device": device,
    }
    lrs = {} if p["stage"] == "val" else {lr_source(p["arm"]): {"lr": lr}}
    out["config"] = run_config(run_id, settings, lrs)
    args = training_arguments(
        str(work_dir / run_id),
        learning_rate=lr,
        num_train_epochs=settings["epochs"],
        per_device_train_batch_size=settings["batch_size"],
        warmup_steps=settings["warmup"],
        seed=p["seed"],
        data_seed=p["seed"],
        logging_steps=10,
        disable_tqdm=True,
        use_cpu=device == "cpu",
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
    out["train_total_loss"] = round(trainer.train().metrics["train_total_loss"], 5)
    logs = [h for h in trainer.state.log_history if "loss" in h and "lm_loss" in h]
    out["train_lm_loss_log"] = [round(h["loss"], 5) for h in logs]
    model.eval()
    result = evaluate_mc(model, tok, evaluation, answer="text", batch_size=16)
    out["accuracy"], out["per_task"] = result["accuracy"], result["per_task"]
    val, _ = multitask_split() if data == "multitask" else (train, None)
    inputs = adapter_inputs(model, tok, val, settings["rank_block"], settings["rank_tokens"])
    out["rank"] = {t: rank_report(m, x.float()) for t, (m, x) in inputs.items()}
    out["wall_s"] = round(time.time() - start, 1)
    return out


def settings_for(device: str = "cpu", model: str = "smollm2", epochs: int = 1) -> dict[str, Any]:
    return {**SETTINGS, "device": device, "model": model, "epochs": epochs}


def plan(out_dir: Path, settings: dict[str, Any]) -> list[tuple[str, str, float | None]]:
    """``(run id, status, lr)`` of every run: ``done``, ``todo`` or ``waits for lr``."""
    lrs, rows = choose_lrs(out_dir, settings), []
    for run_id in run_ids():
        p = parse_id(run_id)
        lr = p.get("lr") or lrs.get(lr_source(p["arm"]), {}).get("lr")
        if lr is None:
            rows.append((run_id, f"waits for the lr of {lr_source(p['arm'])}", None))
        elif load_run(out_dir / f"{run_id}.json", settings, lrs) is not None:
            rows.append((run_id, "done", lr))
        else:
            rows.append((run_id, "todo", lr))
    return rows


def write_lr_choice(out_dir: Path, settings: dict[str, Any]) -> Path:
    path = out_dir / LR_FILE
    path.write_text(json.dumps(choose_lrs(out_dir, settings), indent=1, sort_keys=True) + "\n")
    return path


def git_commit(paths: list[Path], message: str) -> None:
    """Commit ``paths`` alone (other staged or changed files are left as they are)."""
    rel = [str(p.relative_to(ROOT)) for p in paths]
    subprocess.run(["git", "add", "--", *rel], cwd=ROOT, check=False)
    subprocess.run(["git", "commit", "-q", "-m", message, "--", *rel], cwd=ROOT, check=False)


def work(
    settings: dict[str, Any],
    out_dir: Path,
    work_dir: Path,
    commit: bool,
    only: list[str] | None = None,
) -> None:
    """Run every unfinished run in priority order, each in a one-thread subprocess; re-plan
    after each (a finished ``val`` triple fixes its arm's lr for the later runs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    failed: set[str] = set()
    while True:
        todo = [
            (r, lr)
            for r, status, lr in plan(out_dir, settings)
            if status == "todo" and r not in failed and (only is None or r in only)
        ]
        if not todo:
            break
        run_id, lr = todo[0]
        cmd = [
            sys.executable,
            "-m",
            "bench.quality_v3",
            "--run-one",
            run_id,
            "--lr",
            repr(lr),
            "--device",
            settings["device"],
            "--model",
            settings["model"],
            "--work-dir",
            str(work_dir),
            "--out-dir",
            str(out_dir),
            "--epochs",
            str(settings["epochs"]),
        ]
        t0 = time.time()
        log = work_dir / f"{run_id}.log"  # the run's own output, to follow its progress
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as stream:
            done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=stream, stderr=subprocess.STDOUT)
        ok = done.returncode == 0 and (out_dir / f"{run_id}.json").exists()
        if not ok:
            failed.add(run_id)
        status = "ok" if ok else f"FAILED (rc {done.returncode}): {log.read_text()[-2000:]}"
        stamp = time.strftime("%H:%M:%S", time.gmtime())
        print(f"{stamp} {run_id} lr {lr}: {status} ({time.time() - t0:.0f} s)", flush=True)
        if ok and commit:
            write_lr_choice(out_dir, settings)
            git_commit([out_dir], f"bench.quality_v3: {run_id} finished")  # and any left over
    write_lr_choice(out_dir, settings)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--model", default="smollm2", help="model spec: alias or .gguf path")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--report", action="store_true", help="print the tables and verdict")
    parser.add_argument("--commit", action="store_true", help="git-commit each finished run")
    parser.add_argument("--only", nargs="+", default=None, help="run ids (default: all)")
    parser.add_argument("--run-one", default=None, help="(internal) one run in this process")
    parser.add_argument("--lr", type=float, default=None, help="(internal) its learning rate")
    parser.add_argument("--epochs", type=int, default=1, help="epochs (GPU: 3; default 1)")
    parser.add_argument("--out-dir", default=None, help="default: results/quality_v3[_e<n>]")
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "bench_quality_v3"))
    args = parser.parse_args(argv)
    settings = settings_for(args.device, args.model, args.epochs)
    suffix = "" if args.epochs == 1 else f"_e{args.epochs}"  # never overwrite 1-epoch runs
    out_dir = Path(args.out_dir) if args.out_dir else OUT_DIR.with_name(OUT_DIR.name + suffix)
    if args.report:
        from bench.quality_v3_report import report

        print(report(out_dir, settings))
        return
    if args.run_one:
        result = run_one(args.run_one, settings, args.lr, Path(args.work_dir))
        tmp = out_dir / f".{args.run_one}.json.tmp"
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(out_dir / f"{args.run_one}.json")  # only finished runs appear
        return
    unknown = sorted(set(args.only or []) - set(run_ids()))
    if unknown:
        parser.error(f"unknown run ids {unknown}")
    if args.dry_run:
        rows = plan(out_dir, settings)
        print(f"device {args.device}, model {args.model}, results in {out_dir}")
        for run_id, status, lr in rows:
            if args.only is None or run_id in args.only:
                print(f"{run_id:<28} {status}" + (f" (lr {lr:g})" if lr else ""))
        counts = {s: sum(r[1] == s for r in rows) for s in ("done", "todo")}
        print(
            f"{counts['done']} done, {counts['todo']} to run, "
            f"{len(rows) - sum(counts.values())} waiting for an lr choice"
        )
        return
    if args.device != "cpu":
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: no CUDA device here (try --dry-run)")
    work(settings, out_dir, Path(args.work_dir), args.commit, args.only)


if __name__ == "__main__":
    main()

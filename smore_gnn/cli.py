"""``smore-gnn``: fine-tune (``finetune``), evaluate (``eval``) and inspect routing (``inspect``).

Settings come from a YAML file (``--config``, keys as the long flags with ``_``), overridden by
explicit flags. See ``smore_gnn/configs/demo.yaml``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

DEFAULTS: dict[str, Any] = dict(
    model="smollm2", method="smore", data=None, eval_data=None, adapter=None, n_train=480,
    n_test=200, max_length=64, batch_size=8, grad_accum=1, epochs=1.0, max_steps=-1, lr=1e-3,
    warmup=0.1, seed=0, output_dir="runs/finetune", target_modules=None, lora_rank=None,
    match_budget=True, eval_before=True, eval_batch_size=16, logging_steps=10, smore={},
    prompt=None, module=None, token=-1, png=None, progress=True, answer="letter", threads=None,
)  # fmt: skip
_TYPES = dict(n_train=int, n_test=int, max_length=int, batch_size=int, grad_accum=int,
              epochs=float, max_steps=int, lr=float, warmup=float, seed=int, lora_rank=int,
              eval_batch_size=int, logging_steps=int, token=int, threads=int)  # fmt: skip


_SMORE_HELP = 'SMoREConfig fields as JSON, e.g. \'{"gate_type": "noisy_topk"}\''


def load_settings(config: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """DEFAULTS, then the YAML file, then the non-None ``overrides`` (flags)."""
    settings = dict(DEFAULTS)
    if config:
        data = yaml.safe_load(Path(config).read_text()) or {}
        unknown = sorted(set(data) - set(DEFAULTS))
        if not isinstance(data, dict) or unknown:
            raise ValueError(
                f"Config {config} has unknown keys {unknown}; known keys: {sorted(DEFAULTS)}"
            )
        settings.update(data)
    smore = {**settings["smore"], **(overrides.pop("smore", None) or {})}
    settings.update({k: v for k, v in overrides.items() if v is not None}, smore=smore)
    if settings["method"] not in ("smore", "molre", "lora"):
        raise ValueError(f"method must be smore, molre or lora (got {settings['method']!r})")
    if settings["answer"] not in ("letter", "text"):
        raise ValueError(f"answer must be 'letter' or 'text' (got {settings['answer']!r})")
    return settings


def load_model(spec: str, seed: int = 0) -> tuple[Any, Any]:
    """``"tiny"``: a random tiny Llama (smoke tests); anything else: ``loading.load_model...``."""
    from smore_gnn.loading import load_model_and_tokenizer
    from smore_gnn.testing import tiny_llama

    return tiny_llama(seed=seed) if spec == "tiny" else load_model_and_tokenizer(spec)


def load_records(s: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """Train and multiple-choice test records: bundled WordNet, or JSONL (test held out)."""
    from smore_gnn.data import detect_format, load_jsonl
    from smore_gnn.wordnet import load_bundled_wordnet_mc

    if s["data"] is None:
        train, test = load_bundled_wordnet_mc("train"), load_bundled_wordnet_mc("test")
    else:
        train, test = load_jsonl(s["data"]), []
    if s["eval_data"]:
        test = load_jsonl(s["eval_data"])
    elif s["data"] is not None and s["n_test"] > 0 and detect_format(train) == "mc":
        train, test = train[: -s["n_test"]], train[-s["n_test"] :]  # hold the tail out
    return train[: s["n_train"]], test[: s["n_test"]]


def build_adapted(s: dict[str, Any], model: torch.nn.Module) -> tuple[torch.nn.Module, dict]:
    """Adapt ``model`` with ``s["method"]``; also report every method's size at S'MoRE's budget."""
    from smore_gnn.baselines import (
        apply_method,
        count_adapter_parameters,
        match_parameters,
        molre_config,
        smore_paper_config,
    )

    targets, smore = s["target_modules"], smore_paper_config(**s["smore"])
    budget = count_adapter_parameters("smore", model, targets, smore)
    report = {"smore": {"rank": smore.rank[0], "trainable_parameters": budget}}
    for method in ("molre", "lora"):
        match = match_parameters(method, model, targets, budget)
        report[method] = {"rank": match.rank, "trainable_parameters": match.num_parameters}
    spec: Any = {"smore": smore, "molre": molre_config(), "lora": s["lora_rank"] or 8}[s["method"]]
    if s["method"] != "smore" and s["match_budget"] and not s["lora_rank"]:
        spec = match_parameters(s["method"], model, targets, budget).spec
    torch.manual_seed(s["seed"])
    return apply_method(s["method"], model, spec, targets), report


def format_routing_tree(layer: Any, token: int) -> str:
    """The routed sub-tree of ``token`` in ``layer.last_routing``, indented root first."""
    routing = layer.last_routing
    top = len(routing.experts) - 1

    def lines(l: int, j: int, depth: int) -> list[str]:
        e, a = int(routing.experts[l][token, j]), float(routing.scores[l][token, j])
        out = [f"{'  ' * depth}layer {l}  expert {e}  score {a:.3f}"]
        if l > 0:
            f = routing.fanout[l - 1]
            for child in range(j * f, (j + 1) * f):
                out += lines(l - 1, child, depth + 1)
        return out

    result = ["root"]
    for j in range(routing.experts[top].size(1)):
        result += lines(top, j, 1)
    return "\n".join(result)


def inspect_routing(s: dict[str, Any], model: Any, tokenizer: Any, prompt: str) -> str:
    """Route ``prompt``; print and draw one token's tree in one adapted module."""
    from smore_gnn.viz import draw_routing_tree

    names = model.adapted_names
    module = s["module"] if s["module"] is not None else len(names) // 2
    name = names[int(module)] if str(module).lstrip("-").isdigit() else module
    if name not in names:
        raise ValueError(f"--module must be an index or one of {names[:3]}... (got {module!r})")
    batch = tokenizer(prompt, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        model(**batch)
    ids = batch["input_ids"][0]
    token = s["token"] % len(ids)
    layer = model.adapters()[name]
    piece = tokenizer.decode(ids[token : token + 1])
    text = f"{name}, token {token} ({piece!r}):\n{format_routing_tree(layer, token)}"
    png = s["png"] or str(Path(s["output_dir"]) / "routing_tree.png")
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    draw_routing_tree(layer.last_tree, token=token, path=png, show_scores=True,
                      title=f"{name}\ntoken {token} {piece!r}")  # fmt: skip
    return f"{text}\nrouting tree drawn to {png}"


def _accuracy(s: dict[str, Any], model: Any, tokenizer: Any, test: list[dict]) -> float | None:
    """Letter-scored (``answer: letter``) or choice-text-scored (``answer: text``) accuracy."""
    from smore_gnn.eval import evaluate_mc

    if not test:
        return None
    bs, progress = s["eval_batch_size"], s["progress"]
    return evaluate_mc(model, tokenizer, test, s["answer"], bs, progress=progress)["accuracy"]


def finetune(s: dict[str, Any]) -> dict[str, Any]:
    """Base accuracy, fine-tuning, tuned accuracy, adapter + metrics + routing-tree PNG."""
    from smore_gnn.training import build_trainer, training_arguments

    start, out = time.time(), Path(s["output_dir"])
    torch.manual_seed(s["seed"])
    model, tokenizer = load_model(s["model"], s["seed"])
    train, test = load_records(s)
    base_acc = _accuracy(s, model, tokenizer, test) if s["eval_before"] else None
    print(f"base accuracy: {base_acc} on {len(test)} questions")
    model, report = build_adapted(s, model)
    args = training_arguments(
        str(out / "trainer"), per_device_train_batch_size=s["batch_size"],
        gradient_accumulation_steps=s["grad_accum"], num_train_epochs=s["epochs"],
        max_steps=s["max_steps"], learning_rate=s["lr"], warmup_steps=s["warmup"],
        seed=s["seed"], logging_steps=s["logging_steps"], disable_tqdm=not s["progress"],
    )  # fmt: skip
    trainer = build_trainer(model, tokenizer, train, args, s["max_length"], answer=s["answer"])
    t_train = time.time()
    result = trainer.train()
    t_train = time.time() - t_train
    tuned_acc = _accuracy(s, model, tokenizer, test)
    out.mkdir(parents=True, exist_ok=True)
    if s["method"] == "lora":
        model.save_pretrained(str(out))  # peft's adapter_config.json + adapter_model.safetensors
    else:
        model.save_adapter(str(out))
    metrics = {
        "model": s["model"], "method": s["method"], "answer": s["answer"],
        "base_accuracy": base_acc, "tuned_accuracy": tuned_acc,
        "n_train": len(train), "n_test": len(test),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "budget_report": report, "train_steps": result.global_step,
        "train_loss": result.training_loss, "train_time_s": round(t_train, 1),
        "log_history": trainer.state.log_history,
    }  # fmt: skip
    if s["method"] != "lora":
        prompt = s["prompt"] or _first_prompt(test or train)
        print(inspect_routing({**s, "output_dir": str(out)}, model, tokenizer, prompt))
        metrics["routing"] = {k: v for k, v in model.routing_stats().items() if k != "modules"}
    metrics["wall_time_s"] = round(time.time() - start, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    (out / "finetune_config.yaml").write_text(yaml.safe_dump(s, sort_keys=True))
    print(f"{s['method']}: base accuracy {base_acc} -> tuned accuracy {tuned_acc} "
          f"({metrics['trainable_parameters']:,} trainable parameters, "
          f"{metrics['wall_time_s']:.0f} s); adapter and metrics.json in {out}")  # fmt: skip
    return metrics


def _first_prompt(records: list[dict]) -> str:
    from smore_gnn.data import format_example

    return format_example(records[0])[0]


def evaluate(s: dict[str, Any]) -> dict[str, Any]:
    """Multiple-choice accuracy of the base model plus an optional saved adapter."""
    from smore_gnn.baselines import load_method_adapter

    model, tokenizer = load_model(s["model"], s["seed"])
    if s["adapter"]:
        model = load_method_adapter(model, s["adapter"])
    _, test = load_records({**s, "n_train": 0})
    result = {
        "model": s["model"],
        "adapter": s["adapter"],
        "n_test": len(test),
        "answer": s["answer"],
    }
    result["accuracy"] = _accuracy(s, model, tokenizer, test)
    print(json.dumps(result))
    return result


def inspect(s: dict[str, Any]) -> str:
    """Route a prompt through an adapted model (a saved adapter, or a fresh one)."""
    from smore_gnn.save import load_adapter

    model, tokenizer = load_model(s["model"], s["seed"])
    if s["adapter"]:
        model = load_adapter(model, s["adapter"])
    else:
        model, _ = build_adapted({**s, "method": "smore"}, model)
    text = inspect_routing(s, model, tokenizer, s["prompt"] or "The cat sat on the")
    print(text)
    return text


def build_parser() -> argparse.ArgumentParser:
    """The ``smore-gnn`` argument parser (every default lives in :data:`DEFAULTS`)."""
    parser = argparse.ArgumentParser(prog="smore-gnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("finetune", "fine-tune and evaluate"), ("eval", "MC accuracy"),
                           ("inspect", "print and draw a token's routing tree")):  # fmt: skip
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--config", help="YAML file of settings (keys as the flags)")
        for key in DEFAULTS:
            flag = "--" + key.replace("_", "-")
            if key == "smore":
                p.add_argument(flag, type=json.loads, default=None, help=_SMORE_HELP)
            elif isinstance(DEFAULTS[key], bool):
                p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
            else:
                p.add_argument(flag, type=_TYPES.get(key, str), default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``smore-gnn`` console script."""
    args = vars(build_parser().parse_args(argv))
    command, config = args.pop("command"), args.pop("config")
    if isinstance(args.get("target_modules"), str):
        args["target_modules"] = args["target_modules"].split(",")
    settings = load_settings(config, args)
    if settings["threads"]:  # 1 avoids stalls when other processes share a small CPU
        torch.set_num_threads(settings["threads"])
    {"finetune": finetune, "eval": evaluate, "inspect": inspect}[command](settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``smore-gnn``: fine-tune (``finetune``), evaluate (``eval``) and inspect routing (``inspect``).

Settings come from a YAML file (``--config``, keys as the long flags with ``_``), overridden by
explicit flags: :mod:`smore_gnn.cli.args` (one typed dataclass per sub-command),
:mod:`smore_gnn.cli.parse` (``HfArgumentParser``, YAML type checks) and
``smore_gnn/configs/demo.yaml``. Every input is validated before a model is loaded or a
training step runs. A user error prints one line naming the input and the fix and exits with
code 2; a traceback means a bug. Scoring is :mod:`smore_gnn.train.evaluation`, training
:mod:`smore_gnn.train.trainer`, methods :mod:`smore_gnn.hf.methods`, routing health
:mod:`smore_gnn.cli.health`. ``finetune`` also runs on several processes (``accelerate
launch``, ``torchrun``): every process trains and evaluates, the main one writes and prints
(:mod:`smore_gnn.cli.ranks`).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml

from smore_gnn.cli.args import COMMANDS, UsageError
from smore_gnn.cli.checks import adapter_mismatch, check_token, figure_path
from smore_gnn.cli.health import draw_health, routing_health_of, summary_lines
from smore_gnn.cli.output import RunFolder
from smore_gnn.cli.parse import parse
from smore_gnn.cli.ranks import AlreadyReported, Ranks

BUNDLED = ("wordnet", "multitask")


@contextmanager
def user_input(name: str) -> Iterator[None]:
    """Turn the ValueError/TypeError/OSError of reading input ``name`` into a UsageError."""
    try:
        yield
    except UsageError:
        raise
    except (ValueError, TypeError, OSError) as err:
        raise UsageError(f"{name}: {err}") from err


def _bundled(name: str, split: str) -> list[dict]:
    from smore_gnn.data import load_bundled

    return load_bundled(name, split)


def load_split(
    data: str | None, eval_data: str | None, n_train: int, n_test: int, flag: str = "--data"
) -> tuple[list[dict], list[dict]]:
    """Train and multiple-choice test records (bundled by name, or validated JSONL files)."""
    from smore_gnn.data.records import read_dataset, split_train_test
    from smore_gnn.train.evaluation import validate_mc_records

    def read(value: str, split: str, flag: str) -> list[dict]:
        with user_input(flag):
            return _bundled(value, split) if value in BUNDLED else read_dataset(value)

    data = data or "wordnet"
    train = read(data, "train", flag) if n_train else []
    test = read(eval_data, "test", "--eval-data") if eval_data else None
    if test is None and data in BUNDLED:
        test = read(data, "test", flag)
    elif test is None and not n_train:
        train = read(data, "train", flag)
    with user_input("--n-test"):
        train, test = split_train_test(train, test, n_train, n_test)
    if test:
        with user_input("--eval-data" if eval_data else flag):
            validate_mc_records(test, "test questions")
    return (train[:n_train] if n_train else []), test


def set_threads(requested: int | None, verbose: bool = True) -> None:
    """``smore_gnn.nn.runtime.choose_threads`` (prints its choice) when available."""
    try:
        from smore_gnn.nn.runtime import choose_threads
    except ModuleNotFoundError:
        if requested:
            torch.set_num_threads(requested)
        if verbose:
            print(f"torch threads: {torch.get_num_threads()}", flush=True)
        return
    choose_threads(requested, verbose=verbose)


def load_model(args: Any) -> tuple[Any, Any]:
    """``"tiny"``: a random tiny Llama (smoke tests); else ``loading.load_model_and_tokenizer``."""
    torch.manual_seed(args.seed)
    with user_input("--model"):
        if args.model == "tiny":
            from smore_gnn.hf.testing import tiny_llama

            return tiny_llama(seed=args.seed)
        from smore_gnn.hf.loading import load_model_and_tokenizer

        return load_model_and_tokenizer(args.model)


@contextmanager
def warnings_unless_usage_error() -> Iterator[None]:
    """Hold back the warnings of a block: shown after it, dropped if it ends in a user error.

    peft warns while it loads a LoRA folder before it fails on one of another model; those
    warnings would stand before the one-line error. The filters in force still apply.
    """
    failed = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            yield
    except UsageError:
        failed = True
        raise
    finally:
        for held in [] if failed else caught:
            warnings.warn_explicit(
                held.message, held.category, held.filename, held.lineno, source=held.source
            )


def load_adapter(model: Any, directory: str, trainable: bool = False) -> Any:
    """Any method's adapter folder into ``model``."""
    from smore_gnn.hf.methods import load_any

    with warnings_unless_usage_error(), user_input("--adapter"):
        try:
            return load_any(model, directory, is_trainable=trainable)
        except RuntimeError as err:  # peft's load_state_dict error for a LoRA of another model
            mismatch = adapter_mismatch(err, directory)
            if mismatch is None:
                raise
            raise mismatch from err


def accuracy(
    args: Any, model: Any, tokenizer: Any, test: list[dict], progress: bool = True
) -> dict | None:
    """:func:`~smore_gnn.train.evaluation.evaluate_mc` on ``test`` (``None`` without questions).

    ``progress=False`` hides the progress bar that ``args.progress`` asks for.
    """
    from smore_gnn.train.evaluation import evaluate_mc

    if not test:
        return None
    return evaluate_mc(
        model,
        tokenizer,
        test,
        args.answer,
        args.eval_batch_size,
        progress=args.progress and progress,
    )


def route(args: Any, model: Any, tokenizer: Any, prompt: str) -> Any:
    """Route ``prompt`` through ``model`` (a forward) for :func:`draw_routing`."""
    from smore_gnn.viz.text import route_prompt

    with user_input("--module/--token/--prompt"):
        return route_prompt(model, tokenizer, prompt, args.module, args.token)


def draw_routing(args: Any, routed: Any, out: Path) -> tuple:
    """The routed token's tree as text, drawn to ``args.png`` (default: in ``out``); module."""
    from smore_gnn.viz import draw_routing_tree

    png = figure_path(args.png, str(out))
    with user_input("--png"):
        png.parent.mkdir(parents=True, exist_ok=True)
    draw_routing_tree(
        routed.layer.last_tree,
        token=routed.token,
        path=str(png),
        show_scores=True,
        title=f"{routed.name}\ntoken {routed.token} {routed.piece!r}",
    )
    return f"{routed.text}\nrouting tree drawn to {png}", routed.name


def finetune(args: Any, ranks: Ranks | None = None) -> dict[str, Any]:
    """Validate everything, score the base model, train, save the adapter, score again.

    The output folder is checked first (:class:`smore_gnn.cli.output.RunFolder`); a run that
    fails before its adapter is saved leaves it as it found it. On several processes only the
    main one checks and writes the folder and prints (:mod:`smore_gnn.cli.ranks`).
    """
    start, ranks = time.time(), ranks or Ranks()
    with ExitStack() as cleanup:
        with ranks.agreed():  # a folder refused by any process: none goes on
            run = RunFolder(args.output_dir, writer=ranks.is_main)
            cleanup.enter_context(run.cleaned_up_on_failure())
        return _finetune(args, run, start, ranks)


def _finetune(args: Any, run: RunFolder, start: float, ranks: Ranks) -> dict[str, Any]:
    from smore_gnn.data.records import SFTDataset, format_example
    from smore_gnn.hf.methods import build_for_budget, method_of, trainable_parameters
    from smore_gnn.train.distributed import full_state_dict
    from smore_gnn.train.trainer import build_trainer, training_arguments

    out, main = run.path, ranks.is_main
    with ranks.agreed():  # every process: the same checks, model and base scores
        train, test = load_split(args.data, args.eval_data, args.n_train, args.n_test)
        set_threads(args.threads, verbose=main)
        model, tokenizer = load_model(args)
        prompt = args.prompt or format_example((test or train)[0])[0]
        check_token(tokenizer, prompt, args.token)  # drawn after training: checked before it
        with user_input("--data/--max-length"):
            dataset = SFTDataset(train, tokenizer, args.max_length, answer=args.answer)
        if args.adapter:  # continue training the saved adapter (its own method and config)
            model, report = load_adapter(model, args.adapter, trainable=True), None
        else:
            from smore_gnn.hf.model import find_target_modules

            with user_input("--target-modules"):
                targets = args.target_modules
                find_target_modules(model, targets) if targets is not None else None
        base = accuracy(args, model, tokenizer, test, main) if args.eval_before else None
        ranks.print(f"base accuracy: {base and base['accuracy']} on {len(test)} questions")
        if not args.adapter:
            model, report = build_for_budget(
                args.method or "smore",
                model,
                args.smore_config,
                args.target_modules,
                lora_rank=args.lora_rank,
                match_budget=args.match_budget,
                seed=args.seed,
            )
        method = method_of(model).name
        health = routing_health_of(model, tokenizer, test, args.eval_batch_size, args.seed)
        training = training_arguments(
            str(run.subfolder("trainer")),
            per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=args.grad_accum,
            num_train_epochs=args.epochs,
            max_steps=args.max_steps,
            learning_rate=args.lr,
            warmup_steps=args.warmup,
            seed=args.seed,
            logging_steps=args.logging_steps,
            disable_tqdm=not args.progress,
        )
        settings = {k: v for k, v in asdict(args).items() if k != "smore_config"}
        run.write_text("finetune_config.yaml", yaml.safe_dump(settings, sort_keys=True))
    trainer = build_trainer(
        model,
        tokenizer,
        dataset,
        training,
        args.max_length,
        answer=args.answer,
        router_lr_scale=args.router_lr_scale,
    )
    t_train = time.time()
    result = trainer.train()
    t_train = time.time() - t_train
    state_dict = full_state_dict(trainer)  # every process: a sharded model is gathered
    with ranks.agreed():  # before any post-training evaluation: nothing trained is lost
        run.save(model, state_dict)
    ranks.print(f"adapter saved to {out}")
    with ranks.agreed():  # the last agreement: the processes end together
        # Every process runs the same forwards (a sharded model needs all of them), then the
        # main process writes: none waits in a forward while another writes or fails.
        tuned = accuracy(args, model, tokenizer, test, main)
        after = None
        if health is not None:
            after = routing_health_of(model, tokenizer, test, args.eval_batch_size, args.seed)
        routed = route(args, model, tokenizer, prompt) if hasattr(model, "routing_stats") else None
        metrics = {
            "model": args.model,
            "method": method,
            "adapter": args.adapter,
            "answer": args.answer,
            "base_accuracy": base and base["accuracy"],
            "tuned_accuracy": tuned and tuned["accuracy"],
            "n_train": len(train),
            "n_test": len(test),
            "trainable_parameters": trainable_parameters(model),
            "budget_report": report,
            "train_steps": result.global_step,
            "train_loss": result.training_loss,  # the LM loss, like the logs' "loss"
            "train_aux_loss": result.metrics.get("train_aux_loss"),
            "train_total_loss": result.metrics.get("train_total_loss"),
            "train_time_s": round(t_train, 1),
            "log_history": trainer.state.log_history,
        }
        if tuned and tuned["per_task"]:
            metrics["per_task"] = {"base": base and base["per_task"], "tuned": tuned["per_task"]}
        if after is not None:
            metrics["routing_health"] = {"before": health["summary"], "after": after["summary"]}
        if routed is not None:  # the statistics of the routed prompt
            stats = model.routing_stats().items()
            metrics["routing"] = {k: v for k, v in stats if k != "modules"}
        if main:
            _report(args, run, metrics, after, routed, start)
    return metrics


def _report(
    args: Any,
    run: RunFolder,
    metrics: dict,
    health_after: dict | None,
    routed: Any,
    start: float,
) -> None:
    """The main process's part of ``finetune``: write the results, draw the tree, print."""
    metrics["wall_time_s"] = round(time.time() - start, 1)
    run.write_text("metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
    if health_after is not None:
        run.write_text("routing_health.json", json.dumps(health_after, indent=1) + "\n")
    if routed is not None:
        print(draw_routing(args, routed, run.path)[0])
    metrics["wall_time_s"] = round(time.time() - start, 1)
    run.write_text("metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
    m = metrics
    print("\n".join(summary_lines(m)))
    print(
        f"{m['method']}: base accuracy {m['base_accuracy']} -> tuned accuracy "
        f"{m['tuned_accuracy']} ({m['trainable_parameters']:,} trainable parameters, "
        f"{m['wall_time_s']:.0f} s); adapter and metrics.json in {run.path}"
    )


def evaluate(args: Any) -> dict[str, Any]:
    """Multiple-choice accuracy of the base model plus an optional saved adapter."""
    _, test = load_split(args.data, args.eval_data, 0, args.n_test)
    if not test:
        raise UsageError("--data: eval needs multiple-choice questions (got SFT records or none)")
    set_threads(args.threads)
    model, tokenizer = load_model(args)
    if args.adapter:
        model = load_adapter(model, args.adapter)
    scores = accuracy(args, model, tokenizer, test)
    result = {
        "model": args.model,
        "adapter": args.adapter,
        "n_test": len(test),
        "answer": args.answer,
        "accuracy": scores["accuracy"],
        "per_task": scores["per_task"],
    }
    print(json.dumps(result))
    return result


def inspect(args: Any) -> str:
    """Route a prompt through an adapted model (a saved adapter, or a fresh S'MoRE one)."""
    from smore_gnn.hf.methods import build_for_budget

    if args.health_data:
        _, test = load_split(args.health_data, None, 0, args.n_test, "--health-data")
        if not test:
            raise UsageError("--health-data: needs multiple-choice questions (got SFT records)")
    set_threads(args.threads)
    model, tokenizer = load_model(args)
    if args.adapter:
        model = load_adapter(model, args.adapter)
        if not hasattr(model, "routing_stats"):
            raise UsageError(
                f"--adapter: {args.adapter} holds a LoRA adapter, which has no routing; "
                "pass an S'MoRE or MoLRE adapter"
            )
    else:
        with user_input("--target-modules"):
            model, _ = build_for_budget(
                "smore", model, args.smore_config, args.target_modules, seed=args.seed
            )
    out = Path(args.output_dir)
    routed = route(args, model, tokenizer, args.prompt or "The cat sat on the")
    text, module = draw_routing(args, routed, out)
    if args.health_data:
        health = routing_health_of(model, tokenizer, test, seed=args.seed)
        pngs = draw_health(health, out, module) if health else []
        text += "".join(f"\nrouting health drawn to {png}" for png in pngs)
    print(text)
    return text


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``smore-gnn`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    ranks = None
    try:
        ranks = Ranks()
        with ranks.agreed():  # several processes: a bad argument stops all, printed once
            command, args, ignored = parse(argv)
        if ignored:
            ranks.print(
                f"smore-gnn {command}: not using config keys {', '.join(ignored)} "
                "(settings of other commands)"
            )
        if command == "finetune":
            finetune(args, ranks)
        else:
            {"eval": evaluate, "inspect": inspect}[command](args)
    except AlreadyReported:  # another process of this run printed the error
        return 2
    except UsageError as err:
        message = " ".join(str(err).split())
        where = f"smore-gnn {argv[0]}" if argv and argv[0] in COMMANDS else "smore-gnn"
        print(f"{where}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "smore-gnn: interrupted; the output folder keeps the adapter of the last "
            "completed save, if any (saves are atomic)",
            file=sys.stderr,
        )
        return 130
    finally:
        if ranks is not None:
            ranks.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Regenerate the bundled data sets from the Debian packages.

    python -m smore_gnn.data build multitask --out smore_gnn/resources/multitask_mc
    python -m smore_gnn.data build wordnet --out smore_gnn/resources/wordnet_mc

The multi-task build drops questions longer than ``--max-tokens`` SmolLM2 tokens (prompt,
letter answer and EOS); ``--tokenizer none`` uses only the character limit.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable

from smore_gnn.data import multitask, wordnet
from smore_gnn.data.dictd import DEFAULT_DICTD_DIR

DEFAULTS = {"wordnet": (2000, 500), "multitask": (multitask.N_TRAIN, multitask.N_TEST)}


def token_counter(spec: str) -> Callable[[str], int] | None:
    """Token count of a text with the tokenizer of model ``spec`` (local files only)."""
    if spec.lower() == "none":
        return None
    from transformers import AutoTokenizer

    from smore_gnn.hf.loading import resolve_model_path

    directory, gguf_file = resolve_model_path(spec)
    kwargs = {"local_files_only": True} | ({"gguf_file": gguf_file} if gguf_file else {})
    tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
    return lambda text: len(tokenizer(text)["input_ids"])


def main(argv: list[str] | None = None) -> None:
    """Parse ``build <name> --out DIR [...]`` and write the data set there."""
    parser = argparse.ArgumentParser(prog="python -m smore_gnn.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build a data set from the Debian files")
    build.add_argument("name", choices=sorted(DEFAULTS))
    build.add_argument("--out", required=True, help="output directory")
    build.add_argument("--wordnet-dir", default=wordnet.DEFAULT_WORDNET_DIR)
    build.add_argument("--dictd-dir", default=DEFAULT_DICTD_DIR)
    build.add_argument("--n-train", type=int, default=None, help="(multitask: per task)")
    build.add_argument("--n-test", type=int, default=None, help="(multitask: per task)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--tokenizer", default="smollm2", help="multitask: model or 'none'")
    build.add_argument("--max-tokens", type=int, default=multitask.MAX_TOKENS)
    args = parser.parse_args(argv)
    n_train = DEFAULTS[args.name][0] if args.n_train is None else args.n_train
    n_test = DEFAULTS[args.name][1] if args.n_test is None else args.n_test
    if args.name == "wordnet":
        wordnet.write_bundled(args.out, args.wordnet_dir, n_train, n_test, args.seed)
    else:
        fits = multitask.prompt_fits(token_counter(args.tokenizer), args.max_tokens)
        command = shlex.join(
            ["python", "-m", "smore_gnn.data", "build", "multitask", "--out", args.out]
            + ["--n-train", str(n_train), "--n-test", str(n_test), "--seed", str(args.seed)]
            + ["--tokenizer", args.tokenizer, "--max-tokens", str(args.max_tokens)]
        )
        built = multitask.build_multitask(
            args.dictd_dir, args.wordnet_dir, n_train, n_test, args.seed, fits
        )
        multitask.write_bundled(args.out, *built, command)
    per_task = " per task" if args.name == "multitask" else ""
    print(f"wrote {args.name} ({n_train} train + {n_test} test{per_task}) to {args.out}")


if __name__ == "__main__":
    main()

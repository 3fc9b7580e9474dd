"""Regenerate the bundled data sets from the Debian packages.

    python -m smore_gnn.data build multitask --out smore_gnn/resources/multitask_mc
    python -m smore_gnn.data build wordnet --out smore_gnn/resources/wordnet_mc

The multi-task build drops questions longer than ``--max-tokens`` SmolLM2 tokens (prompt,
letter answer and EOS); ``--tokenizer none`` uses only the character limit. The source files
and the output folder are checked first; a user error (a missing Debian package, an
unwritable folder, a damaged data file) prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

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


def check_out(out: str) -> None:
    """Create ``out`` if needed and prove it writable (OSError naming it otherwise)."""
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise OSError(
            f"--out {out!r}: cannot write there ({err.strerror or err}); pass a writable folder"
        ) from err


def main(argv: list[str] | None = None) -> int:
    """Parse ``build <name> --out DIR [...]``, write the data set there; the exit code.

    ``OSError`` and ``ValueError`` (missing or damaged source files, an unwritable folder, bad
    sizes) are user errors: one line on stderr and exit code 2.
    """
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
    try:
        build_dataset(args)
    except (OSError, ValueError) as err:
        message = " ".join(str(err).split())
        print(f"{parser.prog} build {args.name}: error: {message}", file=sys.stderr)
        return 2
    return 0


def build_dataset(args: argparse.Namespace) -> None:
    """Check the sources and ``--out``, then build and write the data set ``args.name``."""
    n_train = DEFAULTS[args.name][0] if args.n_train is None else args.n_train
    n_test = DEFAULTS[args.name][1] if args.n_test is None else args.n_test
    if n_train < 0 or n_test < 0 or args.max_tokens < 1:
        raise ValueError(
            f"expected --n-train, --n-test >= 0 and --max-tokens >= 1 (got {n_train}, "
            f"{n_test}, {args.max_tokens})"
        )
    if args.name == "wordnet":
        wordnet.check_dir(args.wordnet_dir)
    else:
        multitask.check_sources(args.dictd_dir, args.wordnet_dir)
    check_out(args.out)
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
    raise SystemExit(main())

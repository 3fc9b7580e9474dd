"""Before/after of the generation benchmark in ONE process: S'MoRE built by an older copy of
the package (``--before``: a git commit, or a directory holding ``smore_gnn_before``, see
:func:`bench.common.import_before`) next to every method of :mod:`bench.generate`.

    .venv/bin/python -m bench.generate_ab --before <commit> [--rounds 4] [--json out.json]

Both S'MoRE models get the same weights (same seeds), so their greedy tokens must agree.
"""

from __future__ import annotations

import copy
import json

import torch

from bench.common import before_after_parser, import_before, machine_info, save_json
from bench.generate import _randomise_zero_weights, bench_batch, build_models, encode, generate_fn


def main(argv: list[str] | None = None) -> dict:
    parser = before_after_parser(__doc__, rounds=4)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    old = import_before(args.before)
    from smore_gnn.hf.loading import load_model_and_tokenizer

    base, tokenizer = load_model_and_tokenizer("smollm2")
    models, sizes = build_models(base, ("base", "lora", "lora_merged", "molre", "smore"))
    before, _ = old.build_for_budget("smore", copy.deepcopy(base), old.smore_paper_config())
    _randomise_zero_weights(before)
    models["smore_before"] = before.eval()
    for batch in args.batches:  # same weights: the same greedy tokens
        inputs = encode(tokenizer, batch)
        a = generate_fn(models["smore"], inputs, args.new_tokens, tokenizer.pad_token_id)()
        b = generate_fn(before, inputs, args.new_tokens, tokenizer.pad_token_id)()
        if not torch.equal(a, b):
            raise AssertionError(f"S'MoRE before/after generate other tokens (batch {batch})")
    out: dict = {"machine": machine_info(), "rounds": args.rounds, "trainable_parameters": sizes}
    out["batches"] = []
    for batch in args.batches:
        res = bench_batch(models, tokenizer, batch, args.rounds, args.new_tokens)
        print(json.dumps(res), flush=True)
        out["batches"].append(res)
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()

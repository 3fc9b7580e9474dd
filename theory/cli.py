"""``python -m theory verify``: brute-force every counting claim of the paper over a grid.

For each uniform config (``s_l = s``, ``f_l = f``, ``L`` layers) the table shows the closed forms
and the counts measured through the real GNN, then the proposition and figure checks follow.
The exit status is non-zero on any mismatch.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from smore_gnn.nn.counting import (
    momor_upper_bound,
    num_structures,
    smore_star_structures,
    uniform_layers,
)
from theory.count import Measurement, measure
from theory.enumerate import structures
from theory.isomorphism import canonical_classes, wl_classes
from theory.propositions import all_checks

HEADER = (
    f"{'s':>2} {'f':>2} {'L':>2} | {'G_SMoRE':>9} {'counted':>9} | {'MoMOR<=':>7} {'counted':>7} "
    f"| {'SMoRE*cf':>8} {'counted':>8} | {'WL':>6} {'AHU':>9} | {'min gap':>8} {'in-class':>8} "
    f"| {'match':>5} {'sec':>6}"
)
LEGEND = """\
G_SMoRE: Theorem 3.4 closed form; counted: min over tokens of distinct S'MoRE outputs.
MoMOR<=: Theorem 3.3 bound; counted: max over tokens of distinct MoMOR outputs.
SMoRE*cf: our S'MoRE* closed form (nn.counting.smore_star_structures); counted: min over tokens.
WL: networkx Weisfeiler-Lehman classes of the labelled trees ('-': skipped for size);
AHU: canonical-form isomorphism classes. min gap: smallest distance between two distinct outputs,
in-class: largest distance inside a class (both relative to max|output|; '>' = lower bound).
match: S'MoRE == G, MoMOR <= bound, S'MoRE* == cf, WL == AHU == G."""


@dataclass
class Row:
    """One config of the grid: closed forms, measurements and isomorphism classes."""

    num_experts: int
    fanout: int
    num_layers: int
    smore: Measurement
    momor: Measurement
    smore_star: Measurement
    wl: int | None
    ahu: int
    seconds: float

    @property
    def lists(self) -> tuple[list[int], list[int]]:
        return uniform_layers(self.num_experts, self.fanout, self.num_layers)

    @property
    def match(self) -> bool:
        gamma = num_structures(*self.lists)
        return (
            self.smore.min_count == gamma
            and self.momor.max_count <= momor_upper_bound(*self.lists)
            and self.smore_star.min_count == smore_star_structures(*self.lists)
            and self.ahu == gamma
            and self.wl in (None, gamma)
        )

    def __str__(self) -> str:
        gaps = [m for m in (self.smore, self.momor, self.smore_star) if m.min_gap < math.inf]
        worst = min(gaps, key=lambda m: m.min_gap, default=None)
        gap = (
            "-" if worst is None else ("" if worst.min_gap_exact else ">") + f"{worst.min_gap:.1e}"
        )
        within = max(m.max_within for m in (self.smore, self.momor, self.smore_star))
        lists = self.lists
        return (
            f"{self.num_experts:>2} {self.fanout:>2} {self.num_layers:>2} | "
            f"{num_structures(*lists):>9} {self.smore.min_count:>9} | "
            f"{momor_upper_bound(*lists):>7} {self.momor.max_count:>7} | "
            f"{smore_star_structures(*lists):>8} {self.smore_star.min_count:>8} | "
            f"{'-' if self.wl is None else self.wl:>6} {self.ahu:>9} | {gap:>8} {within:>8.1e} | "
            f"{'yes' if self.match else 'NO':>5} {self.seconds:>6.1f}"
        )


def grid(
    max_experts: int = 5, max_fanout: int = 3, max_layers: int = 3, max_trees: int = 300_000
) -> list[tuple[int, int, int]]:
    """Every uniform ``(s, f, L)`` with ``f <= s`` whose structure count is ``<= max_trees``."""
    return [
        (s, f, L)
        for s in range(1, max_experts + 1)
        for f in range(1, min(max_fanout, s) + 1)
        for L in range(1, max_layers + 1)
        if num_structures(*uniform_layers(s, f, L)) <= max_trees
    ]


def verify_config(
    num_experts: int,
    fanout: int,
    num_layers: int,
    tokens: int = 3,
    max_wl: int = 10_000,
    chunk_size: int | None = None,
    tol: float = 1e-9,
) -> Row:
    """Measure one config with all three propagation rules and count isomorphism classes."""
    start = time.perf_counter()
    s, f = uniform_layers(num_experts, fanout, num_layers)
    found = {
        p: measure(s, f, p, tokens, chunk_size=chunk_size, tol=tol)
        for p in ("smore", "momor", "smore_star")
    }
    trees = structures(s, f)
    wl = wl_classes(trees) if trees.num_tokens <= max_wl else None
    ahu = canonical_classes(trees)
    seconds = time.perf_counter() - start
    return Row(num_experts, fanout, num_layers, *found.values(), wl, ahu, seconds)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m theory", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="brute-force the structural-flexibility theorems")
    verify.add_argument(
        "--max-trees",
        type=int,
        default=300_000,
        help="skip configs with more structures (default: 300000)",
    )
    verify.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="random tokens x per config; Thm 3.4 is a min over x (default: 3)",
    )
    verify.add_argument("--plot", metavar="PATH", help="write the Figure 2 PNG here")
    verify.add_argument("--max-s", type=int, default=5, help="largest s (default: 5)")
    verify.add_argument("--max-f", type=int, default=3, help="largest f (default: 3)")
    verify.add_argument("--max-layers", type=int, default=3, help="largest L (default: 3)")
    verify.add_argument(
        "--max-wl",
        type=int,
        default=10_000,
        help="run the networkx WL count up to this many trees (default: 10000)",
    )
    verify.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="trees per GNN pass (default: all in one pass)",
    )
    verify.add_argument(
        "--tol",
        type=float,
        default=1e-9,
        help="relative tolerance for equal outputs (default: 1e-9)",
    )
    verify.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 is faster on a busy machine)"
    )
    verify.add_argument(
        "--skip-checks",
        action="store_true",
        help="only the counting grid, no proposition/figure checks",
    )
    return parser


def verify(args: argparse.Namespace) -> int:
    """Run the grid and the checks; print the table; return the exit status."""
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = grid(args.max_s, args.max_f, args.max_layers, args.max_trees)
    print(HEADER)
    print("-" * len(HEADER))
    rows = []
    for s, f, L in tqdm(configs, desc="configs", file=sys.stderr, leave=False):
        row = verify_config(s, f, L, args.seeds, args.max_wl, args.chunk_size, args.tol)
        rows.append(row)
        tqdm.write(str(row), file=sys.stdout)
    print(LEGEND)
    tight = sum(r.momor.max_count == momor_upper_bound(*r.lists) for r in rows)
    print(f"MoMOR counted == Theorem 3.3 bound (not just <=) in {tight}/{len(rows)} configs.")
    ok = all(r.match for r in rows)
    print(f"grid: {sum(r.match for r in rows)}/{len(rows)} configs match")
    if not args.skip_checks:
        print("\nPropositions and figures:")
        for check in all_checks():
            print(check)
            ok = ok and check.passed
    if args.plot:
        from theory.figures import figure2

        measured: dict[str, dict[int, int]] = {"smore": {}, "momor": {}, "smore_star": {}}
        for r in rows:
            if (r.num_experts, r.fanout) == (4, 2):
                measured["smore"][r.num_layers] = r.smore.min_count
                measured["momor"][r.num_layers] = r.momor.max_count
                measured["smore_star"][r.num_layers] = r.smore_star.min_count
        figure2(measured=measured).savefig(args.plot, dpi=150)
        print(f"wrote {args.plot}")
    print("ALL CHECKS PASSED" if ok else "MISMATCH: see the rows marked NO / the FAIL lines")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m theory``; returns the exit status."""
    args = _parser().parse_args(argv)
    return verify(args)

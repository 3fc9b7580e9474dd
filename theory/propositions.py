"""Numerical checks of Propositions 3.1-3.2 and Figures 2-3 of the paper (docs/spec.md §6-7).

Every check runs the real adapter (router, tree builder, GNN propagation) in float64 and
returns a :class:`CheckResult`; none re-derives the propagation it tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from smore_gnn import RoutingTree, SMoREConfig, SMoRELinear
from smore_gnn.nn.counting import (
    figure2_values,
    momor_upper_bound,
    num_structures,
    smore_star_structures,
    uniform_layers,
)
from theory.count import generic_layer, measure
from theory.enumerate import decode
from theory.isomorphism import canonical_ids

EXACT = 1e-12  # float64 round-off allowance (relative) for identities
APART = 1e-6  # a difference this large (relative) is structural, not round-off


@dataclass
class CheckResult:
    """Outcome of one check: ``detail`` holds the numbers a reader needs to judge it."""

    name: str
    passed: bool
    detail: dict[str, object] = field(default_factory=dict)

    def __str__(self) -> str:
        numbers = ", ".join(
            f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in self.detail.items()
        )
        return f"[{'PASS' if self.passed else 'FAIL'}] {self.name}: {numbers}"


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _tokens(layer: SMoRELinear, n: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, layer.in_features, generator=gen, dtype=torch.float64)


def _expert(layer: SMoRELinear, l: int, e: int, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(A^e x + a^e, B^e (A^e x + a^e) + b^e)`` of expert ``e`` of layer ``l``, from weights."""
    bank, r = layer.experts[l], layer.experts[l].rank
    h = bank.lora_A.weight[e * r : (e + 1) * r] @ x
    if bank.lora_A.bias is not None:
        h = h + bank.lora_A.bias[e * r : (e + 1) * r]
    out = bank.lora_B[e] @ h
    return h, out if bank.lora_B_bias is None else out + bank.lora_B_bias[e]


@torch.no_grad()
def check_prop_3_1(num_experts: int = 5, fanout: int = 2, tokens: int = 16) -> CheckResult:
    """Prop. 3.1: ``L = 1`` with identity sigma is a mixture of LoRA experts.

    ``y = W0 x + W_proj sum_t alpha_t (B^t (A^t x + a^t) + b^t) + b_proj`` with the router's
    own choices, against the adapter's full forward.
    """
    layer = generic_layer([num_experts], [fanout], act="identity", seed=3)
    x = _tokens(layer, tokens, 0)
    y = layer(x)
    routing = layer.last_routing
    mix = torch.stack(
        [
            sum(
                a * _expert(layer, 0, int(e), x[n])[1]
                for e, a in zip(routing.experts[0][n], routing.scores[0][n].double())
            )
            for n in range(tokens)
        ]
    )
    expected = layer.base_layer(x) + mix @ layer.proj.weight.t() + layer.proj.bias
    err = _rel(y, expected)
    return CheckResult("Prop 3.1 (L=1, identity: mixture of LoRA)", err < EXACT, {"rel_err": err})


@torch.no_grad()
def check_lora(tokens: int = 8) -> CheckResult:
    """``L = 1``, ``s = f = 1``, identity sigma, no biases: a plain rank-``r`` LoRA update."""
    layer = generic_layer([1], [1], act="identity", gate_type="dense", bias=False, seed=4)
    x = _tokens(layer, tokens, 1)
    bank = layer.experts[0]
    delta_w = layer.proj.weight @ bank.lora_B[0] @ bank.lora_A.weight  # [d_out, d]
    err = _rel(layer(x), layer.base_layer(x) + x @ delta_w.t())
    return CheckResult("LoRA (L=1, s=f=1, identity)", err < EXACT, {"rel_err": err})


@torch.no_grad()
def check_prop_3_2(
    num_experts: Sequence[int] = (3, 4, 2),
    fanout: Sequence[int] = (2, 2, 1),
    rank: Sequence[int] = (2, 3, 2),
    tokens: int = 16,
) -> CheckResult:
    """Prop. 3.2: with ``init_method="eq_1_layer"`` and identity sigma, ``m_root`` is the flat
    concatenation of every activated expert's gate-weighted, path-summed ``c_l A_l^e x``.

    Layout of ``m_root``: the top layer's slots first, then layer ``L-2``'s, ..., layer 0's
    last; expert ``i`` of layer ``l`` owns rows ``i r_l : (i+1) r_l`` of its layer's block.
    """
    cfg = SMoREConfig(
        num_experts=list(num_experts),
        fanout=list(fanout),
        rank=list(rank),
        expert_act="identity",
        init_method="eq_1_layer",  # the construction itself; the A's stay random
        lora_alpha=3.0,
    )
    torch.manual_seed(5)
    layer = SMoRELinear(nn.Linear(8, 4).double(), cfg).eval()
    x = _tokens(layer, tokens, 2)
    routing = layer.router(x)
    m_root = layer.propagate_tree(x, RoutingTree.from_routing(routing))  # [N, d_L]
    expected = torch.zeros_like(m_root)
    offsets = [
        sum(s * r for s, r in zip(cfg.num_experts[l + 1 :], cfg.rank[l + 1 :]))
        for l in range(cfg.num_layers)
    ]
    for n in range(tokens):
        for l in range(cfg.num_layers):
            for j, e in enumerate(routing.experts[l][n].tolist()):
                weight, node = 1.0, j
                for k in range(l, cfg.num_layers):  # gate scores on the path up to the root
                    weight = weight * float(routing.scores[k][n, node])
                    node = node // cfg.fanout[k]
                start = offsets[l] + e * cfg.rank[l]
                a_x = _expert(layer, l, e, x[n])[0]
                expected[n, start : start + cfg.rank[l]] += weight * cfg.residual_scales[l] * a_x
    err = _rel(m_root, expected)
    return CheckResult("Prop 3.2 (eq_1_layer: slots of m_root)", err < EXACT, {"rel_err": err})


def check_figure2(brute_force_layers: int = 2, tokens: int = 2) -> CheckResult:
    """Figure 2 (``s = 4``, ``f = 2``): closed forms 6/6, 216/66, 279936/726, and brute-force
    counts through the GNN for ``L <= brute_force_layers``."""
    expected = [(1, 6, 6), (2, 216, 66), (3, 279_936, 726)]
    ok, detail = figure2_values(4, 2, 3) == expected, {}
    for L in range(1, brute_force_layers + 1):
        s, f = uniform_layers(4, 2, L)
        smore = measure(s, f, "smore", tokens).min_count
        momor = measure(s, f, "momor", tokens).max_count
        detail[f"L{L}"] = f"{smore} vs {momor}"
        ok = ok and smore == num_structures(s, f) and momor == momor_upper_bound(s, f)
    detail["L3_closed_form"] = f"{expected[2][1]} vs {expected[2][2]}"
    return CheckResult("Figure 2 (s=4, f=2)", ok, detail)


def _outputs(propagation: str, tree: RoutingTree, num_experts: int = 4, seed: int = 7) -> Tensor:
    """``W_proj m_root`` of one generic token for every tree of ``tree`` (equal edge weights)."""
    s = [num_experts] * tree.num_layers
    layer = generic_layer(s, tree.fanout, propagation, seed=seed)
    x = _tokens(layer, 1, seed)[0].expand(tree.num_tokens, -1)
    with torch.no_grad():
        return layer.proj(layer.propagate_tree(x, tree))


def _pair_check(name: str, experts: list[list[list[int]]], differ: dict[str, bool]) -> CheckResult:
    """Two trees (``experts[l]`` = both trees' rows) through each propagation; compare."""
    tree = RoutingTree(
        experts=[torch.tensor(e) for e in experts],
        scores=[torch.full((2, len(e[0])), 0.5, dtype=torch.float64) for e in experts],
        fanout=[len(experts[l][0]) // len(experts[l + 1][0]) for l in range(len(experts) - 1)]
        + [len(experts[-1][0])],
    )
    ok, detail = True, {}
    for propagation, should_differ in differ.items():
        out = _outputs(propagation, tree)
        gap = _rel(out[0], out[1])
        detail[propagation] = gap
        ok = ok and (gap > APART if should_differ else gap < EXACT)
    return CheckResult(name, ok, detail)


def check_figure3() -> list[CheckResult]:
    """Figure 3 (docs/spec.md §7.3): same experts per layer, other wiring; relative output gaps.

    (a) two layers, children re-partitioned between the two parents ``{0,1},{2,3}`` vs
    ``{0,2},{1,3}``: S'MoRE and S'MoRE* differ, MoMOR does not. (b)/(c) three layers, the
    child sets of two sibling middle nodes swapped: only S'MoRE differs.
    """
    case_a = [[[0, 1, 2, 3], [0, 2, 1, 3]], [[0, 1], [0, 1]]]
    case_bc = [
        [[0, 1, 2, 3, 0, 2, 1, 3], [2, 3, 0, 1, 0, 2, 1, 3]],
        [[0, 1, 2, 3], [0, 1, 2, 3]],
        [[0, 1], [0, 1]],
    ]
    return [
        _pair_check(
            "Figure 3 (a) re-partition children",
            case_a,
            {"smore": True, "smore_star": True, "momor": False},
        ),
        _pair_check(
            "Figure 3 (b)/(c) swap sibling child sets",
            case_bc,
            {"smore": True, "smore_star": False, "momor": False},
        ),
    ]


def check_rewiring(num_trees: int = 200, seed: int = 0) -> CheckResult:
    """Random re-wirings that keep every layer's experts: MoMOR never changes; S'MoRE changes
    exactly when the re-wired tree is not isomorphic to the original (AHU canonical forms)."""
    num_experts, fanout = [4, 4, 4], [2, 2, 2]
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(num_structures(num_experts, fanout), (num_trees,), generator=gen)
    experts = decode(num_experts, fanout, pick).experts
    rewired = [e[:, torch.randperm(e.size(1), generator=gen)] for e in experts]
    tree = RoutingTree(
        [torch.cat([a, b]) for a, b in zip(experts, rewired)],
        [torch.full((2 * num_trees, e.size(1)), 0.5, dtype=torch.float64) for e in experts],
        fanout,
    )
    ids = canonical_ids(tree)
    iso = ids[:num_trees] == ids[num_trees:]
    gaps = {}
    for propagation in ("smore", "momor"):
        out = _outputs(propagation, tree)
        diff = (out[:num_trees] - out[num_trees:]).norm(dim=1) / out.abs().max()
        gaps[propagation] = diff
    smore_ok = bool(((gaps["smore"] > APART) == ~iso).all())
    momor_ok = bool((gaps["momor"] < EXACT).all())
    detail = {
        "non_isomorphic": int((~iso).sum()),
        "smore_min_gap": float(gaps["smore"][~iso].min()),
        "momor_max_gap": float(gaps["momor"].max()),
    }
    return CheckResult(
        "Re-wiring: MoMOR invariant, S'MoRE iff non-isomorphic", smore_ok and momor_ok, detail
    )


def check_smore_star_positional(num_layers: int = 2, tokens: int = 2) -> CheckResult:
    """S'MoRE* forgets which child carries which sub-tree only because sibling edges weigh the
    same: with generic per-position weights it separates every structure, like S'MoRE."""
    s, f = uniform_layers(4, 2, num_layers)
    equal = measure(s, f, "smore_star", tokens).min_count
    positional = measure(s, f, "smore_star", tokens, edge_weights="positional").min_count
    ok = equal == smore_star_structures(s, f) and positional == num_structures(s, f)
    detail = {
        "equal_weights": equal,
        "positional_weights": positional,
        "G_smore": num_structures(s, f),
    }
    return CheckResult(f"S'MoRE* weights (s=4, f=2, L={num_layers})", ok, detail)


def all_checks(figure2_layers: int = 2) -> list[CheckResult]:
    """Every proposition and figure check, in paper order."""
    return [
        check_lora(),
        check_prop_3_1(),
        check_prop_3_2(),
        check_figure2(figure2_layers),
        *check_figure3(),
        check_rewiring(),
        check_smore_star_positional(),
    ]

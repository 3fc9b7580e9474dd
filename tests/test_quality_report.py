"""bench.quality's bookkeeping (issue 10 item 4) and the router study's validation split
(item 3): paired differences by hand, runs with other settings redone, no key leakage."""

from __future__ import annotations

import json
import statistics

import pytest

from bench import quality
from bench.quality_report import report, summarise
from bench.router_probe import validation_split


def _settings() -> dict:
    return {
        **quality.settings_for(quick=False),
        "seeds": [0, 1],
        "datasets": ["multitask"],
        "budgets": ["small"],
    }


def _write(tmp_path, settings, method, seed, acc, per_task=None, **extra):
    config = quality.run_config(settings, "multitask", method, "small")
    run = {
        "run": f"multitask-small-{method}-s{seed}",
        "dataset": "multitask",
        "budget": "small",
        "method": method,
        "seed": seed,
        "accuracy": acc,
        "trainable_parameters": 100,
        "rank": 2,
        "wall_s": 10.0,
        "per_task": per_task or {"a": {"accuracy": acc, "n": 4}},
        "config": config,
        **extra,
    }
    (tmp_path / f"{run['run']}.json").write_text(json.dumps(run))


def test_paired_difference_and_standard_error_by_hand(tmp_path):
    settings = _settings()
    for seed, (s, lo, mo) in enumerate([(0.60, 0.55, 0.50), (0.50, 0.52, 0.40)]):
        _write(tmp_path, settings, "smore", seed, s)
        _write(tmp_path, settings, "lora", seed, lo)
        _write(tmp_path, settings, "molre", seed, mo)
    cell = summarise(tmp_path, settings)["datasets"]["multitask"]["budgets"]["small"]
    assert cell["smore"]["mean"] == pytest.approx(0.55)
    assert cell["smore"]["se"] == pytest.approx(statistics.stdev([0.6, 0.5]) / 2**0.5)
    diff = cell["smore_minus_lora"]
    assert diff["mean"] == pytest.approx(0.015)  # (0.05 + (-0.02)) / 2
    assert diff["se"] == pytest.approx(0.035)  # stdev(0.05, -0.02) = 0.0495; / sqrt(2)
    assert diff["seeds"] == [0, 1]
    assert cell["smore_minus_molre"]["mean"] == pytest.approx(0.10)
    text = report(tmp_path, settings)
    assert "| small | S'MoRE | 100 | 2 | 2 | 55.0 ± 5.0 |" in text
    assert "+1.5 ± 3.5" in text


def test_unpaired_seed_is_left_out_and_runs_with_other_settings_do_not_count(tmp_path):
    settings = _settings()
    _write(tmp_path, settings, "smore", 0, 0.6)
    _write(tmp_path, settings, "lora", 0, 0.5)
    _write(tmp_path, settings, "smore", 1, 0.9)  # no LoRA of seed 1: not in the paired diff
    cell = summarise(tmp_path, settings)["datasets"]["multitask"]["budgets"]["small"]
    assert cell["smore_minus_lora"]["seeds"] == [0]
    assert cell["smore_minus_lora"]["se"] is None
    changed = {**settings, "router_lr_scale": 7.0}
    assert summarise(tmp_path, changed)["runs_finished"] == 0
    path = tmp_path / "multitask-small-smore-s0.json"
    assert quality.is_done(path, settings) and not quality.is_done(path, changed)


def test_run_ids_finish_whole_cells_first():
    settings = {**_settings(), "seeds": [0, 1], "budgets": ["small", "paper"]}
    ids = quality.run_ids(settings)
    assert ids[0] == "base-multitask"
    first_cell = [f"multitask-small-{m}-s{s}" for s in (0, 1) for m in ("smore", "lora", "molre")]
    assert ids[1:7] == first_cell
    assert ids[7] == "multitask-paper-smore-s0"
    assert len(ids) == 1 + 2 * 2 * 3


def test_validation_split_has_no_key_in_both_halves():
    train, val = validation_split(200, 60, seed=0)
    assert len(train) == 200 and len(val) == 60
    key = lambda r: (r["task"], r.get("key", r["question"]))  # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in val}
    assert len({r["task"] for r in val}) >= 5  # the tasks are mixed, not one family

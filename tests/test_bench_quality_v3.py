"""bench.quality_v3 (issue 21): the validation carve, the plan and lr choice, the report's
paired gaps and verdict, one run end to end on a tiny model, and bench.gguf_parts."""

from __future__ import annotations

import json

import pytest

from bench import gguf_parts
from bench import quality_v3 as q
from bench.quality_v3_report import gaps, paired, report, verdict


def _write(out, settings, run_id, acc, lrs=None, **extra):
    p = q.parse_id(run_id)
    lr = p.get("lr") or (lrs or {}).get(q.lr_source(p["arm"]), {}).get("lr")
    config = q.run_config(run_id, settings, lrs or {})
    run = {
        "run": run_id,
        **p,
        "lr": lr,
        "accuracy": acc,
        "trainable_parameters": 10,
        "config": config,
        "rank": {"up_proj": {"update_rank": 8, "jacobian_rank": 6.5}},
        **extra,
    }
    (out / f"{run_id}.json").write_text(json.dumps(run))


def test_validation_carve_is_deterministic_and_disjoint_by_key():
    val, rest = q.multitask_split()
    again, _ = q.multitask_split()
    assert len(val) >= q.N_VAL and [r["question"] for r in val] == [r["question"] for r in again]
    keys = lambda rows: {f"{r['task']}:{r.get('key', r['question'])}" for r in rows}  # noqa: E731
    assert not keys(val) & keys(rest)
    assert len({r["task"] for r in val[: q.N_VAL]}) == 7  # every task is validated
    settings = q.settings_for()
    train, evaluation, data = q.run_data("mt640-lora8-s1", settings)
    assert data == "multitask" and len(train) == 640 and len(evaluation) == 700
    assert not keys(train) & keys(val)
    full, _, _ = q.run_data("mtfull-lora8-s0", settings)
    assert len(full) == len(rest)
    tune, held, _ = q.run_data("val-smore-lr3e-3-s0", settings)
    assert len(held) == q.N_VAL and not keys(tune) & keys(held)


def test_run_ids_parse_and_priority_order():
    ids = q.run_ids()
    assert ids[0] == "val-smore-lr1e-3-s0" and len(ids) == len(set(ids))
    assert q.parse_id("val-smore_shared-lr3e-4-s0") == {
        "stage": "val",
        "arm": "smore_shared",
        "seed": 0,
        "lr": 3e-4,
    }
    stages = [i.split("-")[0] for i in ids]
    assert stages.index("mt640") > max(k for k, s in enumerate(stages) if s == "val")
    assert stages.index("wn") < stages.index("mtfull")
    assert "mt640-smore_shared-s2" in ids and "mt1920-smore_shared-s0" not in ids


def test_lr_choice_waits_for_all_three_and_prefers_the_smaller_on_ties(tmp_path):
    settings = q.settings_for()
    for lr, acc in ((1e-3, 0.40), (3e-3, 0.42)):
        _write(tmp_path, settings, f"val-lora12-lr{q.lr_tag(lr)}-s0", acc)
    assert "lora12" not in q.choose_lrs(tmp_path, settings)
    status = dict((r, s) for r, s, _ in q.plan(tmp_path, settings))
    assert status["mt640-lora12-s0"] == "waits for the lr of lora12"
    assert status["wn-lora83-s0"] == "waits for the lr of lora12"
    _write(tmp_path, settings, "val-lora12-lr3e-4-s0", 0.42)
    assert q.choose_lrs(tmp_path, settings)["lora12"]["lr"] == 3e-4
    status = dict((r, s) for r, s, _ in q.plan(tmp_path, settings))
    assert status["mt640-lora12-s0"] == "todo" and status["val-lora12-lr3e-4-s0"] == "done"


def test_a_run_with_another_lr_is_redone(tmp_path):
    settings = q.settings_for()
    for lr in q.LRS:
        _write(tmp_path, settings, f"val-lora8-lr{q.lr_tag(lr)}-s0", 0.5 if lr == 3e-3 else 0.4)
    _write(tmp_path, settings, "mt640-lora8-s0", 0.5, lrs={"lora8": {"lr": 1e-3}})
    lrs = q.choose_lrs(tmp_path, settings)
    assert q.load_run(tmp_path / "mt640-lora8-s0.json", settings, lrs) is None


def test_paired_gaps_report_and_verdict_by_hand(tmp_path):
    settings = q.settings_for()
    for arm in q.SMALL_ARMS:
        for lr in q.LRS:
            _write(tmp_path, settings, f"val-{arm}-lr{q.lr_tag(lr)}-s0", 0.4)
    lrs = q.choose_lrs(tmp_path, settings)
    acc = {"smore": [0.40, 0.42, 0.44], "lora12": [0.43, 0.44, 0.47], "lora8": [0.40, 0.43, 0.44]}
    for arm, values in acc.items():
        for seed, a in enumerate(values):
            _write(tmp_path, settings, f"mt640-{arm}-s{seed}", a, lrs)
    _, runs = __import__("bench.quality_v3_report").quality_v3_report.load_all(tmp_path, settings)
    g_eq = paired(runs, "mt640", "smore", "lora12")
    assert g_eq["mean"] == pytest.approx(-0.0266667, abs=1e-6) and g_eq["seeds"] == 3
    assert g_eq["se"] == pytest.approx(0.0033333, abs=1e-6)  # diffs -.03 -.02 -.03
    g = gaps(runs)["smore"]
    lines = verdict(g, None)
    assert lines[0].startswith("recipe") and "not met (-2.7)" in lines[0]
    assert "incomplete" in lines[1] and "incomplete" in lines[2]
    text = report(tmp_path, settings)
    assert "-2.7 ± 0.3" in text and "not run yet" in text and "mt1920 " in text
    # LoRA r8 far above: |G_dL| > 1 at one complete size decides the property already
    for seed, a in enumerate([0.45, 0.46, 0.47]):
        _write(tmp_path, settings, f"mt640-lora8-s{seed}", a, lrs)
    _, runs = __import__("bench.quality_v3_report").quality_v3_report.load_all(tmp_path, settings)
    lines = verdict(gaps(runs)["smore"], None)
    assert "incomplete" in lines[1] and "not met (mt640: G_eq -2.7, G_dL -4.0)" in lines[2]


def test_one_run_end_to_end_on_a_tiny_model(tmp_path, monkeypatch):
    from smore_gnn.hf import loading
    from smore_gnn.hf.testing import tiny_llama

    records = [
        {"question": f"Pick {w}", "choices": [w, "zz"], "answer": 0, "task": "t", "key": w}
        for w in ("ab", "cd", "ef", "gh", "ij", "kl", "mn", "op")
    ]
    monkeypatch.setattr(
        loading,
        "load_model_and_tokenizer",
        lambda spec: tiny_llama(hidden_size=32, intermediate_size=64),
    )
    monkeypatch.setattr(q, "run_data", lambda run_id, s: (records, records[:4], "multitask"))
    monkeypatch.setattr(q, "multitask_split", lambda: (records, records))
    settings = {**q.settings_for(), "rank_block": 1, "rank_tokens": 30, "max_length": 32}
    for run_id in ("val-smore_shared-lr1e-3-s0", "mt640-lora8-s1"):
        out = q.run_one(run_id, settings, 1e-3, tmp_path)
        assert 0 <= out["accuracy"] <= 1 and out["config"]["lr"] == 1e-3
        assert set(out["rank"]) == {"gate_proj", "up_proj", "down_proj"}
        assert out["rank"]["up_proj"]["tokens"] == 30
    assert out["rank"]["up_proj"]["update_rank"] <= 8  # LoRA r8: rank at most 8
    assert out["train_lm_loss_log"] == [] or out["train_lm_loss_log"][0] > 0


def test_dry_run_with_cuda_runs_on_cpu(tmp_path, capsys):
    q.main(["--device", "cuda", "--dry-run", "--out-dir", str(tmp_path)])
    text = capsys.readouterr().out
    assert "device cuda" in text and "val-smore-lr1e-3-s0" in text and "0 done" in text


def test_gguf_parts_split_and_join_round_trip(tmp_path):
    source = tmp_path / "fake.gguf"
    source.write_bytes(bytes(range(256)) * 5000)  # 1.28 MB
    parts = gguf_parts.split(source, tmp_path / "parts", max_mib=0.5)
    assert len(parts) == 3 and all(p.stat().st_size <= 0.5 * 2**20 for p in parts)
    joined = gguf_parts.join(tmp_path / "parts", tmp_path / "joined.gguf")
    assert joined.read_bytes() == source.read_bytes()
    parts[1].write_bytes(b"x" + parts[1].read_bytes()[1:])
    with pytest.raises(ValueError, match="wrong sha256"):
        gguf_parts.join(tmp_path / "parts", tmp_path / "again.gguf")
    parts[2].unlink()
    with pytest.raises((FileNotFoundError, ValueError)):
        gguf_parts.join(tmp_path / "parts", tmp_path / "again.gguf")


def test_worker_runs_in_order_writes_the_lr_choice_and_commits(tmp_path, monkeypatch):
    settings, ran, commits = q.settings_for(), [], []
    only = [f"val-lora8-lr{q.lr_tag(lr)}-s0" for lr in q.LRS] + ["mt640-lora8-s0"]

    def fake_run(cmd, **kwargs):
        run_id, lr = cmd[cmd.index("--run-one") + 1], float(cmd[cmd.index("--lr") + 1])
        ran.append(run_id)
        lrs = {} if run_id.startswith("val") else {"lora8": {"lr": lr}}
        _write(tmp_path, settings, run_id, 0.5 if lr == 3e-3 else 0.4, lrs)
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(q.subprocess, "run", fake_run)
    monkeypatch.setattr(q, "git_commit", lambda paths, message: commits.append(message))
    q.work(settings, tmp_path, tmp_path / "work", commit=True, only=only)
    assert ran == only and len(commits) == 4
    assert json.loads((tmp_path / q.LR_FILE).read_text())["lora8"]["lr"] == 3e-3
    assert q.load_run(tmp_path / "mt640-lora8-s0.json", settings, q.choose_lrs(tmp_path, settings))
    q.work(settings, tmp_path, tmp_path / "work", commit=True, only=only)  # restart: all done
    assert len(ran) == len(only)

"""``smore-gnn`` finetune / eval / inspect on a tiny random Llama (``--model tiny``)."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch
import yaml

from smore_gnn import SMoREConfig
from smore_gnn.cli.args import EvalArgs, FinetuneArgs, UsageError
from smore_gnn.cli.commands import main
from smore_gnn.cli.parse import parse
from smore_gnn.hf.testing import tiny_llama
from smore_gnn.viz.text import format_routing_tree

TINY = [
    "--model",
    "tiny",
    "--n-train",
    "16",
    "--n-test",
    "8",
    "--max-steps",
    "2",
    "--batch-size",
    "4",
    "--max-length",
    "160",
    "--no-progress",
    "--smore",
    '{"rank": [2, 2]}',
]


def test_demo_config_is_valid():
    path = resources.files("smore_gnn").joinpath("configs", "demo.yaml")
    command, args, ignored = parse(["finetune", "--config", str(path)])
    assert command == "finetune" and isinstance(args, FinetuneArgs) and ignored == []
    assert args.model == "smollm2" and args.method == "smore" and args.answer == "text"
    assert args.lr == 1e-3 and args.threads == 1 and args.n_train == 640
    cfg = args.smore_config
    assert isinstance(cfg, SMoREConfig)
    assert cfg.down_proj_dim == 32 and cfg.router_dim == 32 and cfg.expert_act == "tanh"


def test_settings_precedence_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"lr": 0.5, "n_train": 7, "smore": {"rank": [2, 2]}}))
    _, args, _ = parse(["finetune", "--config", str(path), "--lr", "0.1"])
    assert args.lr == 0.1 and args.n_train == 7 and args.smore == {"rank": [2, 2]}
    assert args.n_test == FinetuneArgs().n_test and args.smore_config.rank == [2, 2]
    _, args, _ = parse(["finetune", "--config", str(path), "--smore", '{"fanout": [1, 1]}'])
    assert args.smore == {"fanout": [1, 1]}  # a flag replaces the whole mapping
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(UsageError, match=r"unknown keys \['learning_rate'\]"):
        parse(["finetune", "--config", str(path)])
    with pytest.raises(UsageError, match=r"method must be one of \['smore', 'molre', 'lora'\]"):
        parse(["finetune", "--method", "mixlora"])
    with pytest.raises(UsageError, match="answer must be 'letter' or 'text'"):
        parse(["eval", "--answer", "word"])


def test_yaml_values_are_converted_by_their_field_type(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text('progress: "false"\nlr: 1e-3\nn_test: "12"\ntarget_modules: up_proj,down_proj')
    _, args, _ = parse(["finetune", "--config", str(path)])
    assert args.progress is False and args.lr == 0.001 and args.n_test == 12
    assert args.target_modules == ["up_proj", "down_proj"]
    for bad, field in (
        ("progress: maybe", "progress"),
        ("n_train: 1.5", "n_train"),
        ("lr: fast", "lr"),
        ("model: 3", "model"),
        ("seed: null", "seed"),
        ("lr: .inf", "lr"),
        ("target_modules: [1]", "target_modules"),
    ):
        path.write_text(bad + "\n")
        with pytest.raises(UsageError, match=rf"\b{field}\b"):
            parse(["finetune", "--config", str(path)])


def test_eval_with_a_finetune_config_says_which_keys_it_does_not_use(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("n_test: 3\nlr: 0.5\nsmore: {rank: [2, 2]}\nmodel: tiny\n")
    command, args, ignored = parse(["eval", "--config", str(path)])
    assert isinstance(args, EvalArgs) and args.n_test == 3 and ignored == ["lr", "smore"]


def test_threads_flag_is_applied_and_printed(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        argv = ["eval", "--model", "tiny", "--n-test", "2", "--no-progress", "--threads", "1"]
        assert main(argv) == 0
        assert "torch threads: 1" in capsys.readouterr().out and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_finetune_eval_inspect_round_trip(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["finetune", *TINY, "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("base_accuracy", "tuned_accuracy", "trainable_parameters", "wall_time_s"):
        assert metrics[key] is not None, key
    assert metrics["train_steps"] == 2 and metrics["n_test"] == 8
    parts = metrics["train_loss"] + metrics["train_aux_loss"]  # the LM loss, as logged
    assert metrics["train_total_loss"] == pytest.approx(parts, rel=1e-4)
    assert set(metrics["budget_report"]) == {"smore", "molre", "lora"}
    for name in ("adapter_config.json", "adapter_model.safetensors", "routing_tree.png"):
        assert (out / name).is_file(), name
    assert "layer 1  expert" in capsys.readouterr().out
    main(["eval", "--model", "tiny", "--n-test", "8", "--adapter", str(out), "--no-progress"])
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["accuracy"] == metrics["tuned_accuracy"]
    png = tmp_path / "tree.png"
    args = ["--model", "tiny", "--adapter", str(out), "--prompt", "a cat", "--module", "0"]
    assert main(["inspect", *args, "--token", "2", "--png", str(png)]) == 0
    text = capsys.readouterr().out
    assert "model.layers.0.mlp.gate_proj, token 2 ('c')" in text and png.is_file()


@pytest.mark.parametrize("method,answer", [("lora", "letter"), ("molre", "text")])
def test_finetune_baselines_on_jsonl(tmp_path, method, answer, capsys):
    data = tmp_path / "mc.jsonl"
    rows = [{"question": f"q{i}", "choices": ["x", "y"], "answer": i % 2} for i in range(12)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / method
    argv = ["finetune", *TINY, "--method", method, "--data", str(data), "--n-test", "4"]
    argv += ["--answer", answer]
    assert main([*argv, "--output-dir", str(out), "--no-eval-before"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] == 8 and metrics["n_test"] == 4 and metrics["base_accuracy"] is None
    assert metrics["answer"] == answer and metrics["tuned_accuracy"] is not None
    budget = metrics["budget_report"]
    assert metrics["trainable_parameters"] == budget[method]["trainable_parameters"]
    main(["eval", "--model", "tiny", "--data", str(data), "--n-test", "4", "--adapter", str(out)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_test"] == 4


def test_eval_reports_per_task_accuracy(tmp_path, capsys):
    data = tmp_path / "mc.jsonl"
    rows = [
        {"question": f"q{i}", "choices": ["x", "y"], "answer": i % 2, "task": "ab"[i % 2]}
        for i in range(6)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["eval", "--model", "tiny", "--data", str(data), "--n-test", "6", "--no-progress"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["per_task"]) == {"a", "b"}
    assert sum(t["n"] for t in result["per_task"].values()) == result["n_test"] == 6


def test_format_routing_tree_lists_every_node():
    from smore_gnn.hf.model import get_smore_model

    model, tokenizer = tiny_llama(hidden_size=32, intermediate_size=64)
    sm = get_smore_model(model, SMoREConfig(num_experts=[3, 4], fanout=[2, 3], rank=[2, 2]))
    with torch.no_grad():
        sm(**tokenizer(["abc"], return_tensors="pt"))
    layer = sm.adapters()[sm.adapted_names[0]]
    lines = format_routing_tree(layer, token=1).splitlines()
    assert lines[0] == "root" and len(lines) == 1 + 3 + 3 * 2
    assert sum(line.startswith("    layer 0") for line in lines) == 6


def test_finetune_reports_per_task_accuracy_and_routing_health(tmp_path):
    data = tmp_path / "mc.jsonl"
    rows = [
        {"question": f"q{i}", "choices": ["x", "y"], "answer": i % 2, "task": "ab"[i % 2]}
        for i in range(12)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    argv = ["finetune", *TINY, "--data", str(data), "--n-test", "4", "--output-dir", str(out)]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_task"]["tuned"]) == set(metrics["per_task"]["base"]) == {"a", "b"}
    health = metrics["routing_health"]
    assert set(health) == {"before", "after"}
    for summary in health.values():
        assert {"task_nmi", "task_nmi_shuffled", "max_top_share"} <= set(summary)
    modules = json.loads((out / "routing_health.json").read_text())["modules"]
    assert len(modules) == 6  # gate, up and down projections of both tiny layers


@pytest.mark.parametrize("name", ["wordnet", "multitask"])
def test_bundled_data_by_name(name, capsys):
    from smore_gnn.data import load_bundled

    try:
        expected = load_bundled(name, "test")[:4]
    except FileNotFoundError:
        pytest.skip(f"the bundled {name} data is not built in this checkout")
    argv = ["eval", "--model", "tiny", "--data", name, "--n-test", "4", "--no-progress"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n_test"] == 4
    assert set(result["per_task"]) == {str(r["task"]) for r in expected if "task" in r}


def test_inspect_draws_routing_health_on_test_questions(tmp_path, capsys):
    data = tmp_path / "mc.jsonl"
    rows = [
        {"question": f"q{i}", "choices": ["x", "y"], "answer": i % 2, "task": "ab"[i % 2]}
        for i in range(6)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = [
        "inspect",
        "--model",
        "tiny",
        "--health-data",
        str(data),
        "--n-test",
        "6",
        "--module",
        "1",
        "--output-dir",
        str(tmp_path),
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    for name in ("routing_tree.png", "routing_health.png", "routing_tasks.png"):
        assert (tmp_path / name).is_file() and name in text, name
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"instruction": "i", "output": "o"}) + "\n")
    assert main([*argv[:4], str(sft), *argv[5:]]) == 2
    assert "--health-data" in capsys.readouterr().err


def test_summary_lines_show_per_task_accuracy_and_health():
    from smore_gnn.cli.health import summary_lines

    metrics = {
        "per_task": {
            "base": {"a": {"accuracy": 0.25, "n": 4}},
            "tuned": {"a": {"accuracy": 0.5, "n": 4}, "b": {"accuracy": 1.0, "n": 2}},
        },
        "routing_health": {
            "before": {"median_spread": 0.01, "task_nmi": 0.02},
            "after": {"median_spread": 0.2, "task_nmi": 0.3, "task_nmi_shuffled": 0.01},
        },
    }
    text = "\n".join(summary_lines(metrics))
    assert "a            0.250 -> 0.500 (4 questions)" in text
    assert "b            - -> 1.000 (2 questions)" in text
    assert "0.010 -> 0.200" in text and "- -> 0.010" in text
    assert summary_lines({}) == []

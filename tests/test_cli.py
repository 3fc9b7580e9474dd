"""``smore-gnn`` finetune / eval / inspect on a tiny random Llama (``--model tiny``)."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch
import yaml

from smore_gnn import SMoREConfig
from smore_gnn.cli import DEFAULTS, format_routing_tree, load_settings, main

TINY = ["--model", "tiny", "--n-train", "16", "--n-test", "8", "--max-steps", "2",
        "--batch-size", "4", "--no-progress", "--smore", '{"rank": [2, 2]}']  # fmt: skip


def test_demo_config_is_valid():
    path = resources.files("smore_gnn").joinpath("configs", "demo.yaml")
    settings = load_settings(str(path), {})
    assert settings["model"] == "smollm2" and settings["method"] == "smore"
    cfg = SMoREConfig(**settings["smore"])
    assert cfg.down_proj_dim == 32 and cfg.router_dim == 32 and cfg.expert_act == "tanh"


def test_settings_precedence_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"lr": 0.5, "n_train": 7, "smore": {"rank": [2, 2]}}))
    settings = load_settings(str(path), {"lr": 0.1, "n_train": None, "smore": {"fanout": [1, 1]}})
    assert settings["lr"] == 0.1 and settings["n_train"] == 7
    assert settings["smore"] == {"rank": [2, 2], "fanout": [1, 1]}
    assert settings["n_test"] == DEFAULTS["n_test"]
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown keys \['learning_rate'\]"):
        load_settings(str(path), {})
    with pytest.raises(ValueError, match="method must be smore, molre or lora"):
        load_settings(None, {"method": "mixlora"})
    with pytest.raises(ValueError, match="answer must be 'letter' or 'text'"):
        load_settings(None, {"answer": "word"})


def test_finetune_eval_inspect_round_trip(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["finetune", *TINY, "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("base_accuracy", "tuned_accuracy", "trainable_parameters", "wall_time_s"):
        assert metrics[key] is not None, key
    assert metrics["train_steps"] == 2 and metrics["n_test"] == 8
    assert set(metrics["budget_report"]) == {"smore", "molre", "lora"}
    for name in ("adapter_config.json", "adapter_model.safetensors", "routing_tree.png"):
        assert (out / name).is_file(), name
    assert "layer 1  expert" in capsys.readouterr().out
    main(["eval", "--model", "tiny", "--n-test", "8", "--adapter", str(out), "--no-progress"])
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["accuracy"] == metrics["tuned_accuracy"]
    png = tmp_path / "tree.png"
    args = ["--model", "tiny", "--adapter", str(out), "--prompt", "a cat", "--module", "0"]
    main(["inspect", *args, "--token", "2", "--png", str(png)])
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
    main([*argv, "--output-dir", str(out), "--no-eval-before"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] == 8 and metrics["n_test"] == 4 and metrics["base_accuracy"] is None
    assert metrics["answer"] == answer and metrics["tuned_accuracy"] is not None
    budget = metrics["budget_report"]
    assert metrics["trainable_parameters"] == budget[method]["trainable_parameters"]
    main(["eval", "--model", "tiny", "--data", str(data), "--n-test", "4", "--adapter", str(out)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_test"] == 4


def test_format_routing_tree_lists_every_node():
    from smore_gnn.model import get_smore_model
    from smore_gnn.testing import tiny_llama

    model, tokenizer = tiny_llama(hidden_size=32, intermediate_size=64)
    sm = get_smore_model(model, SMoREConfig(num_experts=[3, 4], fanout=[2, 3], rank=[2, 2]))
    with torch.no_grad():
        sm(**tokenizer(["abc"], return_tensors="pt"))
    layer = sm.adapters()[sm.adapted_names[0]]
    lines = format_routing_tree(layer, token=1).splitlines()
    assert lines[0] == "root" and len(lines) == 1 + 3 + 3 * 2
    assert sum(line.startswith("    layer 0") for line in lines) == 6

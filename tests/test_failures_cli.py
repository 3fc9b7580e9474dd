"""Regression tests for the CLI/data items of issue 12 (each failed on the code before the fix)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from smore_gnn.cli.commands import main
from smore_gnn.data.records import SFTDataset, read_dataset
from smore_gnn.hf.testing import byte_tokenizer

TINY = [
    "--model",
    "tiny",
    "--n-train",
    "8",
    "--n-test",
    "4",
    "--max-steps",
    "1",
    "--batch-size",
    "4",
    "--max-length",
    "160",
    "--no-progress",
    "--smore",
    '{"rank": [2, 2]}',
]
MC = {"question": "Which is a fruit?", "choices": ["rock", "pear"], "answer": 1}


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_failure_2_bad_eval_record_stops_before_training(tmp_path, capsys):
    bad = _jsonl(tmp_path / "eval.jsonl", [MC, {**MC, "answer": 5}])
    out = tmp_path / "run"
    argv = ["finetune", *TINY, "--no-eval-before", "--eval-data", str(bad), "--output-dir"]
    assert main([*argv, str(out)]) == 2
    err = _one_line_error(capsys)
    assert "eval.jsonl:2:" in err and "answer index 5 is out of range" in err
    assert "torch threads" not in capsys.readouterr().out  # stopped before loading the model
    assert not (out / "trainer").exists() and not (out / "adapter_config.json").exists()


def test_failure_2_adapter_is_saved_before_the_post_training_evaluation(tmp_path, monkeypatch):
    import smore_gnn.train.evaluation

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation crashed")

    monkeypatch.setattr(smore_gnn.train.evaluation, "evaluate_mc", broken)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        main(["finetune", *TINY, "--no-eval-before", "--output-dir", str(out)])
    assert (out / "adapter_config.json").is_file()
    assert (out / "adapter_model.safetensors").is_file() and not (out / "metrics.json").exists()


def test_failure_2_unwritable_output_dir_and_bad_targets_stop_early(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["finetune", *TINY, "--output-dir", str(blocker / "run")]) == 2
    assert "--output-dir" in _one_line_error(capsys)
    argv = ["finetune", *TINY, "--target-modules", "no_such_proj", "--output-dir", str(tmp_path)]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert "--target-modules" in err and "no_such_proj" in err
    assert "base accuracy" not in capsys.readouterr().out  # before the base evaluation


def test_failure_5_yaml_values_are_type_checked(tmp_path, capsys):
    from smore_gnn.cli.parse import parse

    config = tmp_path / "c.yaml"
    config.write_text('progress: "false"\nlr: 1e-3\neval_before: "no"\n')
    _, args, _ = parse(["finetune", "--config", str(config)])
    assert args.progress is False and args.eval_before is False and args.lr == 0.001
    for text, field in (
        ("progress: perhaps", "progress"),
        ("lr: [1]", "lr"),
        ("smore: {shared_pool: 'false'}", "shared_pool"),
        ("smore: {lora_alpha: .inf}", "lora_alpha"),
    ):
        config.write_text(text + "\n")
        assert main(["finetune", "--config", str(config), "--model", "tiny"]) == 2
        assert field in _one_line_error(capsys)


def test_failure_8_over_long_answers_warn_with_counts_or_are_refused():
    tok = byte_tokenizer()
    long_prompt = {**MC, "question": "Which of these is a fruit, a sweet one, grown on trees?"}
    with pytest.warns(UserWarning, match=r"1 of 2 examples are longer than max_length=48"):
        SFTDataset([MC, long_prompt], tok, max_length=48)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SFTDataset([MC], tok, max_length=64)  # fits: no warning
    with pytest.raises(ValueError, match=r"keep no prompt token at max_length=1.*max_length >= 3"):
        SFTDataset([MC], tok, max_length=1)  # " B": 2 tokens, so no label would remain
    with pytest.raises(ValueError, match=r"1 of 1 examples keep no prompt token at max_length=5"):
        SFTDataset([MC], tok, max_length=5, answer="text")  # " pear" fills all 5 tokens


def test_failure_8_cli_refuses_a_max_length_that_leaves_no_prompt(tmp_path, capsys):
    argv = ["finetune", *TINY, "--max-length", "2", "--output-dir", str(tmp_path)]
    assert main(argv) == 2
    assert "--max-length" in _one_line_error(capsys)


def test_failure_9_finetune_adapter_continues_training_from_it(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["finetune", *TINY, "--output-dir", str(first)]) == 0
    tuned = json.loads((first / "metrics.json").read_text())["tuned_accuracy"]
    argv = ["finetune", *TINY[:-2], "--adapter", str(first), "--output-dir", str(second)]
    assert main(argv) == 0
    metrics = json.loads((second / "metrics.json").read_text())
    assert metrics["base_accuracy"] == tuned and metrics["adapter"] == str(first)
    assert metrics["method"] == "smore" and (second / "adapter_config.json").is_file()
    capsys.readouterr()
    argv[argv.index(str(first))] = str(tmp_path / "missing")
    assert main(argv) == 2 and "adapter_config.json" in _one_line_error(capsys)
    assert main(["finetune", *TINY, "--adapter", str(first)]) == 2  # --smore conflicts
    assert "drop smore" in _one_line_error(capsys)


@pytest.mark.parametrize("flag", [["--smore", '{"rank": [2, 2]}'], ["--method", "lora"]])
def test_failure_9_eval_rejects_flags_it_cannot_act_on(flag, capsys):
    assert main(["eval", "--model", "tiny", "--n-test", "2", *flag]) == 2
    err = _one_line_error(capsys)
    assert f"unrecognized arguments: {flag[0]}" in err and "smore-gnn eval" in err


@pytest.mark.parametrize(
    "argv,names",
    [
        (["eval", "--model", "/no/such/model"], "--model"),
        (["eval", "--model", "tiny", "--adapter", "/no/such/dir"], "adapter"),
        (["finetune", "--model", "tiny", "--method", "mixlora"], "method"),
        (["finetune", "--model", "tiny", "--smore", "[1,2]"], "smore"),
        (["finetune", "--model", "tiny", "--smore", '{"rank": 0}'], "rank"),
        (["inspect", "--model", "tiny", "--module", "999", "--output-dir", "{tmp}"], "module"),
        (["finetune", "--lr", "fast"], "--lr"),
        (["finetune", "--config", "{tmp}/list.yaml"], "mapping"),
        (["finetune", "--config", "{tmp}/none.yaml"], "config"),
        (["train"], "command"),
    ],
)
def test_failure_12_user_errors_print_one_line_and_exit_2(tmp_path, capsys, argv, names):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = _one_line_error(capsys)
    assert err.startswith("smore-gnn") and "error:" in err and names in err


def test_failure_14_data_errors_name_the_file_and_line(tmp_path, capsys):
    raw = tmp_path / "latin1.jsonl"
    raw.write_bytes(
        json.dumps(MC).encode() + b"\n" + '{"question": "caf\xe9"}\n'.encode("latin-1")
    )
    with pytest.raises(ValueError, match=r"latin1\.jsonl:2: expected UTF-8 text, got byte 0xe9"):
        read_dataset(raw)
    missing = _jsonl(tmp_path / "missing.jsonl", [MC, {"question": "q", "choices": ["a", "b"]}])
    with pytest.raises(ValueError, match=r"missing\.jsonl:2: record has keys"):
        read_dataset(missing)
    answer = _jsonl(tmp_path / "answer.jsonl", ["", MC, {**MC, "answer": "Z"}])
    with pytest.raises(ValueError, match=r"answer\.jsonl:3: answer 'Z' is neither"):
        read_dataset(answer)
    mixed = _jsonl(tmp_path / "mixed.jsonl", [MC, {"instruction": "i", "output": "o"}])
    with pytest.raises(ValueError, match=r"mixed\.jsonl:2: record is 'sft', line 1 is 'mc'"):
        read_dataset(mixed)
    assert main(["finetune", *TINY, "--data", str(raw), "--output-dir", str(tmp_path)]) == 2
    assert "latin1.jsonl:2:" in _one_line_error(capsys)

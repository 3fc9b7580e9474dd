"""Regression tests: user errors in the command line, its files and the data builder.

Each case stops with one line naming the input and the fix (exit code 2), before a model is
loaded where the input allows it, and no wrong input is silently replaced by a default.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from smore_gnn.cli.commands import main
from smore_gnn.data.records import SFTDataset, load_jsonl, read_dataset
from smore_gnn.hf.lora import LoRAMethod
from smore_gnn.hf.testing import byte_tokenizer, tiny_llama
from smore_gnn.nn.config import SMoREConfig
from tests.test_failures_cli import MC, TINY, _jsonl, _one_line_error

ROOT = Path(__file__).resolve().parents[1]
SMORE = ["--smore", '{"rank": [2, 2]}']
UNWRITABLE = Path("/sys")  # root cannot create files there either


def _stopped_before_the_model(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Exit code 2, one error line, and no model loaded (``torch threads`` comes just before)."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "torch threads" not in captured.out, captured.out
    err = captured.err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _unwritable() -> bool:
    try:
        (UNWRITABLE / ".probe").touch()
    except OSError:
        return True
    return False


# --- inspect --token / --prompt ---------------------------------------------------------------


def test_inspect_token_past_the_end_of_the_prompt_is_refused(tmp_path, capsys):
    argv = ["inspect", "--model", "tiny", *SMORE, "--prompt", "a cat", "--output-dir"]
    assert main([*argv, str(tmp_path), "--token", "5"]) == 2  # "a cat": 5 byte tokens
    err = _one_line_error(capsys)
    assert "token 5 is outside the prompt, which has 5 tokens" in err and "0..4" in err
    assert not (tmp_path / "routing_tree.png").exists()
    assert main([*argv, str(tmp_path), "--token", "-6"]) == 2
    assert "which has 5 tokens" in _one_line_error(capsys)
    assert main([*argv, str(tmp_path), "--token", "-5"]) == 0  # the first token
    assert "token 0 ('a')" in capsys.readouterr().out


def test_finetune_token_past_the_end_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["finetune", *TINY, "--prompt", "a cat", "--token", "99", "--output-dir", str(out)]
    assert main(argv) == 2
    assert "--token: 99 is outside the prompt, which has 5 tokens" in _one_line_error(capsys)
    assert not (out / "trainer").exists() and not (out / "adapter_config.json").exists()


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt_is_refused_not_replaced_by_the_default(tmp_path, capsys, prompt):
    argv = ["inspect", "--model", "tiny", "--prompt", prompt, "--output-dir", str(tmp_path)]
    err = _stopped_before_the_model(capsys, argv)
    assert "prompt must hold a non-space character" in err and "drop --prompt" in err


# --- --png ----------------------------------------------------------------------------------


def test_png_naming_a_folder_draws_inside_it(tmp_path, capsys):
    folder = tmp_path / "figures"
    folder.mkdir()
    argv = ["inspect", "--model", "tiny", *SMORE, "--png", str(folder), "--output-dir"]
    assert main([*argv, str(tmp_path / "out")]) == 0
    assert f"routing tree drawn to {folder / 'routing_tree.png'}" in capsys.readouterr().out
    assert (folder / "routing_tree.png").is_file()
    assert not (tmp_path / "figures.png").exists()
    new = tmp_path / "new" / ""  # a trailing slash: a folder to create
    assert main([*argv, str(tmp_path / "out"), "--png", str(new) + os.sep]) == 0
    assert (tmp_path / "new" / "routing_tree.png").is_file()


@pytest.mark.parametrize(
    "png,message",
    [
        ("tree.txt", "has the extension .txt, which matplotlib cannot write"),
        ("tree", "has no extension"),
        ("file/tree.png", "is a file, so no folder can be made"),
    ],
)
@pytest.mark.parametrize("command", ["finetune", "inspect"])
def test_bad_png_stops_before_the_model_loads(tmp_path, capsys, command, png, message):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "run"
    args = TINY if command == "finetune" else ["--model", "tiny", *SMORE]
    argv = [command, *args, "--png", str(tmp_path / png), "--output-dir", str(out)]
    err = _stopped_before_the_model(capsys, argv)
    assert "--png" in err and message in err
    assert not (out / "trainer").exists() and not (out / "adapter_config.json").exists()


@pytest.mark.skipif(not _unwritable(), reason="needs a place this user cannot write")
def test_png_in_a_place_that_cannot_be_written_stops_early(tmp_path, capsys):
    argv = ["finetune", *TINY, "--png", str(UNWRITABLE / "tree.png"), "--output-dir"]
    err = _stopped_before_the_model(capsys, [*argv, str(tmp_path)])
    assert f"--png: cannot write in '{UNWRITABLE}'" in err and "writable place" in err
    argv = ["inspect", "--model", "tiny", "--output-dir", str(UNWRITABLE / "runs")]
    assert "--output-dir: cannot write in" in _stopped_before_the_model(capsys, argv)


# --- data records ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record,message",
    [
        ({**MC, "question": None}, "expected 'question' to be a string, got None"),
        ({**MC, "question": 7}, "expected 'question' to be a string, got 7"),
        ({"instruction": "Say hi", "output": None}, "expected 'output' to be a string"),
        ({"instruction": "Say hi", "input": 3, "output": "hi"}, "expected 'input' to be a string"),
    ],
)
def test_records_with_null_or_non_text_fields_are_rejected_with_file_and_line(
    tmp_path, record, message
):
    first = MC if "question" in record else {"instruction": "a", "output": "b"}
    path = _jsonl(tmp_path / "data.jsonl", [first, record])
    for read in (read_dataset, load_jsonl):
        with pytest.raises(ValueError, match=rf"data\.jsonl:2: {message}"):
            read(path)
    with pytest.raises(TypeError if "string" in message else ValueError, match="record 1: "):
        SFTDataset([first, record], byte_tokenizer(), max_length=64)


def test_cli_rejects_a_null_question_naming_file_and_line(tmp_path, capsys):
    data = _jsonl(tmp_path / "q.jsonl", [MC] * 9 + [{**MC, "question": None}])
    err = _stopped_before_the_model(capsys, ["finetune", *TINY, "--data", str(data)])
    assert "--data:" in err and "q.jsonl:10: expected 'question' to be a string" in err


def test_load_jsonl_and_sft_dataset_name_the_record_of_a_bad_answer(tmp_path):
    bad = {**MC, "answer": "Z"}
    path = _jsonl(tmp_path / "a.jsonl", [MC, "", bad])
    with pytest.raises(ValueError, match=r"a\.jsonl:3: answer 'Z' is neither"):
        load_jsonl(path)
    with pytest.raises(ValueError, match=r"record 1: answer 'Z' is neither"):
        SFTDataset([MC, bad], byte_tokenizer(), max_length=64)
    with pytest.raises(TypeError, match=r"record 2: expected 'choices' to be a list of str"):
        SFTDataset([MC, MC, {**MC, "choices": "rock, pear"}], byte_tokenizer(), max_length=64)


def test_n_test_taking_every_record_says_so_instead_of_blaming_the_file(tmp_path, capsys):
    data = _jsonl(tmp_path / "six.jsonl", [MC] * 6)
    argv = ["finetune", *TINY, "--data", str(data), "--n-test", "6", "--output-dir"]
    err = _stopped_before_the_model(capsys, [*argv, str(tmp_path / "run")])
    assert "--n-test: n_test=6 holds out all 6 records for testing" in err
    assert "leaves none for training" in err and "--eval-data" in err
    assert "accepted formats" not in err
    argv = ["eval", "--model", "tiny", "--data", str(data), "--n-test", "6", "--no-progress"]
    assert main(argv) == 0  # eval trains nothing: every record is a test question
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["n_test"] == 6


@pytest.mark.parametrize("flag", ["--config", "--eval-data", "--data"])
def test_a_folder_for_a_file_is_called_a_folder(tmp_path, capsys, flag):
    argv = ["eval", "--model", "tiny", flag, str(tmp_path)]
    err = _stopped_before_the_model(capsys, argv)
    assert "folder" in err and "does not exist" not in err


# --- YAML -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        (
            "smore: [1, 2]",
            "smore must be a mapping of settings (got the list [1, 2]), e.g. smore:",
        ),
        ("smore: 4", "smore must be a mapping of settings (got the int 4)"),
        ("model: [a, b]", "model must be one string (got the list ['a', 'b']), e.g. model: "),
        (
            "answer: {x: 1}",
            "answer must be one string (got the dict {'x': 1}), e.g. answer: letter",
        ),
        ("target_modules: 5", "target_modules must be a list of strings (got 5), e.g."),
    ],
)
def test_yaml_values_of_the_wrong_kind_say_what_is_expected(tmp_path, capsys, text, expected):
    config = tmp_path / "c.yaml"
    config.write_text(text + "\n")
    err = _stopped_before_the_model(capsys, ["finetune", "--config", str(config)])
    assert expected in err and "quote it" not in err


def test_yaml_scalar_for_a_string_still_says_quote_it(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("prompt: 5\n")
    err = _stopped_before_the_model(capsys, ["inspect", "--config", str(config)])
    assert "prompt must be a string (got 5); quote it" in err


# --- adapters that do not fit the model -----------------------------------------------------


@pytest.fixture(scope="module")
def foreign_lora(tmp_path_factory) -> Path:
    """A LoRA folder made for a narrower tiny Llama than ``--model tiny``."""
    from smore_gnn.hf.lora import LoRAMethod

    model, _ = tiny_llama(hidden_size=32, intermediate_size=48)
    folder = tmp_path_factory.mktemp("lora32") / "adapter"
    LoRAMethod().save(LoRAMethod().build(model, 2), folder)
    return folder


@pytest.mark.parametrize("command", ["eval", "inspect"])
def test_lora_of_another_model_is_one_line(tmp_path, capsys, foreign_lora, command):
    extra = ["--n-test", "2", "--no-progress"] if command == "eval" else []
    argv = [command, "--model", "tiny", "--adapter", str(foreign_lora), *extra]
    assert main([*argv, *(["--output-dir", str(tmp_path)] if command == "inspect" else [])]) == 2
    err = _one_line_error(capsys)
    assert f"--adapter: the adapter in {foreign_lora} does not fit this model" in err
    assert "model.layers.0.mlp.gate_proj.lora_A.weight: expected [2, 64], got [2, 32]" in err
    assert "(12)" in err and "base model it was trained on" in err


def _shown_warnings(argv: list[str], code: int, capsys: pytest.CaptureFixture) -> list[str]:
    """The warnings ``main(argv)`` lets through (pytest records them instead of printing)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(argv) == code, capsys.readouterr().err
    return [str(w.message) for w in caught]


@pytest.mark.parametrize("command", ["eval", "inspect"])
def test_lora_of_another_model_shows_no_warning_before_the_error(
    tmp_path, capsys, foreign_lora, command
):
    extra = ["--n-test", "2", "--no-progress"] if command == "eval" else []
    extra += ["--output-dir", str(tmp_path)] if command == "inspect" else []
    argv = [command, "--model", "tiny", "--adapter", str(foreign_lora), *extra]
    assert _shown_warnings(argv, 2, capsys) == []
    assert "does not fit this model" in _one_line_error(capsys)


def test_lora_of_another_model_leaves_one_line_on_the_stderr_of_the_command(foreign_lora):
    argv = ["eval", "--model", "tiny", "--adapter", str(foreign_lora), "--n-test", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "smore_gnn.cli", *argv, "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "does not fit this model" in proc.stderr


def test_warnings_of_a_lora_that_loads_are_kept(tmp_path, capsys):
    model, _ = tiny_llama()  # the model of --model tiny
    LoRAMethod().save(LoRAMethod().build(model, 2), tmp_path / "lora")
    argv = ["eval", "--model", "tiny", "--adapter", str(tmp_path / "lora"), "--n-test", "2"]
    assert _shown_warnings([*argv, "--no-progress"], 0, capsys)  # peft's, replayed


# --- inspect --health-data ------------------------------------------------------------------


@pytest.mark.parametrize("rows", [[{"instruction": "i", "output": "o"}], ["{oops"]])
def test_inspect_health_data_is_checked_before_the_model_loads(tmp_path, capsys, rows):
    data = _jsonl(tmp_path / "h.jsonl", rows)
    out = tmp_path / "out"
    argv = ["inspect", "--model", "tiny", "--health-data", str(data), "--output-dir", str(out)]
    assert "--health-data" in _stopped_before_the_model(capsys, argv)
    assert not (out / "routing_tree.png").exists()


# --- SMoREConfig.from_json ------------------------------------------------------------------


def test_from_json_of_json_that_is_not_an_object(tmp_path):
    with pytest.raises(TypeError, match=r"expected a JSON object of fields, got a list"):
        SMoREConfig.from_json("[1, 2]")
    with pytest.raises(ValueError, match=r"JSON text is not valid JSON"):
        SMoREConfig.from_json('{"rank": ')
    path = tmp_path / "c.json"
    path.write_text("[1, 2]\n")
    for given in (path, str(path)):
        with pytest.raises(TypeError, match=r"got a list from file .*c\.json"):
            SMoREConfig.from_json(given)
    with pytest.raises(TypeError, match=r"from_dict expected a dict of fields, got list"):
        SMoREConfig.from_dict([1, 2])
    assert SMoREConfig.from_json(' {"rank": [2, 2]}').rank == [2, 2]


# --- the data builder -----------------------------------------------------------------------


def _wordnet(folder: Path, noun_line: str, index_line: str = "cat n 1 0 1 1 00000100\n") -> Path:
    folder.mkdir()
    header = "  1 This software and database is being provided\n"
    (folder / "data.noun").write_text(header + noun_line)
    (folder / "data.verb").write_text(header)
    (folder / "index.noun").write_text(header + index_line)
    (folder / "index.verb").write_text(header)
    return folder


GOOD_NOUN = "00000100 05 n 01 cat 0 000 | a small feline\n"


@pytest.mark.parametrize(
    "noun,index,message",
    [
        (
            "00000100 05 n 03 cat 0 | a gloss\n",
            None,
            r"data\.noun:2: expected a WordNet data line",
        ),
        ("00000100 05 n 01 cat 0 0x1 | a gloss\n", None, r"data\.noun:2: expected a WordNet"),
        (
            "00000100 05 n 01 cat 0 001 @ 00000999 n 0000 | a gloss\n",
            None,
            r"data\.noun:2: synset 00000100-n points to 00000999-n, which no data file holds",
        ),
        (GOOD_NOUN, "cat n 2 0 1 1 00000100\n", r"index\.noun:2: expected a WordNet index line"),
        (GOOD_NOUN, "cat n 1 0 1 1 00000777\n", r"index\.noun:2: synset 00000777-n of 'cat'"),
    ],
)
def test_corrupt_wordnet_file_names_the_file_and_line(tmp_path, capsys, noun, index, message):
    from smore_gnn.data.__main__ import main as build

    folder = _wordnet(tmp_path / "wn", noun, *([index] if index else []))
    argv = ["build", "wordnet", "--wordnet-dir", str(folder), "--out", str(tmp_path / "o")]
    assert build([*argv, "--n-train", "1", "--n-test", "1"]) == 2
    err = _one_line_error(capsys)
    assert err.startswith("python -m smore_gnn.data build wordnet: error: ")
    assert "reinstall wordnet-base" in err and re.search(message, err), err


@pytest.mark.parametrize("name", ["wordnet", "multitask"])
def test_data_builder_user_errors_are_one_line(tmp_path, capsys, name):
    from smore_gnn.data.__main__ import main as build

    out = str(tmp_path / "o")
    missing = ["--wordnet-dir", str(tmp_path / "none"), "--dictd-dir", str(tmp_path / "none")]
    assert build(["build", name, "--out", out, *missing, "--tokenizer", "none"]) == 2
    err = _one_line_error(capsys)
    assert ("wordnet-base" if name == "wordnet" else "apt-get install dict-") in err
    assert not Path(out).exists()  # the sources are checked before anything is written
    wordnet = _wordnet(tmp_path / "wn", GOOD_NOUN)
    argv = ["build", "wordnet", "--wordnet-dir", str(wordnet), "--n-train", "-1", "--out", out]
    assert build(argv) == 2 and "--n-train" in _one_line_error(capsys)
    if _unwritable():
        argv = ["build", "wordnet", "--wordnet-dir", str(wordnet), "--out", str(UNWRITABLE / "o")]
        assert build(argv) == 2
        assert "--out" in _one_line_error(capsys)


def test_foldoc_entry_without_a_name_line_names_the_file_and_line(tmp_path, capsys):
    from smore_gnn.data.__main__ import main as build
    from smore_gnn.data.multitask import DICTD_DATABASES
    from tests.test_multitask import write_db

    dictd = tmp_path / "dictd"
    dictd.mkdir()
    for name in DICTD_DATABASES.values():
        write_db(dictd, name, [("stub", "stub\n")])
    good = ("compiler", "compiler\n\n   <programming> A program that translates code.\n\n")
    nameless = ("linker", "\n\n   <programming> A program that joins object files.\n\n")
    write_db(dictd, "foldoc", [good, nameless])
    argv = ["build", "multitask", "--dictd-dir", str(dictd), "--tokenizer", "none"]
    argv += ["--wordnet-dir", str(_wordnet(tmp_path / "wn", GOOD_NOUN))]
    assert build([*argv, "--out", str(tmp_path / "o"), "--n-train", "1", "--n-test", "1"]) == 2
    err = _one_line_error(capsys)
    assert err.startswith("python -m smore_gnn.data build multitask: error: ")
    assert f"{dictd / 'foldoc.index'}:2: expected FOLDOC entry 'linker'" in err, err
    assert "reinstall dict-foldoc" in err

"""smore_gnn.data.records: JSONL loading and validation, templates, tokenization, collation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from smore_gnn.data.records import (
    IGNORE_INDEX,
    SFTDataset,
    answer_index,
    collate,
    detect_format,
    format_example,
    load_jsonl,
    make_collator,
    tokenize_example,
)
from smore_gnn.hf.testing import byte_tokenizer, tiny_llama

MC = {"question": "What is 2+2?", "choices": ["3", "4", "5"], "answer": 1}
SFT = {"instruction": "Say hi", "input": "to Bob", "output": "Hi Bob"}


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return byte_tokenizer()


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_jsonl_reads_records_and_skips_blank_lines(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", [json.dumps(MC), "", json.dumps(SFT)])
    assert load_jsonl(path) == [MC, SFT]


def test_load_jsonl_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_jsonl(tmp_path / "missing.jsonl")
    bad = write_lines(tmp_path / "bad.jsonl", [json.dumps(MC), json.dumps(MC), "{oops"])
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: .*invalid JSON"):
        load_jsonl(bad)
    not_obj = write_lines(tmp_path / "list.jsonl", ["[1, 2]"])
    with pytest.raises(ValueError, match=r"list\.jsonl:1: expected a JSON object, got list"):
        load_jsonl(not_obj)


def test_detect_format() -> None:
    assert detect_format([MC, MC]) == "mc"
    assert detect_format([SFT, {"instruction": "x", "output": "y"}]) == "sft"
    with pytest.raises(ValueError, match=r"\['prompt', 'response'\].*instruction.*question"):
        detect_format([{"prompt": "p", "response": "r"}])
    with pytest.raises(ValueError, match="record 1 is 'sft' but record 0 is 'mc'"):
        detect_format([MC, SFT])
    with pytest.raises(ValueError, match="at least one record"):
        detect_format([])


@pytest.mark.parametrize(("answer", "expected"), [(2, 2), ("5", 2), ("C", 2), ("b", 1), (0, 0)])
def test_answer_index_accepts_index_text_and_letter(answer: object, expected: int) -> None:
    assert answer_index({**MC, "answer": answer}) == expected


def test_answer_index_prefers_choice_text_over_letter() -> None:
    assert answer_index({"question": "q", "choices": ["B", "A"], "answer": "A"}) == 1


@pytest.mark.parametrize(
    ("answer", "error"),
    [(3, ValueError), ("D", ValueError), ("seven", ValueError), (True, TypeError)],
)
def test_answer_index_rejects_bad_answers(answer: object, error: type) -> None:
    with pytest.raises(error):
        answer_index({**MC, "answer": answer})


def test_templates() -> None:
    prompt, target = format_example(MC)
    assert prompt == "What is 2+2?\nA. 3\nB. 4\nC. 5\nAnswer:"
    assert target == " B"
    prompt, target = format_example(SFT)
    assert prompt == "### Instruction:\nSay hi\n\n### Input:\nto Bob\n\n### Response:\n"
    assert target == "Hi Bob"
    prompt, _ = format_example({"instruction": "Say hi", "input": "", "output": "hi"})
    assert "### Input" not in prompt


def test_tokenize_example_masks_the_prompt_only(tok: PreTrainedTokenizerFast) -> None:
    for record, eos in ((MC, []), (SFT, [tok.eos_token_id])):
        prompt, target = format_example(record)
        prompt_ids = tok(prompt)["input_ids"]
        target_ids = tok(target, add_special_tokens=False)["input_ids"] + eos
        ex = tokenize_example(record, tok, max_length=512)
        assert ex["input_ids"] == prompt_ids + target_ids
        assert ex["labels"] == [IGNORE_INDEX] * len(prompt_ids) + target_ids
        assert ex["attention_mask"] == [1] * len(ex["input_ids"])


def test_tokenize_example_truncates_the_prompt_from_the_left(tok: PreTrainedTokenizerFast) -> None:
    ex = tokenize_example(MC, tok, max_length=6)
    assert len(ex["input_ids"]) == 6
    assert tok.decode(ex["input_ids"]) == "wer: B"
    assert ex["labels"][-2:] == tok(" B", add_special_tokens=False)["input_ids"]
    assert ex["labels"][:-2] == [IGNORE_INDEX] * 4


def test_collate_right_pads_with_masked_labels(tok: PreTrainedTokenizerFast) -> None:
    short = tokenize_example(MC, tok, 512)
    long = tokenize_example(SFT, tok, 512)
    batch = make_collator(tok)([short, long])
    n_short, n_long = len(short["input_ids"]), len(long["input_ids"])
    assert batch["input_ids"].shape == (2, n_long) and batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][0, n_short:].eq(tok.pad_token_id).all()
    assert batch["attention_mask"].sum(1).tolist() == [n_short, n_long]
    # Loss positions are exactly the answer tokens: " B" (2 bytes) and "Hi Bob" + eos (7).
    assert (batch["labels"] != IGNORE_INDEX).sum(1).tolist() == [2, 7]
    assert batch["labels"][0, n_short:].eq(IGNORE_INDEX).all()


def test_make_collator_falls_back_to_eos(tok: PreTrainedTokenizerFast) -> None:
    class NoPad:
        pad_token_id = None
        eos_token_id = 7

    batch = make_collator(NoPad())([{"input_ids": [1, 2, 3]}, {"input_ids": [4]}])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]]
    with pytest.raises(ValueError, match="empty batch"):
        collate([], 0)


def test_dataset_trains_with_hf_trainer(tmp_path: Path) -> None:
    from transformers import Trainer, TrainingArguments

    model, tok = tiny_llama()
    data = SFTDataset([MC, {**MC, "answer": 0}] * 4, tok, max_length=128)
    assert len(data) == 8 and data.format == "mc"
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    before = model.model.embed_tokens.weight.detach().clone()
    result = Trainer(
        model=model, args=args, train_dataset=data, data_collator=make_collator(tok)
    ).train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(before, model.model.embed_tokens.weight.detach())

"""JSONL data for fine-tuning: instruction SFT and multiple-choice records.

Two record formats are accepted, auto-detected per file:

* instruction SFT: ``{"instruction": str, "input": str (optional), "output": str}``
* multiple choice: ``{"question": str, "choices": list[str], "answer": int | str}`` where the
  answer is a choice index, the choice text, or its letter (``"A"``, ``"B"``, ...).

Loss is only taken on answer tokens: prompt tokens and padding get the label ``-100``.
"""

from __future__ import annotations

import functools
import json
import string
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

Record = dict[str, Any]  # one JSONL record (SFT or multiple choice)
IGNORE_INDEX = -100
LETTERS = string.ascii_uppercase
SFT_KEYS = frozenset({"instruction", "output"})
MC_KEYS = frozenset({"question", "choices", "answer"})
ANSWERS = ("letter", "text")
_FORMATS_HELP = (
    "accepted formats: instruction SFT {instruction, input (optional), output} or multiple "
    "choice {question, choices: list[str], answer: int index | choice text | letter}"
)


def _numbered_records(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` of every non-blank line of a JSON-lines file."""
    path = Path(path)
    msg = f"expected a JSONL file (one JSON object per line), got {str(path)!r}"
    if path.is_dir():
        raise IsADirectoryError(f"{msg}, which is a folder; pass the .jsonl file inside it")
    if not path.is_file():
        raise FileNotFoundError(f"{msg}, which does not exist; check the path")
    records: list[tuple[int, dict[str, Any]]] = []
    for lineno, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            msg = f"{path}:{lineno}: expected UTF-8 text, got byte {raw[err.start]:#04x} at "
            raise ValueError(f"{msg}column {err.start + 1}; re-save the file as UTF-8") from err
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            msg = f"{path}:{lineno}: expected one JSON object per line, got invalid JSON"
            raise ValueError(f"{msg} ({err.msg}); fix or remove that line") from err
        if not isinstance(record, dict):
            msg = f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}"
            raise ValueError(f"{msg}; wrap the line in {{...}}")
        records.append((lineno, record))
    return records


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a UTF-8 JSON-lines file, in order (blank lines are skipped).

    Each record is checked on its own (:func:`check_record`); unlike :func:`read_dataset`,
    records of both formats may share a file. Raises FileNotFoundError if ``path`` does not
    exist and ValueError naming ``path:line`` if a line is not UTF-8, not JSON, not an object
    or not a valid record.
    """
    numbered = _numbered_records(path)
    for lineno, record in numbered:
        try:
            check_record(record)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}:{lineno}: {err}") from err
    return [record for _, record in numbered]


def read_dataset(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL training or evaluation file and validate every record up front.

    All records must share one format (SFT or multiple choice) and every multiple-choice
    answer must resolve to a choice. Raises FileNotFoundError if ``path`` does not exist, and
    ValueError on bad bytes or JSON, an empty file, a record of no or another format, or a bad
    answer (the message starts with ``path:line:`` and ends with the fix).
    """
    numbered = _numbered_records(path)
    if not numbered:
        raise ValueError(f"{path}: expected at least one record, got none; {_FORMATS_HELP}")
    formats: list[str] = []
    for lineno, record in numbered:
        try:
            formats.append(fmt := check_record(record))
            if fmt != formats[0]:
                raise ValueError(
                    f"record is {fmt!r}, line {numbered[0][0]} is {formats[0]!r}; "
                    "put one format per file"
                )
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}:{lineno}: {err}") from err
    return [record for _, record in numbered]


def record_format(record: dict[str, Any]) -> str:
    """``"sft"`` or ``"mc"`` for one record; ValueError naming its keys if neither."""
    keys = set(record)
    if keys >= MC_KEYS:
        return "mc"
    if keys >= SFT_KEYS:
        return "sft"
    raise ValueError(f"record has keys {sorted(keys)}, matching no format; {_FORMATS_HELP}")


def check_record(record: dict[str, Any]) -> str:
    """The format of one record after checking its fields (``"sft"`` or ``"mc"``).

    Raises:
        TypeError: If a text field is not a string (``"question": null``, a number, ...),
            ``choices`` is not a list of strings or ``answer`` not an int/str.
        ValueError: If the keys match no format or the answer matches no choice.
    """
    fmt = record_format(record)
    texts = {"mc": ("question",), "sft": ("instruction", "output", "input")}[fmt]
    for key in texts:
        value = record.get(key)
        if key == "input" and value is None:
            continue  # optional
        if not isinstance(value, str):
            raise TypeError(f"expected {key!r} to be a string, got {value!r}; give its text")
    if fmt == "mc":
        answer_index(record)
    return fmt


def detect_format(records: Sequence[dict[str, Any]]) -> str:
    """The format shared by all ``records`` (``"sft"`` or ``"mc"``); ValueError if none/mixed."""
    if not records:
        raise ValueError(f"expected at least one record, got none; {_FORMATS_HELP}")
    fmt = record_format(records[0])
    for i, record in enumerate(records):
        if record_format(record) != fmt:
            msg = f"record {i} is {record_format(record)!r} but record 0 is {fmt!r}"
            raise ValueError(f"{msg}; put one format per file")
    return fmt


def answer_index(record: dict[str, Any]) -> int:
    """Resolve a multiple-choice answer (index, choice text or letter) to a choice index.

    Choice text takes precedence over a letter when both would match.

    Raises:
        TypeError: If ``choices`` is not a list of strings or ``answer`` not an int/str.
        ValueError: If the answer matches no choice.
    """
    choices, answer = record["choices"], record["answer"]
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise TypeError(f"expected 'choices' to be a list of str, got {choices!r}")
    if not 2 <= len(choices) <= len(LETTERS):
        raise ValueError(f"expected 2..{len(LETTERS)} choices, got {len(choices)}")
    if isinstance(answer, bool) or not isinstance(answer, int | str):
        raise TypeError(f"expected 'answer' to be an int index or a str, got {answer!r}")
    if isinstance(answer, int):
        if not 0 <= answer < len(choices):
            msg = f"answer index {answer} is out of range for {len(choices)} choices"
            raise ValueError(f"{msg}; use 0..{len(choices) - 1}")
        return answer
    stripped = answer.strip()
    if stripped in choices:
        return choices.index(stripped)
    letter = stripped.upper().rstrip(".)")
    if len(letter) == 1 and letter in LETTERS[: len(choices)]:
        return LETTERS.index(letter)
    msg = f"answer {answer!r} is neither a choice text nor a letter A..{LETTERS[len(choices) - 1]}"
    raise ValueError(f"{msg}; choices are {choices}")


def mc_prompt(record: dict[str, Any]) -> str:
    """Multiple-choice prompt: question, lettered choices one per line, then ``Answer:``."""
    lines = [str(record["question"]).strip()]
    lines += [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(record["choices"])]
    return "\n".join(lines) + "\nAnswer:"


def format_example(record: dict[str, Any], answer: str = "letter") -> tuple[str, str]:
    """Split a record into ``(prompt, target)`` text (the EOS token is added at tokenization).

    The multiple-choice target is a space then the letter (``" B"``), or with
    ``answer="text"`` a space then the choice text (``" pear"``).
    """
    if answer not in ANSWERS:
        raise ValueError(f"answer must be 'letter' or 'text' (got {answer!r})")
    if check_record(record) == "mc":
        index = answer_index(record)
        choice = LETTERS[index] if answer == "letter" else record["choices"][index]
        return mc_prompt(record), " " + choice
    prompt = f"### Instruction:\n{str(record['instruction']).strip()}\n\n"
    if str(record.get("input") or "").strip():
        prompt += f"### Input:\n{str(record['input']).strip()}\n\n"
    return prompt + "### Response:\n", str(record["output"])


def choice_ids(record: dict[str, Any], tokenizer: Any) -> list[list[int]]:
    """Token ids of each choice's text as a continuation of the prompt (``" " + text``)."""
    return [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in record["choices"]]


def _token_parts(record: dict[str, Any], tokenizer: Any, answer: str) -> tuple[list, list]:
    """Untruncated ``(prompt_ids, target_ids)``; SFT targets end with ``eos``."""
    prompt, target = format_example(record, answer)
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if record_format(record) == "sft" and tokenizer.eos_token_id is not None:
        target_ids = [*target_ids, tokenizer.eos_token_id]
    return prompt_ids, target_ids


def _fit(prompt_ids: list[int], target_ids: list[int], max_length: int) -> dict[str, list]:
    """Concatenate, cutting the prompt from the left (then the target from the right)."""
    if max_length < 1:
        raise ValueError(f"expected max_length >= 1, got {max_length}")
    target_ids = target_ids[:max_length]
    keep = max_length - len(target_ids)
    prompt_ids = prompt_ids[max(0, len(prompt_ids) - keep) :] if keep > 0 else []
    ids, labels = [*prompt_ids, *target_ids], [IGNORE_INDEX] * len(prompt_ids) + list(target_ids)
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def tokenize_example(
    record: dict[str, Any], tokenizer: Any, max_length: int, answer: str = "letter"
) -> dict[str, list]:
    """Tokenize one record; labels are ``-100`` on the prompt so loss is on the answer only.

    Prompt and target (``answer``: see :func:`format_example`) are tokenized separately and
    concatenated, so the prompt/answer boundary is exact. SFT targets are followed by ``eos``.
    Over-long examples lose prompt tokens from the left (the answer is kept); no padding is
    added here (see :func:`collate`). Returns ``{"input_ids", "attention_mask", "labels"}``.
    """
    return _fit(*_token_parts(record, tokenizer, answer), max_length)


class SFTDataset(Dataset):
    """A torch ``Dataset`` of tokenized records (SFT or multiple choice), tokenized up front.

    Examples longer than ``max_length`` lose prompt tokens from the left, with a warning that
    counts them. An example whose answer alone fills ``max_length`` (e.g. ``max_length=1``)
    would keep no prompt token, nothing to condition on, so it is refused.
    """

    def __init__(
        self,
        records: Sequence[dict],
        tokenizer: Any,
        max_length: int = 512,
        answer: str = "letter",
    ):
        """Validate and tokenize ``records``; errors name the record (its index in ``records``).

        Raises:
            TypeError: If a record has a field of the wrong type.
            ValueError: On mixed formats, a bad answer or an example with no prompt token.
        """
        if answer not in ANSWERS:
            raise ValueError(f"answer must be 'letter' or 'text' (got {answer!r})")
        self.format = detect_format(records)
        self.records = list(records)
        parts = []
        for i, record in enumerate(self.records):
            try:
                parts.append(_token_parts(record, tokenizer, answer))
            except (TypeError, ValueError) as err:
                raise type(err)(f"record {i}: {err}") from err
        self.examples = [_fit(prompt, target, max_length) for prompt, target in parts]
        no_prompt = [i for i, ex in enumerate(self.examples) if ex["labels"][0] != IGNORE_INDEX]
        if no_prompt:
            need, first = max(len(parts[i][1]) for i in no_prompt) + 1, no_prompt[0]
            raise ValueError(
                f"{len(no_prompt)} of {len(records)} examples keep no prompt token "
                f"at max_length={max_length} (their answer fills it; first: record "
                f"{first}); use max_length >= {need} or drop them"
            )
        cut = [len(p) + len(t) - max_length for p, t in parts if len(p) + len(t) > max_length]
        if cut:
            warnings.warn(
                f"{len(cut)} of {len(records)} examples are longer than max_length={max_length} "
                f"and lose up to {max(cut)} prompt tokens from the left; raise max_length to "
                f"{max_length + max(cut)} to keep whole prompts",
                stacklevel=2,
            )

    def __len__(self) -> int:
        """Number of examples."""
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list]:
        """The tokenized example at ``index``."""
        return self.examples[index]


def pad_id_of(tokenizer: Any) -> int:
    """The tokenizer's pad id, falling back to eos; ValueError if it has neither."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return int(pad)


def collate(
    features: Sequence[dict[str, Any]], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest example, as ``long`` tensors; padded labels are ``-100``.

    Keys: ``input_ids``, ``attention_mask`` and, if the features have them, ``labels``. With
    ``pad_to_multiple_of`` (e.g. 64) the width is rounded up to a multiple of it, so that a
    compiled model sees few distinct shapes (length bucketing).
    """
    if not features:
        raise ValueError("expected a non-empty batch of features, got none")
    width = max(len(f["input_ids"]) for f in features)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    fill = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    rows = {
        key: [list(f[key]) + [value] * (width - len(f[key])) for f in features]  # [B, width]
        for key, value in fill.items()
        if key in features[0]
    }
    return {key: torch.tensor(r, dtype=torch.long) for key, r in rows.items()}


def make_collator(
    tokenizer: Any, pad_to_multiple_of: int | None = None
) -> Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]]:
    """A ``data_collator`` for the HF ``Trainer`` using the tokenizer's pad (or eos) id
    (``pad_to_multiple_of``: see :func:`collate`)."""
    return functools.partial(
        collate, pad_token_id=pad_id_of(tokenizer), pad_to_multiple_of=pad_to_multiple_of
    )


def split_train_test(
    records: Sequence[Record], eval_records: Sequence[Record] | None, n_train: int, n_test: int
) -> tuple[list[Record], list[Record]]:
    """The fine-tuning split policy: at most ``n_train`` training and ``n_test`` test records.

    With ``eval_records`` the test set is their first ``n_test``. Without, multiple-choice
    ``records`` hold out their last ``n_test`` records as the test set (SFT records have no
    multiple-choice test set). Training uses the first ``n_train`` of what remains. Raises
    ValueError if ``n_train`` or ``n_test`` is negative, or if training records are asked for
    (``n_train > 0``) and the held-out tail takes every record.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"n_train and n_test must be >= 0 (got {n_train}, {n_test})")
    train, test = list(records), list(eval_records or [])
    if eval_records is None and n_test > 0 and train and detect_format(train) == "mc":
        if n_train > 0 and n_test >= len(train):
            raise ValueError(
                f"n_test={n_test} holds out all {len(train)} records for testing and leaves "
                f"none for training; use n_test < {len(train)} or give the test questions "
                "separately (--eval-data)"
            )
        train, test = train[:-n_test], train[-n_test:]  # hold the tail out
    return train[:n_train], test[:n_test]

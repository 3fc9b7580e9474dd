"""JSONL data for fine-tuning: instruction SFT and multiple-choice records.

Two record formats are accepted, auto-detected per file:

* instruction SFT: ``{"instruction": str, "input": str (optional), "output": str}``
* multiple choice: ``{"question": str, "choices": list[str], "answer": int | str}`` where the
  answer is a choice index, the choice text, or its letter (``"A"``, ``"B"``, ...).

Loss is only taken on answer tokens: prompt tokens and padding get the label ``-100``.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

IGNORE_INDEX = -100
LETTERS = string.ascii_uppercase
SFT_KEYS = frozenset({"instruction", "output"})
MC_KEYS = frozenset({"question", "choices", "answer"})
_FORMATS_HELP = (
    "accepted formats: instruction SFT {instruction, input (optional), output} or multiple "
    "choice {question, choices: list[str], answer: int index | choice text | letter}"
)


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file (one JSON object per line; blank lines are skipped).

    Args:
        path: File to read.

    Returns:
        The records, in file order.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If a line is not valid JSON or not a JSON object (the line number is given).
    """
    path = Path(path)
    if not path.is_file():
        msg = f"expected a JSONL file (one JSON object per line), got {str(path)!r}"
        raise FileNotFoundError(f"{msg}, which does not exist; check the path")
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
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
            records.append(record)
    return records


def record_format(record: dict[str, Any]) -> str:
    """Return ``"sft"`` or ``"mc"`` for one record.

    Raises:
        ValueError: If the record matches neither format (the keys seen are named).
    """
    keys = set(record)
    if keys >= MC_KEYS:
        return "mc"
    if keys >= SFT_KEYS:
        return "sft"
    raise ValueError(f"record has keys {sorted(keys)}, matching no format; {_FORMATS_HELP}")


def detect_format(records: Sequence[dict[str, Any]]) -> str:
    """Detect the format shared by all records of a file (``"sft"`` or ``"mc"``).

    Raises:
        ValueError: If there are no records, or records mix formats or match none.
    """
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


def format_example(record: dict[str, Any]) -> tuple[str, str]:
    """Split a record into ``(prompt, target)`` text (the EOS token is added at tokenization).

    The multiple-choice target is a space then the letter, e.g. ``" B"``.
    """
    if record_format(record) == "mc":
        return mc_prompt(record), " " + LETTERS[answer_index(record)]
    prompt = f"### Instruction:\n{str(record['instruction']).strip()}\n\n"
    if str(record.get("input") or "").strip():
        prompt += f"### Input:\n{str(record['input']).strip()}\n\n"
    return prompt + "### Response:\n", str(record["output"])


def tokenize_example(record: dict[str, Any], tokenizer: Any, max_length: int) -> dict[str, list]:
    """Tokenize one record; labels are ``-100`` on the prompt so loss is on the answer only.

    Prompt and target are tokenized separately and concatenated, so the prompt/answer boundary
    is exact. SFT targets are followed by ``eos``. Over-long examples lose prompt tokens from the
    left (the answer is kept); no padding is added here (see :func:`collate`).

    Args:
        record: An SFT or multiple-choice record.
        tokenizer: Any Hugging Face tokenizer.
        max_length: Maximum number of tokens.

    Returns:
        ``{"input_ids", "attention_mask", "labels"}`` as lists of ints.
    """
    if max_length < 1:
        raise ValueError(f"expected max_length >= 1, got {max_length}")
    prompt, target = format_example(record)
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if record_format(record) == "sft" and tokenizer.eos_token_id is not None:
        target_ids = [*target_ids, tokenizer.eos_token_id]
    target_ids = target_ids[:max_length]
    keep = max_length - len(target_ids)
    prompt_ids = prompt_ids[max(0, len(prompt_ids) - keep) :] if keep > 0 else []
    return {
        "input_ids": [*prompt_ids, *target_ids],
        "attention_mask": [1] * (len(prompt_ids) + len(target_ids)),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + list(target_ids),
    }


class SFTDataset(Dataset):
    """A torch ``Dataset`` of tokenized records (SFT or multiple choice), tokenized up front."""

    def __init__(self, records: Sequence[dict[str, Any]], tokenizer: Any, max_length: int = 512):
        """Validate the format of ``records`` and tokenize them with ``tokenizer``."""
        self.format = detect_format(records)
        self.records = list(records)
        self.examples = [tokenize_example(r, tokenizer, max_length) for r in self.records]

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


def collate(features: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest example; padded labels are ``-100``.

    Returns:
        ``input_ids``, ``attention_mask`` and (if present) ``labels`` as ``long`` tensors.
    """
    if not features:
        raise ValueError("expected a non-empty batch of features, got none")
    width = max(len(f["input_ids"]) for f in features)
    fill = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    batch: dict[str, torch.Tensor] = {}
    for key, value in fill.items():
        if key not in features[0]:
            continue
        rows = [list(f[key]) + [value] * (width - len(f[key])) for f in features]
        batch[key] = torch.tensor(rows, dtype=torch.long)
    return batch


def make_collator(tokenizer: Any) -> Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]]:
    """A ``data_collator`` for the HF ``Trainer`` using the tokenizer's pad (or eos) id."""
    pad = pad_id_of(tokenizer)
    return lambda features: collate(features, pad)


@torch.no_grad()
def multiple_choice_accuracy(
    model: Any,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score each option by the log-likelihood of its letter (``" A"``, ...) after the prompt.

    Each (question, option) pair is one sequence ``prompt + letter tokens``; the option's score
    is the summed log-probability of its letter tokens and the prediction is the argmax.

    Args:
        model: A causal LM called as ``model(input_ids=..., attention_mask=...)`` with ``.logits``.
        tokenizer: The model's tokenizer.
        records: Multiple-choice records.
        batch_size: Questions per forward pass.
        device: Where to run; defaults to the model's device (CPU if it has no parameters).
        progress: Show a tqdm progress bar.

    Returns:
        ``{"accuracy": float, "n": int, "predictions": list[int]}``.
    """
    if batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size}")
    if records and detect_format(records) != "mc":
        raise ValueError("expected multiple-choice records {question, choices, answer}, got SFT")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = getattr(model, "training", False)
    model.eval()
    pad, predictions, correct = pad_id_of(tokenizer), [], 0
    letters = [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in LETTERS]
    starts = range(0, len(records), batch_size)
    for start in tqdm(starts, desc="MC accuracy", disable=not progress):
        chunk = records[start : start + batch_size]
        seqs, spans, owners = [], [], []
        for q, record in enumerate(chunk):
            prompt_ids = tokenizer(mc_prompt(record), add_special_tokens=True)["input_ids"]
            for letter_ids in letters[: len(record["choices"])]:
                full = [*prompt_ids, *letter_ids]
                seqs.append({"input_ids": full, "attention_mask": [1] * len(full)})
                spans.append((len(prompt_ids), len(letter_ids)))
                owners.append(q)
        batch = collate(seqs, pad)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        scores: list[list[float]] = [[] for _ in chunk]
        for row, ((offset, n_tok), q) in enumerate(zip(spans, owners, strict=True)):
            pos = torch.arange(offset - 1, offset - 1 + n_tok)
            targets = batch["input_ids"][row, offset : offset + n_tok]
            scores[q].append(float(logprobs[row, pos, targets].sum()))
        for q, record in enumerate(chunk):
            pred = max(range(len(scores[q])), key=scores[q].__getitem__)
            predictions.append(pred)
            correct += int(pred == answer_index(record))
    if was_training:
        model.train()
    n = len(records)
    return {"accuracy": correct / n if n else 0.0, "n": n, "predictions": predictions}

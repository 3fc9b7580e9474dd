"""Multiple-choice evaluation: score each option, predict the best, report accuracy per task.

:func:`evaluate_mc` is the entry point. Two scorings (``answer=``):

* ``"text"``: an option's score is the summed log-probability of its text (``" pear"``) after
  the prompt that lists the choices (lm-eval-harness ``acc``): :func:`answer_text_accuracy`.
* ``"letter"``: an option's score is the log-probability of its letter (``" B"``) after the
  prompt: :func:`letter_accuracy` (one forward per question) and
  :func:`multiple_choice_accuracy` (one sequence per option; the reference definition).

The prompt is :func:`smore_gnn.data.records.mc_prompt`. Every scorer runs the batching,
eval-mode and argmax loop of :func:`_score_questions`; the model's train/eval mode is restored
afterwards.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from smore_gnn.data import records as mc
from smore_gnn.hf.model import SMoREModel

__all__ = [
    "answer_text_accuracy",
    "batches",
    "evaluate_mc",
    "letter_accuracy",
    "multiple_choice_accuracy",
]
ANSWERS = mc.ANSWERS  # the answer scorings, defined with the formats in smore_gnn.data.records


def batches(
    records: Sequence[dict[str, Any]], batch_size: int, desc: str = "MC", progress: bool = False
) -> Iterator[Sequence[dict[str, Any]]]:
    """Consecutive chunks of ``batch_size`` records (the last may be shorter), with a tqdm bar.

    Raises ValueError if ``batch_size`` is not an int >= 1.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1 (got {batch_size!r})")
    for start in tqdm(range(0, len(records), batch_size), desc, disable=not progress):
        yield records[start : start + batch_size]


def _prompt_ids(
    record: dict[str, Any], tokenizer: Any, max_length: int | None, reserve: int
) -> list[int]:
    """Prompt token ids, cut from the left so that ``reserve`` answer tokens still fit."""
    ids = tokenizer(mc.mc_prompt(record))["input_ids"]
    return ids if max_length is None else ids[-max(1, max_length - reserve) :]


def _letter_ids(tokenizer: Any) -> list[list[int]]:
    """Token ids of each answer letter as it follows the prompt (``" A"``, ``" B"``, ...)."""
    return [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in mc.LETTERS]


def _score_questions(
    model: nn.Module,
    records: Sequence[dict[str, Any]],
    batch_size: int,
    desc: str,
    progress: bool,
    score_chunk: Callable[[Sequence[dict[str, Any]], torch.device], list[list[float]]],
    with_scores: bool = False,
) -> dict[str, Any]:
    """The loop every scorer shares: eval mode, batches, the best-scored option per question.

    ``score_chunk(chunk, device)`` gives one list of option scores per record of ``chunk``; a
    prediction is the index of the first highest score. The train/eval mode is restored after,
    also if ``score_chunk`` raises. Returns ``{"accuracy", "n", "predictions"}`` (+ ``"scores"``).
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    scores: list[list[float]] = []
    try:
        for chunk in batches(records, batch_size, desc, progress):
            scores.extend(score_chunk(chunk, device))
    finally:
        model.train(was_training)
    predictions = [max(range(len(s)), key=s.__getitem__) for s in scores]
    correct = sum(int(p == mc.answer_index(r)) for p, r in zip(predictions, records, strict=True))
    n = len(records)
    result = {"accuracy": correct / n if n else 0.0, "n": n, "predictions": predictions}
    return {**result, "scores": scores} if with_scores else result


@torch.no_grad()
def multiple_choice_accuracy(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    batch_size: int = 8,
    progress: bool = False,
    max_length: int | None = None,
) -> dict[str, Any]:
    """Letter scoring, one sequence ``prompt + letter tokens`` per (question, option) pair.

    The option's score is the summed log-probability of its letter tokens; the prediction is
    the argmax. This is the reference definition that :func:`letter_accuracy` speeds up.

    Returns:
        ``{"accuracy": float, "n": int, "predictions": list[int]}``.
    """
    if records and mc.detect_format(records) != "mc":
        raise ValueError("expected multiple-choice records {question, choices, answer}, got SFT")
    pad, letters = mc.pad_id_of(tokenizer), _letter_ids(tokenizer)
    reserve = max((len(ids) for ids in letters), default=1)

    def score_chunk(chunk: Sequence[dict[str, Any]], device: torch.device) -> list[list[float]]:
        seqs, spans, owners = [], [], []
        for q, record in enumerate(chunk):
            prompt_ids = _prompt_ids(record, tokenizer, max_length, reserve)
            for letter_ids in letters[: len(record["choices"])]:
                full = [*prompt_ids, *letter_ids]
                seqs.append({"input_ids": full, "attention_mask": [1] * len(full)})
                spans.append((len(prompt_ids), len(letter_ids)))
                owners.append(q)
        batch = mc.collate(seqs, pad)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        logprobs = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1).cpu()
        scores: list[list[float]] = [[] for _ in chunk]
        for row, ((offset, n_tok), q) in enumerate(zip(spans, owners, strict=True)):
            pos = torch.arange(offset - 1, offset - 1 + n_tok)
            targets = batch["input_ids"][row, offset : offset + n_tok]
            scores[q].append(float(logprobs[row, pos, targets].sum()))
        return scores

    return _score_questions(model, records, batch_size, "MC accuracy", progress, score_chunk)


@torch.no_grad()
def letter_accuracy(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    batch_size: int = 16,
    progress: bool = False,
    max_length: int | None = None,
) -> dict[str, Any]:
    """Letter scoring as :func:`multiple_choice_accuracy` defines it, one forward per question.

    When every answer letter is one token, an option's score is the log-probability of its
    letter after the shared prompt, so one forward per question gives the same predictions;
    otherwise this falls back to :func:`multiple_choice_accuracy`.
    """
    n_choices = max((len(r["choices"]) for r in records), default=0)
    letters = _letter_ids(tokenizer)[:n_choices]
    if any(len(ids) != 1 for ids in letters):
        args = (batch_size, progress, max_length)
        return multiple_choice_accuracy(model, tokenizer, records, *args)
    letter_ids, pad = torch.tensor([ids[0] for ids in letters]), mc.pad_id_of(tokenizer)

    def score_chunk(chunk: Sequence[dict[str, Any]], device: torch.device) -> list[list[float]]:
        feats = [
            {"input_ids": ids, "attention_mask": [1] * len(ids)}
            for ids in (_prompt_ids(r, tokenizer, max_length, 1) for r in chunk)
        ]
        batch = {k: v.to(device) for k, v in mc.collate(feats, pad).items()}
        last = batch["attention_mask"].sum(1) - 1  # [B] position of each prompt's last token
        keep = torch.unique(last)  # only these positions need the (large) vocabulary head
        logits = model(**batch, logits_to_keep=keep).logits.float()  # [B, K, V]
        column = torch.searchsorted(keep, last) if logits.size(1) == keep.numel() else last
        logprobs = logits[torch.arange(len(chunk)), column].log_softmax(-1).cpu()  # [B, V]
        return [
            logprobs[row, letter_ids[: len(record["choices"])]].tolist()
            for row, record in enumerate(chunk)
        ]

    return _score_questions(model, records, batch_size, "MC accuracy", progress, score_chunk)


def _cache_keyword(model: nn.Module) -> str:
    """The name under which the wrapped HF model's ``forward`` takes a KV cache."""
    base = model.model if isinstance(model, SMoREModel) else model
    base = base.get_base_model() if hasattr(base, "get_base_model") else base  # peft
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


@torch.no_grad()
def answer_text_accuracy(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    batch_size: int = 16,
    progress: bool = False,
    max_length: int | None = None,
) -> dict[str, Any]:
    """Score each option by the summed log-probability of its text after the prompt.

    Each prompt runs once (left-padded, explicit positions); its KV cache is shared by the
    continuations of all its options.

    Returns:
        ``{"accuracy", "n", "predictions", "scores"}`` (``scores``: per-option log-probs).
    """
    pad, key = mc.pad_id_of(tokenizer), _cache_keyword(model)

    def score_chunk(chunk: Sequence[dict[str, Any]], device: torch.device) -> list[list[float]]:
        options = [mc.choice_ids(r, tokenizer) for r in chunk]
        reserve = [max(map(len, opts)) for opts in options]
        prompts = [_prompt_ids(r, tokenizer, max_length, k) for r, k in zip(chunk, reserve)]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        mask = mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, W] left padding: real positions
        out = model(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1
        )
        first = out.logits[:, -1].float().log_softmax(-1)  # [B, V] predicts option token 0
        owner = torch.tensor([q for q, opts in enumerate(options) for _ in opts], device=device)
        flat = [o for opts in options for o in opts]  # B * k option token lists
        span = max(map(len, flat))
        cont = torch.tensor([o + [pad] * (span - len(o)) for o in flat], device=device)
        cache = out["cache"] if "cache" in out else out["past_key_values"]  # transformers 5.2x
        cache.reorder_cache(owner)  # [B * k, ...]: each option continues its own prompt
        full_mask = torch.cat([mask[owner], torch.ones_like(cont)], dim=1)  # [B * k, W + S]
        cont_pos = pos[owner, -1:] + 1 + torch.arange(span, device=device)  # [B * k, S]
        logits = model(
            input_ids=cont,
            attention_mask=full_mask,
            position_ids=cont_pos,
            use_cache=True,
            **{key: cache},
        ).logits
        logp = logits.float().log_softmax(-1)  # [B * k, S, V] predicts option token j + 1
        scores: list[list[float]] = [[] for _ in chunk]
        for row, option in enumerate(flat):
            target = torch.tensor(option, device=device)
            tail = logp[row, : len(option) - 1].gather(-1, target[1:, None]).sum()
            scores[int(owner[row])].append(float(first[owner[row], target[0]] + tail))
        return scores

    return _score_questions(model, records, batch_size, "MC text", progress, score_chunk, True)


def evaluate_mc(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    answer: str = "text",
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Multiple-choice accuracy of ``model`` on ``records``, overall and per task.

    Args:
        model: A causal LM (plain HF model, ``SMoREModel`` or peft model).
        tokenizer: Its tokenizer.
        records: Multiple-choice records ``{question, choices, answer, task (optional)}``.
        answer: ``"text"`` (score the choice text) or ``"letter"`` (score its letter).
        batch_size: Questions per forward pass.
        max_length: If given, prompts lose tokens from the left so that the prompt plus the
            longest option fits in ``max_length`` tokens; ``None`` keeps whole prompts.
        progress: Show a tqdm progress bar.

    Returns:
        ``{"accuracy": float, "n": int, "per_task": {task: {"accuracy", "n"}},
        "predictions": list[int]}``; only records with a ``task`` key enter ``per_task``.

    Raises:
        ValueError: On an unknown ``answer``, bad ``batch_size``/``max_length``, no records,
            or a record that is not a valid multiple-choice question (its index is named).
    """
    if answer not in ANSWERS:
        raise ValueError(f"answer must be 'letter' or 'text' (got {answer!r})")
    if max_length is not None and (isinstance(max_length, bool) or max_length < 2):
        raise ValueError(f"max_length must be None or an int >= 2 (got {max_length!r})")
    validate_mc_records(records, "records")
    score = answer_text_accuracy if answer == "text" else letter_accuracy
    result = score(model, tokenizer, records, batch_size, progress, max_length)
    groups: dict[str, list[int]] = {}
    for record, pred in zip(records, result["predictions"], strict=True):
        if record.get("task") is not None:
            groups.setdefault(str(record["task"]), []).append(int(pred == mc.answer_index(record)))
    per_task = {t: {"accuracy": sum(h) / len(h), "n": len(h)} for t, h in sorted(groups.items())}
    summary = {"accuracy": result["accuracy"], "n": result["n"], "per_task": per_task}
    return {**summary, "predictions": result["predictions"]}


def validate_mc_records(records: Sequence[dict[str, Any]], where: str) -> None:
    """Check that ``records`` are valid multiple-choice questions, naming the first bad one.

    Raises:
        ValueError: If there are no records or one is not a valid question (``where`` and the
            record's index are named).
    """
    if not records:
        raise ValueError(f"{where}: expected at least one multiple-choice record, got none")
    for i, record in enumerate(records):
        try:
            if mc.record_format(record) != "mc":
                raise ValueError("expected a multiple-choice record {question, choices, answer}")
            mc.answer_index(record)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}[{i}]: {err}") from err

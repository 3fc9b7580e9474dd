"""Fine-tuning with the HF ``Trainer``: LM loss + balance loss, routing statistics, resuming.

``SMoRETrainer`` adds the adapters' summed balance loss (SPEC §3) to the language-model loss,
logs ``lm_loss``, ``aux_loss``, ``routing_entropy`` and ``max_load_share`` next to ``loss``,
and saves/resumes checkpoints as adapter files (see :mod:`smore_gnn.save`). It works for any
model; only an ``SMoREModel`` has an auxiliary loss and routing statistics.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import Trainer, TrainingArguments

from smore_gnn import data as mc
from smore_gnn.baselines import auxiliary_loss
from smore_gnn.model import SMoREModel
from smore_gnn.save import CONFIG_NAME, load_adapter, save_adapter

_STATS = ("lm_loss", "aux_loss", "routing_entropy", "max_load_share")


def training_arguments(output_dir: str, **overrides: Any) -> TrainingArguments:
    """``TrainingArguments`` with the paper's schedule (SPEC §9) and safe defaults for adapters.

    Defaults: lr 1e-4, cosine schedule, 10% warmup, no reporting integrations, no checkpoints,
    ``ddp_find_unused_parameters=False`` (every adapter parameter gets a gradient, see the
    DDP test) and, under ``torchrun`` on CPU, the gloo backend. ``overrides`` win.
    """
    kwargs: dict[str, Any] = dict(
        output_dir=output_dir,
        learning_rate=1e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,
        per_device_train_batch_size=8,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        seed=0,
    )
    if not torch.cuda.is_available():
        kwargs["use_cpu"] = True
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            kwargs["ddp_backend"] = "gloo"
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


class SMoRETrainer(Trainer):
    """A ``Trainer`` whose loss is ``lm_loss + aux_loss`` (the adapters' balance loss)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # The LM loss stays a per-batch mean; the Trainer then scales it (and the aux loss,
        # added to it) for gradient accumulation, so both terms are weighted alike.
        self.model_accepts_loss_kwargs = False
        self._sums: dict[str, float] = dict.fromkeys(_STATS, 0.0)
        self._count = 0

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """``outputs.loss + balance loss``; the parts are accumulated for :meth:`log`."""
        outputs = model(**inputs)
        lm_loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        unwrapped = self.accelerator.unwrap_model(model)
        aux = auxiliary_loss(unwrapped)
        loss = lm_loss if aux is None else lm_loss + aux.to(lm_loss.device, lm_loss.dtype)
        if model.training:
            self._sums["lm_loss"] += float(lm_loss.detach())
            self._sums["aux_loss"] += 0.0 if aux is None else float(aux.detach())
            if isinstance(unwrapped, SMoREModel):
                stats = unwrapped.routing_stats()
                self._sums["routing_entropy"] += stats["mean_entropy"]
                self._sums["max_load_share"] += stats["max_load_share"]
            self._count += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged loss parts and routing statistics to each training log."""
        if "loss" in logs and self._count:
            values = torch.tensor([self._sums[k] / self._count for k in _STATS])
            if self.accelerator.num_processes > 1:
                values = self.accelerator.reduce(values.to(self.args.device), "mean").cpu()
            smore = isinstance(self.accelerator.unwrap_model(self.model), SMoREModel)
            for key, value in zip(_STATS, values.tolist()):
                if smore or key in ("lm_loss", "aux_loss"):
                    logs[key] = round(value, 6)
            self._sums, self._count = dict.fromkeys(_STATS, 0.0), 0
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, SMoREModel):
            return super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return None
        save_adapter(model, output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        return None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None):
        target = self.accelerator.unwrap_model(self.model if model is None else model)
        if not isinstance(target, SMoREModel):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        if not os.path.isfile(os.path.join(resume_from_checkpoint, CONFIG_NAME)):
            raise FileNotFoundError(
                f"Expected an S'MoRE checkpoint with {CONFIG_NAME} in {resume_from_checkpoint} "
                "(missing); pass a checkpoint-<step> folder written by SMoRETrainer"
            )
        load_adapter(target, resume_from_checkpoint, trainable=True)
        return None


def build_trainer(
    model: nn.Module,
    tokenizer: Any,
    train_records: Sequence[dict[str, Any]],
    args: TrainingArguments,
    max_length: int = 256,
    callbacks: list | None = None,
    answer: str = "letter",
) -> SMoRETrainer:
    """An :class:`SMoRETrainer` on the tokenized records (SFT or multiple choice).

    ``answer="text"`` trains multiple-choice records to answer with the choice text instead
    of its letter (see :func:`answer_text_example`).
    """
    if answer not in ("letter", "text"):
        raise ValueError(f"answer must be 'letter' or 'text' (got {answer!r})")
    dataset: Any = mc.SFTDataset(train_records, tokenizer, max_length=max_length)
    if answer == "text" and dataset.format == "mc":
        dataset = [answer_text_example(r, tokenizer, max_length) for r in train_records]
    return SMoRETrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=mc.make_collator(tokenizer),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


@torch.no_grad()
def letter_accuracy(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Multiple-choice accuracy as :func:`smore_gnn.data.multiple_choice_accuracy` defines it.

    When every answer letter is one token the score of an option is the log-probability of
    its letter after the shared prompt, so one forward per question (not per option) gives
    the same predictions; otherwise this falls back to ``multiple_choice_accuracy``.
    """
    n_choices = max((len(r["choices"]) for r in records), default=0)
    letters = [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in mc.LETTERS]
    if any(len(ids) != 1 for ids in letters[:n_choices]):
        return mc.multiple_choice_accuracy(
            model, tokenizer, records, batch_size, progress=progress
        )
    letter_ids = torch.tensor([ids[0] for ids in letters[:n_choices]])
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training, predictions, correct = model.training, [], 0
    model.eval()
    for start in tqdm(range(0, len(records), batch_size), "MC accuracy", disable=not progress):
        chunk = records[start : start + batch_size]
        feats = [
            {"input_ids": ids, "attention_mask": [1] * len(ids)}
            for ids in (tokenizer(mc.mc_prompt(r))["input_ids"] for r in chunk)
        ]
        batch = {k: v.to(device) for k, v in mc.collate(feats, mc.pad_id_of(tokenizer)).items()}
        last = batch["attention_mask"].sum(1) - 1  # [B] position of each prompt's last token
        keep = torch.unique(last)  # only these positions need the (large) vocabulary head
        logits = model(**batch, logits_to_keep=keep).logits.float()  # [B, K, V]
        column = torch.searchsorted(keep, last) if logits.size(1) == keep.numel() else last
        logprobs = logits[torch.arange(len(chunk)), column].log_softmax(-1).cpu()  # [B, V]
        for row, record in enumerate(chunk):
            k = len(record["choices"])
            pred = int(logprobs[row, letter_ids[:k]].argmax())
            predictions.append(pred)
            correct += int(pred == mc.answer_index(record))
    model.train(was_training)
    n = len(records)
    return {"accuracy": correct / n if n else 0.0, "n": n, "predictions": predictions}


def _choice_ids(record: dict[str, Any], tokenizer: Any) -> tuple[list[int], list[list[int]]]:
    prompt = tokenizer(mc.mc_prompt(record))["input_ids"]
    return prompt, [
        tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in record["choices"]
    ]


def answer_text_example(record: dict[str, Any], tokenizer: Any, max_length: int) -> dict:
    """A multiple-choice record as the same prompt followed by the answer's text (not letter).

    Labels are ``-100`` on the prompt; the prompt loses tokens from the left when too long.
    """
    prompt, choices = _choice_ids(record, tokenizer)
    target = choices[mc.answer_index(record)][:max_length]
    prompt = prompt[max(0, len(prompt) - (max_length - len(target))) :]
    return {
        "input_ids": prompt + target,
        "attention_mask": [1] * (len(prompt) + len(target)),
        "labels": [mc.IGNORE_INDEX] * len(prompt) + target,
    }


@torch.no_grad()
def answer_text_accuracy(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Multiple-choice accuracy scoring each option by the summed log-probability of its text
    (not its letter) after the prompt that lists the choices (lm-eval-harness style ``acc``).

    Each prompt runs once (left-padded, explicit positions); its KV cache is shared by the
    continuations of all its options. Returns accuracy, n, predictions and per-option scores.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training, predictions, correct, pad = model.training, [], 0, mc.pad_id_of(tokenizer)
    base = model.model if isinstance(model, SMoREModel) else model
    base = base.get_base_model() if hasattr(base, "get_base_model") else base  # peft
    key = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    all_scores: list[list[float]] = []
    model.eval()
    for start in tqdm(range(0, len(records), batch_size), "MC text", disable=not progress):
        chunk = records[start : start + batch_size]
        prompts, options = zip(*(_choice_ids(r, tokenizer) for r in chunk))
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        mask = mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, W] left padding: real positions
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                    logits_to_keep=1)  # fmt: skip
        first = out.logits[:, -1].float().log_softmax(-1)  # [B, V] predicts option token 0
        owner = torch.tensor([q for q, opts in enumerate(options) for _ in opts], device=device)
        flat = [o for opts in options for o in opts]  # B * k option token lists
        span = max(map(len, flat))
        cont = torch.tensor([o + [pad] * (span - len(o)) for o in flat], device=device)
        cache = out["cache"] if "cache" in out else out["past_key_values"]  # transformers 5.2x
        cache.reorder_cache(owner)  # [B * k, ...]: each option continues its own prompt
        full_mask = torch.cat([mask[owner], torch.ones_like(cont)], dim=1)  # [B * k, W + S]
        cont_pos = pos[owner, -1:] + 1 + torch.arange(span, device=device)  # [B * k, S]
        logits = model(input_ids=cont, attention_mask=full_mask, position_ids=cont_pos,
                       use_cache=True, **{key: cache}).logits  # fmt: skip
        logp = logits.float().log_softmax(-1)  # [B * k, S, V] predicts option token j + 1
        scores = []
        for row, option in enumerate(flat):
            target = torch.tensor(option, device=device)
            score = (
                first[owner[row], target[0]]
                + logp[row, : len(option) - 1].gather(-1, target[1:, None]).sum()
            )
            scores.append(float(score))
        for q, record in enumerate(chunk):
            rows = [scores[r] for r in range(len(flat)) if int(owner[r]) == q]
            pred = max(range(len(rows)), key=rows.__getitem__)
            all_scores.append(rows)
            predictions.append(pred)
            correct += int(pred == mc.answer_index(record))
    model.train(was_training)
    n = len(records)
    result = {"accuracy": correct / n if n else 0.0, "n": n, "predictions": predictions}
    return {**result, "scores": all_scores}

"""Fine-tuning with the HF ``Trainer``: LM loss + balance loss, routing statistics, resuming.

``SMoRETrainer`` adds the adapters' summed balance loss (docs/spec.md §3) to the language-model
loss and logs the LM loss as ``loss`` (also ``lm_loss``), with ``aux_loss``, ``total_loss`` (the
optimised sum), ``routing_entropy`` and ``max_load_share`` beside it. The summary of a
``train()`` call follows suit: ``TrainOutput.training_loss`` and ``metrics["train_loss"]`` are
the mean LM loss, with ``train_aux_loss`` and ``train_total_loss`` beside it in the metrics.
Checkpoints are saved and resumed as adapter files (see :mod:`smore_gnn.hf.save`). It works for
any model; only an ``SMoREModel`` has an auxiliary loss and routing statistics.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import TrainOutput

from smore_gnn.data import records as mc
from smore_gnn.hf.methods import auxiliary_loss
from smore_gnn.hf.model import SMoREModel
from smore_gnn.hf.save import CONFIG_NAME
from smore_gnn.train import distributed
from smore_gnn.train.optim import param_groups

_STATS = ("lm_loss", "aux_loss", "routing_entropy", "max_load_share")
_RUN = ("lm_loss", "aux_loss")  # averaged over a whole train() call for its summary


def training_arguments(output_dir: str, **overrides: Any) -> TrainingArguments:
    """``TrainingArguments``: the paper's schedule (docs/spec.md §9), safe defaults for adapters.

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
    """A ``Trainer`` whose loss is ``lm_loss + aux_loss`` (the adapters' balance loss).

    Unless an optimizer is passed, its parameter groups come from
    ``smore_gnn.train.optim.param_groups(model, lr, router_lr_scale, weight_decay)``: router
    parameters train at ``lr * router_lr_scale``.
    """

    def __init__(self, *args: Any, router_lr_scale: float = 1.0, **kwargs: Any):
        if isinstance(router_lr_scale, bool) or not isinstance(router_lr_scale, int | float):
            raise TypeError(f"router_lr_scale must be a number (got {router_lr_scale!r})")
        if not 0 < router_lr_scale < float("inf"):
            raise ValueError(f"router_lr_scale must be finite and > 0 (got {router_lr_scale!r})")
        self.router_lr_scale = float(router_lr_scale)
        super().__init__(*args, **kwargs)
        distributed.warn_if_sharding_ignored(self.accelerator)
        sharded = self.is_fsdp_enabled or self.is_deepspeed_enabled  # DDP broadcasts rank 0's
        if sharded and isinstance(self.model, SMoREModel):
            distributed.check_same_adapters(self.model)
        # The LM loss stays a per-batch mean; the Trainer then scales it (and the aux loss,
        # added to it) for gradient accumulation, so both terms are weighted alike.
        self.model_accepts_loss_kwargs = False
        self._sums: dict[str, float] = dict.fromkeys(_STATS, 0.0)
        self._count = 0
        self._run_sums: dict[str, float] = dict.fromkeys(_RUN, 0.0)
        self._run_count = 0

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The ``Trainer``'s optimizer over ``smore_gnn.train.optim.param_groups``."""
        opt_model = self.model if model is None else model
        if self.optimizer is None and not self.optimizer_cls_and_kwargs:
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            if not {"params", "model", "optimizer_dict"} & set(kwargs):
                args = self.args
                groups = param_groups(
                    opt_model, args.learning_rate, self.router_lr_scale, args.weight_decay
                )
                self.optimizer = cls(groups, **kwargs)
        return super().create_optimizer(model)

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """The ``Trainer``'s schedule, without warm-up when the run is a single step.

        A linear warm-up gives its first step a learning rate of 0, so a one-step run with any
        warm-up (``max_steps=1`` and the default 10%, rounded up to a step) would train nothing.
        """
        args = self.args
        if self.lr_scheduler is not None or not (
            num_training_steps == 1 and args.get_warmup_steps(num_training_steps) > 0
        ):
            return super().create_scheduler(num_training_steps, optimizer)
        warnings.warn(
            f"warmup_steps={args.warmup_steps} would leave the only training step at learning "
            "rate 0 (a warm-up starts at 0): that step is trained without warm-up; set the "
            "warm-up to 0 (smore-gnn: --warmup 0) or train more steps",
            stacklevel=2,
        )
        warmup, args.warmup_steps = args.warmup_steps, 0
        try:
            return super().create_scheduler(num_training_steps, optimizer)
        finally:
            args.warmup_steps = warmup

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
            parts = {"lm_loss": float(lm_loss.detach())}
            parts["aux_loss"] = 0.0 if aux is None else float(aux.detach())
            for key, value in parts.items():
                self._sums[key] += value
                self._run_sums[key] += value
            self._run_count += 1
            if isinstance(unwrapped, SMoREModel):
                stats = distributed.global_routing_statistics(unwrapped)  # the whole batch
                self._sums["routing_entropy"] += stats["mean_entropy"]
                self._sums["max_load_share"] += stats["max_load_share"]
            self._count += 1
        return (loss, outputs) if return_outputs else loss

    def train(self, *args: Any, **kwargs: Any) -> TrainOutput:
        """The ``Trainer``'s ``train``; its ``training_loss`` is the mean LM loss of the call.

        The ``Trainer`` averages the optimised sum (LM + balance loss); that mean is kept as
        ``metrics["train_total_loss"]``, the balance loss's as ``metrics["train_aux_loss"]``.
        """
        self._run_sums, self._run_count = dict.fromkeys(_RUN, 0.0), 0
        output = super().train(*args, **kwargs)
        return TrainOutput(output.global_step, output.metrics["train_loss"], output.metrics)

    def _mean_over_ranks(self, sums: dict[str, float], count: int, keys: Sequence[str]) -> list:
        """``sums[k] / count`` for each key, averaged over the ranks (every rank must call it)."""
        values = torch.tensor([sums[k] / max(count, 1) for k in keys])
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values.to(self.args.device), "mean").cpu()
        return values.tolist()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged loss parts and routing statistics to each training log.

        The final summary of ``train()`` (``train_loss``) gets the LM loss as ``train_loss`` and
        the optimised mean as ``train_total_loss``, like ``loss`` and ``total_loss`` here.
        """
        if "train_loss" in logs and self._run_count:
            lm, aux = self._mean_over_ranks(self._run_sums, self._run_count, _RUN)
            logs["train_total_loss"], logs["train_aux_loss"] = logs["train_loss"], aux
            logs["train_loss"] = lm
        if "loss" in logs and self._count:
            values = self._mean_over_ranks(self._sums, self._count, _STATS)
            smore = isinstance(self.accelerator.unwrap_model(self.model), SMoREModel)
            for key, value in zip(_STATS, values):
                if smore or key in ("lm_loss", "aux_loss"):
                    logs[key] = round(value, 6)
            # ``loss`` is the LM loss users read; the summed balance loss (w x every router)
            # would dominate it: the sum that was optimised is ``total_loss``
            logs["total_loss"], logs["loss"] = logs["loss"], logs["lm_loss"]
            self._sums, self._count = dict.fromkeys(_STATS, 0.0), 0
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, SMoREModel):
            return super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return None
        if state_dict:  # FSDP / DeepSpeed: the full state dict, gathered for this rank
            distributed.save_adapter_from_state_dict(model, output_dir, state_dict)
        else:
            model.save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        return None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None):
        target = self.accelerator.unwrap_model(self.model if model is None else model)
        if not isinstance(target, SMoREModel):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        name = target.active_adapter  # save_pretrained's layout: "default" at the top
        folder = (
            resume_from_checkpoint
            if name == "default"
            else os.path.join(resume_from_checkpoint, name)
        )
        if not os.path.isfile(os.path.join(folder, CONFIG_NAME)):
            raise FileNotFoundError(
                f"Expected an S'MoRE checkpoint with {CONFIG_NAME} in {folder} "
                "(missing); pass a checkpoint-<step> folder written by SMoRETrainer"
            )
        if distributed.is_sharded(target):
            distributed.load_adapter_sharded(target, resume_from_checkpoint)
        else:
            target.load_adapter(folder, name, is_trainable=True)
        return None


def build_trainer(
    model: nn.Module,
    tokenizer: Any,
    train_records: Sequence[dict[str, Any]] | mc.SFTDataset,
    args: TrainingArguments,
    max_length: int = 256,
    callbacks: list | None = None,
    answer: str = "letter",
    router_lr_scale: float = 1.0,
) -> SMoRETrainer:
    """An :class:`SMoRETrainer` on the tokenized records (SFT or multiple choice).

    ``train_records`` may also be an already tokenized :class:`smore_gnn.data.records.SFTDataset`
    (then ``max_length`` and ``answer`` are its own).

    ``answer="text"`` trains multiple-choice records to answer with the choice text instead
    of its letter (see :func:`smore_gnn.data.records.format_example`).
    """
    dataset = train_records
    if not isinstance(dataset, mc.SFTDataset):
        dataset = mc.SFTDataset(train_records, tokenizer, max_length=max_length, answer=answer)
    return SMoRETrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=mc.make_collator(tokenizer),
        processing_class=tokenizer,
        callbacks=callbacks,
        router_lr_scale=router_lr_scale,
    )

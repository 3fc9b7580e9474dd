"""SMoRETrainer: loss parts and routing statistics logged, resume equivalence, 2-process DDP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from smore_gnn.hf.methods import get_method, smore_paper_config
from smore_gnn.hf.model import get_smore_model
from smore_gnn.hf.save import CONFIG_NAME, adapter_parameters
from smore_gnn.hf.testing import tiny_llama
from smore_gnn.train.trainer import build_trainer, training_arguments

RECORDS = [
    {"question": f"Pick the letter {c}", "choices": ["a", "b", "c", "d"], "answer": i % 4}
    for i, c in enumerate("abcdefghijklmnop")
]


class StopAt(TrainerCallback):
    """Interrupt training after ``step`` optimizer steps."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def _train(out: Path, max_steps: int, gate: str = "noisy_topk", **kwargs):
    torch.manual_seed(0)
    model, tokenizer = tiny_llama(hidden_size=32, intermediate_size=64)
    with torch.no_grad():  # tied embeddings of std 0.02 cap every logit near 0: widen them
        model.model.embed_tokens.weight.mul_(10)
    model = get_smore_model(model, smore_paper_config(gate_type=gate, rank=[4, 4]))
    stop = kwargs.pop("stop_at", None)
    resume = kwargs.pop("resume", None)
    args = training_arguments(
        str(out),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=kwargs.pop("learning_rate", 1e-3),
        logging_steps=1,
        disable_tqdm=True,
        **kwargs,
    )
    callbacks = [StopAt(stop)] if stop else None
    trainer = build_trainer(model, tokenizer, RECORDS, args, max_length=48, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    params = {k: p.detach().clone() for k, p in adapter_parameters(model.adapters()).items()}
    return model, trainer, params


def test_training_logs_loss_parts_and_reduces_loss(tmp_path):
    model, trainer, _ = _train(tmp_path, max_steps=12, gate="switch", learning_rate=1e-2)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    for key in ("lm_loss", "aux_loss", "routing_entropy", "max_load_share"):
        assert key in logs[0], key
    first, last = logs[0], logs[-1]
    assert last["lm_loss"] < first["lm_loss"] / 2
    # ``loss`` is the LM loss; the optimised sum is ``total_loss`` (issue 21)
    assert first["loss"] == first["lm_loss"]
    assert first["total_loss"] == pytest.approx(first["lm_loss"] + first["aux_loss"], abs=1e-4)
    assert 0 < first["aux_loss"] < 1 and 0 < first["routing_entropy"] <= 1
    frozen = [p for n, p in model.named_parameters() if "base_layer" in n or "embed" in n]
    assert frozen and not any(p.requires_grad for p in frozen)


def test_one_step_run_with_the_default_warmup_trains(tmp_path):
    """A warm-up starts at lr 0: with one step and warmup 0.1 (rounded up to 1 step) nothing
    would train; the step runs without warm-up, with a warning."""
    torch.manual_seed(0)
    model, tokenizer = tiny_llama(hidden_size=32, intermediate_size=64)
    model = get_smore_model(model, smore_paper_config(rank=[4, 4]))
    before = {k: p.detach().clone() for k, p in adapter_parameters(model.adapters()).items()}
    args = training_arguments(str(tmp_path), max_steps=1, disable_tqdm=True, learning_rate=1e-3)
    assert args.warmup_steps == 0.1  # the default
    trainer = build_trainer(model, tokenizer, RECORDS, args, max_length=48)
    with pytest.warns(UserWarning, match="only training step at learning rate 0"):
        trainer.train()
    after = adapter_parameters(model.adapters())
    assert any(not torch.equal(before[k], p) for k, p in after.items())
    assert trainer.args.warmup_steps == 0.1  # the user's setting is left as it was
    args = training_arguments(str(tmp_path), max_steps=2, disable_tqdm=True)
    trainer = build_trainer(model, tokenizer, RECORDS, args, max_length=48)
    trainer.create_optimizer()
    assert trainer.create_scheduler(2).get_last_lr()[0] == 0  # two steps: the warm-up stays


def test_resume_equals_uninterrupted(tmp_path):
    _, _, full = _train(tmp_path / "full", max_steps=6)
    _, _, half = _train(
        tmp_path / "cut", max_steps=6, stop_at=3, save_strategy="steps", save_steps=3
    )
    checkpoint = tmp_path / "cut" / "checkpoint-3"
    assert (checkpoint / CONFIG_NAME).is_file() and (checkpoint / "optimizer.pt").is_file()
    assert any(not torch.equal(full[k], half[k]) for k in full)  # really interrupted
    _, trainer, resumed = _train(tmp_path / "cut", max_steps=6, resume=str(checkpoint))
    assert trainer.state.global_step == 6
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


def test_resume_from_a_folder_without_adapter_fails(tmp_path):
    (tmp_path / "checkpoint-1").mkdir()
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        _train(tmp_path, max_steps=2, resume=str(tmp_path / "checkpoint-1"))


def test_trainer_works_for_lora_without_aux_loss(tmp_path):
    model, tokenizer = tiny_llama(hidden_size=32, intermediate_size=64)
    model = get_method("lora").build(model, 4)
    args = training_arguments(str(tmp_path), max_steps=2, logging_steps=1, disable_tqdm=True)
    trainer = build_trainer(model, tokenizer, RECORDS, args, max_length=48)
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["aux_loss"] == 0 and "routing_entropy" not in log


def test_answer_text_training_labels_only_the_choice_text(tmp_path):
    model, tokenizer = tiny_llama(hidden_size=32, intermediate_size=64)
    record = {"question": "Which is a fruit?", "choices": ["rock", "pear"], "answer": 1}
    args = training_arguments(str(tmp_path), max_steps=1, disable_tqdm=True)
    trainer = build_trainer(model, tokenizer, [record], args, max_length=64, answer="text")
    example = trainer.train_dataset[0]
    labelled = [t for t in example["labels"] if t != -100]
    assert tokenizer.decode(labelled) == " pear"
    assert example["input_ids"][-len(labelled) :] == labelled
    with pytest.raises(ValueError, match="answer must be 'letter' or 'text'"):
        build_trainer(None, tokenizer, [record], None, answer="word")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_two_processes_with_idle_experts(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(_free_port()), str(worker), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["wrapper"] == "DistributedDataParallel" for r in ranks)
    assert all(r["unused_experts"] > 0 for r in ranks)  # some expert got no token on a rank
    assert ranks[0]["checksum"] == ranks[1]["checksum"] != ranks[0]["init_checksum"]
    assert all("aux_loss" in r["logs"][0] for r in ranks)


def test_optimizer_uses_optim_param_groups_with_router_lr_scale(tmp_path, monkeypatch):
    import smore_gnn.train.trainer

    calls = []

    def param_groups(model, lr, router_lr_scale=1.0, weight_decay=0.0):
        calls.append((lr, router_lr_scale, weight_decay))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        router = [p for n, p in named if "router." in n]
        rest = [p for n, p in named if "router." not in n]
        return [{"params": rest, "lr": lr}, {"params": router, "lr": lr * router_lr_scale}]

    monkeypatch.setattr(smore_gnn.train.trainer, "param_groups", param_groups)
    model, tokenizer = tiny_llama(hidden_size=32, intermediate_size=64)
    model = get_smore_model(model, smore_paper_config(rank=[2, 2]))
    args = training_arguments(str(tmp_path), max_steps=1, learning_rate=0.01, weight_decay=0.1)
    trainer = build_trainer(model, tokenizer, RECORDS, args, max_length=48, router_lr_scale=0.5)
    optimizer = trainer.create_optimizer()
    assert calls == [(0.01, 0.5, 0.1)]
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.005]
    assert optimizer.param_groups[1]["params"]  # the routers' parameters
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(
        [p for p in model.parameters() if p.requires_grad]
    )
    with pytest.raises(ValueError, match="router_lr_scale must be finite and > 0"):
        build_trainer(model, tokenizer, RECORDS, args, router_lr_scale=0.0)


def test_trainer_optimizer_follows_smore_gnn_optim(tmp_path):
    pytest.importorskip("smore_gnn.train.optim")
    model, tokenizer = tiny_llama(hidden_size=32, intermediate_size=64)
    model = get_smore_model(model, smore_paper_config(rank=[2, 2]))
    args = training_arguments(str(tmp_path), max_steps=1, learning_rate=0.01)
    trainer = build_trainer(model, tokenizer, RECORDS, args, max_length=48, router_lr_scale=0.25)
    groups = trainer.create_optimizer().param_groups
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["router"] == pytest.approx(0.0025) and lrs["other"] == pytest.approx(0.01)
    routers = {id(p) for n, p in model.named_parameters() if "router." in n and p.requires_grad}
    for group in groups:
        is_router = group["name"].startswith("router")
        assert all((id(p) in routers) == is_router for p in group["params"])


def test_logged_loss_is_the_lm_loss_and_the_gradient_is_unchanged(tmp_path):
    # a heavy balance weight: the summed aux loss would dominate a logged total (issue 21)
    torch.manual_seed(0)
    model, tokenizer = tiny_llama(hidden_size=32, intermediate_size=64)
    cfg = smore_paper_config(gate_type="switch", rank=[4, 4], balance_loss_weight=5.0)
    model = get_smore_model(model, cfg)
    args = training_arguments(str(tmp_path), max_steps=1, per_device_train_batch_size=4,
                              learning_rate=1e-3, logging_steps=1, disable_tqdm=True)  # fmt: skip
    trainer = build_trainer(model, tokenizer, RECORDS, args, max_length=48)
    batch = next(iter(trainer.get_train_dataloader()))
    model.train()
    loss = trainer.compute_loss(model, batch)  # what the Trainer differentiates
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    model.zero_grad()
    lm = model(**batch).loss
    manual = lm + model.balance_loss()
    expected = torch.autograd.grad(manual, [p for p in model.parameters() if p.requires_grad])
    assert float(model.balance_loss()) > float(lm)  # the case the log used to hide
    assert float(loss) == pytest.approx(float(manual), rel=1e-6)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)
    trainer._sums, trainer._count = dict.fromkeys(trainer._sums, 0.0), 0
    trainer.train()
    log = next(h for h in trainer.state.log_history if "loss" in h)
    assert log["loss"] == log["lm_loss"] and log["loss"] < log["total_loss"]
    assert log["total_loss"] == pytest.approx(log["lm_loss"] + log["aux_loss"], rel=1e-4)


def test_training_summary_loss_is_the_lm_loss_with_aux_and_total_beside_it(tmp_path):
    # the heavy balance weight of the test above: HF's train_loss was the optimised sum
    torch.manual_seed(0)
    model, tokenizer = tiny_llama(hidden_size=32, intermediate_size=64)
    cfg = smore_paper_config(gate_type="switch", rank=[4, 4], balance_loss_weight=5.0)
    model = get_smore_model(model, cfg)
    args = training_arguments(
        str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = build_trainer(model, tokenizer, RECORDS, args, max_length=48)
    result = trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    mean = {k: sum(log[k] for log in logs) / len(logs) for k in ("loss", "aux_loss", "total_loss")}
    assert len(logs) == 3 and result.training_loss == pytest.approx(mean["loss"], rel=1e-4)
    summary = next(h for h in trainer.state.log_history if "train_loss" in h)
    for metrics in (result.metrics, summary):
        assert metrics["train_loss"] == result.training_loss < metrics["train_total_loss"]
        assert metrics["train_aux_loss"] == pytest.approx(mean["aux_loss"], rel=1e-4)
        assert metrics["train_total_loss"] == pytest.approx(mean["total_loss"], rel=1e-4)

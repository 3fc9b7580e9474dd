"""Worker of ``tests/test_distributed.py``: one run of a tiny Llama with S'MoRE on the CPU.

Launched three ways, all with the same global batch of 4 sequences per optimizer step:

* ``python tests/distributed_worker.py OUT``: one process, 2 accumulated micro-batches of 2;
* ``accelerate launch --config_file configs/accelerate/ddp.yaml ...``: 2 ranks (gloo) of 2;
* ``accelerate launch --config_file configs/accelerate/fsdp.yaml ...``: the same under FSDP2.

Each run trains 4 steps (a checkpoint at step 2), saves the adapter (``OUT/adapter``), records
logits and the whole-batch routing statistics of a probe batch, then resumes a fresh model
from ``checkpoint-2`` and trains to step 4 again. Each rank writes ``OUT/rank<r>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from smore_gnn.hf.methods import smore_paper_config

PROBE = ["the quick brown fox", "jumps over the lazy", "dog and runs far aw", "ay into the woods!"]
CONFIG = smore_paper_config(num_experts=[4, 4], fanout=[2, 1], rank=[2, 2])
MAX_LENGTH = 16  # the 11-token prompt and a 4-letter answer with its end token


def force_fsdp_on_cpu() -> None:
    """Make accelerate run its FSDP path on CPU processes (gloo).

    accelerate 1.x assigns ``DistributedType.FSDP`` only to accelerator devices: on CPU the
    launched processes become ``MULTI_CPU`` (DDP) and the FSDP plugin, built from the
    launcher's environment (the shipped config), is dropped. Here the shared accelerate state
    is created first and switched to FSDP with that plugin, so the Trainer takes accelerate's
    own FSDP2 code path (``fully_shard``, full state dict saving, FSDP checkpoints) on CPU.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    accelerator = Accelerator(cpu=True)  # initialises the process group and the shared state
    plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":  # what accelerate does on accelerator devices
        plugin.set_mixed_precision(accelerator.mixed_precision)
    for shared in (PartialState._shared_state, AcceleratorState._shared_state):
        shared["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin


def make_model():
    from smore_gnn.hf.model import get_smore_model
    from smore_gnn.hf.testing import tiny_llama

    torch.manual_seed(0)  # the adapter's initialisation uses the global generator
    model, tokenizer = tiny_llama(hidden_size=32, intermediate_size=64, num_layers=2)
    return get_smore_model(model, CONFIG), tokenizer


def probe_batch(tokenizer) -> dict[str, torch.Tensor]:
    ids = torch.tensor([tokenizer.encode(text)[:8] for text in PROBE])  # [4, 8]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def main(out: Path) -> None:
    from smore_gnn.analysis.health import RoutingHealthCallback
    from smore_gnn.hf.model import get_smore_model
    from smore_gnn.hf.testing import tiny_llama
    from smore_gnn.train.distributed import (
        check_same_adapters,
        global_routing_statistics,
        is_sharded,
    )
    from smore_gnn.train.trainer import build_trainer, training_arguments

    world = int(os.environ.get("WORLD_SIZE", "1"))
    fsdp_on_cpu = os.environ.get("ACCELERATE_USE_FSDP") == "true" and not torch.cuda.is_available()
    # 16 sequences of 16 tokens, each with 5 loss tokens: the mean loss of 2 ranks equals the
    # mean over 2 accumulated micro-batches.
    records = [{"instruction": "", "output": chr(97 + i) + chr(100 + i) * 3} for i in range(16)]

    def arguments(folder: str):
        args = training_arguments(
            str(out / folder),
            max_steps=4,
            warmup_steps=0,
            learning_rate=1e-2,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2 // world,
            logging_steps=1,
            save_strategy="steps",
            save_steps=2,
            disable_tqdm=True,
        )
        if fsdp_on_cpu:  # after the arguments: building them resets accelerate's state
            force_fsdp_on_cpu()
        return args

    model, tokenizer = make_model()
    probe = probe_batch(tokenizer)
    health = RoutingHealthCallback([probe], every_n_steps=2, shuffled_control=False)
    trainer = build_trainer(
        model, tokenizer, records, arguments("run"), max_length=MAX_LENGTH, callbacks=[health]
    )
    local = []  # this rank's (total loss, LM loss) of every micro-batch
    compute_loss = trainer.compute_loss

    def recording(model, inputs, return_outputs=False, **kwargs):
        loss, outputs = compute_loss(model, inputs, return_outputs=True, **kwargs)
        local.append((float(loss.detach()), float(outputs["loss"].detach())))
        return (loss, outputs) if return_outputs else loss

    trainer.compute_loss = recording
    trainer.train()
    trainer.save_model(str(out / "adapter"))  # every rank: FSDP gathers the state dict

    rank = trainer.args.process_index
    probe = {k: v.to(trainer.args.device) for k, v in probe.items()}
    model.eval()
    with torch.no_grad():  # every rank runs the forward (FSDP all-gathers), rank 0 records
        logits = model(**probe).logits
        # Each rank routes its share of the probe; the statistics cover all of it.
        model(**{k: v[rank::world] for k, v in probe.items()})
        stats, shard_stats = global_routing_statistics(model), model.routing_stats()
    if rank == 0:
        torch.save(logits.cpu(), out / "probe_logits.pt")
    first = next(iter(model.adapters().values())).router
    weight = next(p for p in first.parameters() if p.requires_grad)
    shard = weight.to_local() if is_sharded(model) else weight

    torch.manual_seed(rank)  # adapters initialised differently on each rank: refused
    mismatched = get_smore_model(tiny_llama(hidden_size=32, num_layers=1)[0], CONFIG)
    try:
        check_same_adapters(mismatched)
        mismatch = "accepted"
    except ValueError as err:
        mismatch = str(err)

    resumed_model, _ = make_model()
    resumed = build_trainer(resumed_model, tokenizer, records, arguments("resume"), MAX_LENGTH)
    resumed.train(resume_from_checkpoint=str(out / "run" / "checkpoint-2"))

    result = {
        "world_size": trainer.args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "wrapper": type(trainer.model_wrapped).__name__,
        "sharded": is_sharded(model),
        "shard_numel": shard.numel(),
        "full_numel": weight.numel(),
        "local_losses": local,
        "logs": [log for log in trainer.state.log_history if "loss" in log],
        "resumed_logs": [log for log in resumed.state.log_history if "loss" in log],
        "probe_stats": {k: stats[k] for k in ("mean_entropy", "max_load_share")},
        "probe_loads": {name: m["load"] for name, m in stats["modules"].items()},
        "probe_shard_loads": {name: m["load"] for name, m in shard_stats["modules"].items()},
        "health": health.history,
        "mismatch": mismatch,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

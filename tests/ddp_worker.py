"""Worker for ``tests/test_training.py::test_ddp_two_processes`` (run by ``torchrun``).

Trains a tiny Llama with S'MoRE on 2 CPU processes (gloo). Each rank sees 3-token sequences,
so with 8 experts and fanout 1 most experts get no token on a rank: DDP must still reduce
every gradient (``ddp_find_unused_parameters=False``). Each rank writes its final adapter
checksum and logs to ``<out>/rank<r>.json``.
"""

from __future__ import annotations

import json
import sys

import torch


def main(out_dir: str) -> None:
    from smore_gnn.hf.methods import smore_paper_config
    from smore_gnn.hf.model import get_smore_model
    from smore_gnn.hf.save import adapter_parameters
    from smore_gnn.hf.testing import tiny_llama
    from smore_gnn.train.trainer import build_trainer, training_arguments

    torch.manual_seed(0)
    model, tokenizer = tiny_llama(hidden_size=32, intermediate_size=64, num_layers=1)
    config = smore_paper_config(num_experts=[8, 8], fanout=[1, 1], rank=[2, 2])
    model = get_smore_model(model, config)
    records = [{"instruction": "", "output": chr(97 + i % 26)} for i in range(16)]
    args = training_arguments(
        out_dir,
        max_steps=3,
        warmup_steps=0,
        learning_rate=1e-3,
        per_device_train_batch_size=2,
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = build_trainer(model, tokenizer, records, args, max_length=3)
    params = adapter_parameters(model.adapters())
    init = float(sum(p.detach().double().sum() for p in params.values()))
    trainer.train()
    first = model.adapters()[model.adapted_names[0]]
    result = {
        "world_size": trainer.args.world_size,
        "wrapper": type(trainer.model_wrapped).__name__,
        "init_checksum": init,
        "checksum": float(sum(p.detach().double().sum() for p in params.values())),
        "unused_experts": int((first.last_routing.load[1] == 0).sum()),
        "logs": trainer.state.log_history,
    }
    with open(f"{out_dir}/rank{trainer.args.process_index}.json", "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(sys.argv[1])

"""Worker of the CLI tests of ``tests/test_distributed.py``: ``smore-gnn finetune`` on each rank.

``accelerate launch ... tests/cli_worker.py LOG finetune ...`` runs the command's ``main`` on
every rank as the console script would, and records what each rank wrote: the probe of the
output folder, every file written by the run folder and every adapter save, in
``LOG/rank<r>.json`` with the exit code. ``CLI_WORKER_FAIL=<name>`` makes the first recorded
call of ``name`` fail on rank 0 only (``OSError``: a full or read-only disk).

With ``configs/accelerate/fsdp.yaml`` on a CPU-only machine the shared accelerate state is
switched to FSDP once the training arguments are built (``force_fsdp_on_cpu`` of
``tests/distributed_worker.py``), so the run takes FSDP2's path.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import torch


def _recording(module, name: str, calls: list, label=lambda *args: None):
    """Replace ``module.name`` by a wrapper that appends ``(name, label(*args))`` to ``calls``."""
    original = getattr(module, name)
    fail = os.environ.get("CLI_WORKER_FAIL") == name and os.environ.get("RANK") == "0"

    def wrapper(*args, **kwargs):
        calls.append([name, label(*args)])
        if fail and [c[0] for c in calls].count(name) == 1:
            raise OSError(errno.EROFS, "Read-only file system", "(CLI_WORKER_FAIL)")
        return original(*args, **kwargs)

    setattr(module, name, wrapper)


def main(log: Path, argv: list[str]) -> int:
    import smore_gnn.hf.methods as methods
    import smore_gnn.train.distributed as distributed
    import smore_gnn.train.trainer as trainer
    from smore_gnn.cli import commands, output

    calls: list = []
    _recording(output, "probe_save", calls)
    _recording(output, "_write_atomic", calls, lambda path, data: Path(path).name)
    _recording(methods, "save_any", calls)
    if hasattr(distributed, "save_adapter_gathered"):
        _recording(distributed, "save_adapter_gathered", calls)
    if os.environ.get("ACCELERATE_USE_FSDP") == "true" and not torch.cuda.is_available():
        from distributed_worker import force_fsdp_on_cpu

        arguments = trainer.training_arguments

        def forcing(*args, **kwargs):
            built = arguments(*args, **kwargs)
            force_fsdp_on_cpu()  # after the arguments: building them resets accelerate's state
            return built

        trainer.training_arguments = forcing
    rank = int(os.environ.get("RANK", "0"))
    code = commands.main(argv)
    (log / f"rank{rank}.json").write_text(json.dumps({"code": code, "calls": calls}))
    return code


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]), sys.argv[2:]))

"""``smore-gnn finetune`` on several processes (``accelerate launch``, ``torchrun``).

Every process runs the whole command on the same inputs: it validates them, loads the same
model, trains its share of each batch (the ``Trainer`` splits them) and evaluates the whole test
set; a sharded model (FSDP, DeepSpeed ZeRO-3) needs every process in each forward. Only the
main process (accelerate's ``PartialState().is_main_process``) checks and writes the output
folder, saves the adapter and prints results.

A failure on one process must not leave the others waiting in a collective for ever: each
stage of the command ends in :meth:`Ranks.agreed`, where the processes exchange their outcome
and all stop if any failed. The main process prints the error; another process prints its own
error only when it differs from the main process's (no line repeated once per process). The
last agreement is the barrier at which the command ends together. Without a launcher there is
one process and nothing is exchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from smore_gnn.cli.args import UsageError


class AlreadyReported(UsageError):
    """This process stops (exit code 2) because of an error another process reports."""


class Ranks:
    """The processes of one command: which one this is, and their agreement on failures.

    Creating it starts the default process group when the command was launched on several
    processes (the ``Trainer`` would start the same one); with one process it does nothing.
    """

    def __init__(self) -> None:
        from accelerate import PartialState

        # The Trainer's choice of device (smore_gnn.train.trainer.training_arguments): the CPU
        # (gloo) unless CUDA is there. Plain values: TrainingArguments resets the shared state.
        state = PartialState(cpu=not torch.cuda.is_available())
        self.index, self.count = state.process_index, state.num_processes
        self.is_main = state.is_main_process

    def print(self, *values: Any) -> None:
        """``print`` on the main process only."""
        if self.is_main:
            print(*values, flush=True)

    @contextmanager
    def agreed(self) -> Iterator[None]:
        """Run a block on every process; if it fails on any, it fails on all.

        The block must not end in a collective that a failed process would skip. At its end
        every process sends its outcome to all (one ``all_gather_object``) and then either goes
        on, re-raises its own error (:class:`AlreadyReported` when the main process has the
        same user error), or raises :class:`AlreadyReported` for the failure of another.
        """
        error: Exception | None = None
        try:
            yield
        except Exception as err:  # KeyboardInterrupt: the launcher stops every process
            error = err
        outcomes = [None if error is None else _describe(error)]
        if self.count > 1:
            outcomes = [None] * self.count
            dist.all_gather_object(outcomes, None if error is None else _describe(error))
        if error is not None:
            same = outcomes[0] == outcomes[self.index]  # the main process prints this line
            if not self.is_main and isinstance(error, UsageError) and same:
                raise AlreadyReported(str(error)) from error
            raise error
        failed = [r for r, outcome in enumerate(outcomes) if outcome is not None]
        if failed:
            message = f"process {failed[0]} of {self.count} failed: {outcomes[failed[0]]}"
            if self.is_main:
                raise UsageError(message)
            raise AlreadyReported(message)

    def close(self) -> None:
        """End the process group (every process, after the last agreement)."""
        if self.count > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _describe(error: Exception) -> str:
    """One line for an error: a user error's message, else its type and message."""
    text = str(error) if isinstance(error, UsageError) else f"{type(error).__name__}: {error}"
    return " ".join(text.split())

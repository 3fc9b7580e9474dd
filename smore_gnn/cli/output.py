"""The ``--output-dir`` of ``finetune``: checked before the model loads; a trained adapter is kept.

:class:`RunFolder` applies the rules of the save itself before anything is loaded
(:func:`smore_gnn.hf.atomic.save_target`: symlinks followed, not a file, not the working
directory or a parent of it), creates the folders that are missing and tries a save's file
operations on a probe (:func:`smore_gnn.hf.atomic.probe_save`). During the run it writes the
run's files as soon as they exist, each atomically. If the run fails before its adapter is
saved, it removes what the run created (folders, files, the trainer's folder) and puts back
the files it overwrote. If the save fails after training, the adapter is saved to a
time-stamped sibling folder (else into the system's temporary folder) and the run stops with a
one-line error naming it.

In a run on several processes (:mod:`smore_gnn.cli.ranks`) only the main process writes: the
others hold a ``RunFolder(..., writer=False)``, which resolves the same path and writes nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from smore_gnn.cli.args import UsageError
from smore_gnn.hf.atomic import probe_save, save_target


class AdapterSavedElsewhere(UsageError):
    """Training finished, the save into ``--output-dir`` failed, and the adapter went elsewhere."""


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` at once: a reader never sees half a file."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        try:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            os.unlink(f.name)
            raise
    try:
        os.replace(f.name, path)
    except BaseException:
        os.unlink(f.name)
        raise


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist, outermost first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing[::-1]


class RunFolder:
    """The output folder of one ``finetune`` run (see the module docstring).

    Args:
        directory: the ``--output-dir`` value.
        writer: whether this process writes the folder (default: True); the other processes
            of a multi-process run only resolve the path: no folder is made or probed, and
            :meth:`write_text`, :meth:`save` and :meth:`discard` write nothing.

    Raises:
        UsageError: a folder the save would refuse or cannot write (``--output-dir: ...``).
    """

    def __init__(self, directory: str | Path, writer: bool = True):
        self.created: list[Path] = []  # folders this run made, outermost first
        self.writer = writer
        self.previous: dict[str, bytes | None] = {}  # files written: their bytes before the run
        self.scratch: list[str] = []  # subfolders the run created for others to fill
        self.saved = False
        try:
            self.path = save_target(directory)
            if not writer:
                return
            self.created = _missing_folders(self.path)
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OSError(
                    err.errno,
                    f"Expected a folder that can be created (got {self.path}: {err.strerror}); "
                    "pass a folder on a writable disk",
                ) from err
            probe_save(self.path)
        except (ValueError, OSError) as err:
            self._remove_created()
            raise UsageError(f"--output-dir: {err}") from err

    def subfolder(self, name: str) -> Path:
        """``<folder>/<name>`` for a tool that creates it; removed on failure if it is new."""
        if not (self.path / name).exists():
            self.scratch.append(name)
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        """Write ``<folder>/<name>`` atomically (remembering what a failed run puts back)."""
        path = self.path / name
        if not self.writer:
            return path
        if not self.saved and name not in self.previous:
            self.previous[name] = path.read_bytes() if path.is_file() else None
        _write_atomic(path, text.encode())
        return path

    def save(self, model: Any, state_dict: dict | None = None) -> Path:
        """Save ``model``'s adapter into the folder; if that fails, somewhere else, and stop.

        Args:
            model: the adapted model.
            state_dict: the full state dict gathered from a sharded model (FSDP, DeepSpeed:
                :func:`smore_gnn.train.distributed.full_state_dict`); ``None``: the model's own
                tensors.

        Raises:
            AdapterSavedElsewhere: the save into the folder failed; the message names where the
                adapter went instead.
        """
        from smore_gnn.hf.methods import save_any
        from smore_gnn.train.distributed import save_adapter_gathered

        def save(directory: Path) -> None:
            if state_dict is None:
                save_any(model, directory)
            else:
                save_adapter_gathered(model, directory, state_dict)

        if not self.writer:
            self.saved = True
            return self.path
        try:
            save(self.path)
        except Exception as err:
            rescue = self._rescue(save, err)
            raise AdapterSavedElsewhere(
                f"--output-dir: could not save the trained adapter into {self.path} "
                f"({type(err).__name__}: {err}); it was saved to {rescue} instead: use that "
                "folder (e.g. --adapter), and pass an --output-dir with room to save into"
            ) from err
        self.saved = True
        return self.path

    def _rescue(self, save: Callable[[Path], None], err: Exception) -> Path:
        """Save into a new time-stamped folder beside the output folder, else in the temp dir."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        places = (self.path.parent, Path(tempfile.gettempdir()))
        for place in places:
            rescue = place / f"{self.path.name}-{stamp}"
            suffix = 1
            while os.path.lexists(rescue):
                rescue, suffix = place / f"{self.path.name}-{stamp}-{suffix}", suffix + 1
            try:
                save(rescue)
            except Exception:  # the next place, then the original error
                continue
            config = self.path / "finetune_config.yaml"
            if config.is_file():
                shutil.copyfile(config, rescue / config.name)
            return rescue
        raise err

    @contextmanager
    def cleaned_up_on_failure(self) -> Iterator[RunFolder]:
        """On any exception before the adapter is saved, :meth:`discard`, then re-raise."""
        try:
            yield self
        except BaseException:
            if not self.saved:
                self.discard()
            raise

    def discard(self) -> None:
        """Remove what the run created and put back the files it overwrote; nothing else."""
        if not self.writer:
            return
        for name, before in self.previous.items():
            path = self.path / name
            if before is None:
                path.unlink(missing_ok=True)
            else:
                _write_atomic(path, before)
        for name in self.scratch:
            shutil.rmtree(self.path / name, ignore_errors=True)
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except OSError:  # not empty (someone else's files) or gone: leave it
                return

"""Folders written as a unit (:func:`atomic_folder`), also into mount points and through symlinks.

A save into ``directory`` writes the folder that path resolves to: a symlink is followed and
stays a link. The new files are written into a temporary folder on the target's own filesystem,
flushed to disk, and moved into place by renames, which are atomic within one filesystem:

* Beside the target (the usual case): ``.<name>.saving-<tag>`` next to it receives the new files
  and then every other entry of the old folder (``metrics.json``, checkpoints, ...); the old
  folder is renamed to ``.<name>.old-<tag>`` and the new one into place. A reader sees the old
  folder or the new one, never a mix.
* Inside the target, when it cannot be renamed: a mount point (a container volume), a rename that
  fails with ``EXDEV``/``EBUSY``, or a parent where no folder can be created. The new files are
  written into ``<name>/.<name>.saving-<tag>``; the entries they replace move into
  ``<name>/.<name>.old-<tag>`` (``adapter_config.json`` first), then the new ones into place
  (``adapter_config.json`` last). A reader sees the old adapter, the new one, or, for the moment
  of the moves, a folder without ``adapter_config.json``; never a mix.

``<tag>`` is ``<UTC time>-<pid>-<8 hex digits>``: names sort by time, and the pid tells whether the
save may still be running. A save that completes removes its backup and every backup that earlier,
killed saves left; a folder is renamed to ``.<name>.removing-<tag>`` before it is deleted, so an
``.old-`` folder is always a complete copy. What a killed save leaves is cleaned up by the next
save into the same folder (:func:`recover_killed_saves`). :func:`probe_save` does a save's file
operations on a probe, so that a command can check a folder before a long run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# The entry that makes a folder an adapter (peft's name too): where a folder cannot be replaced
# as a unit, it is moved out first and in last, so a partly moved folder is not an adapter.
CONFIG_NAME = "adapter_config.json"
_KINDS = ("saving", "old", "removing", "probe")
_TAG = r"(?:(\d{8}T\d{12}Z)-)?(\d+)-([0-9a-f]{8})"  # 0.2 wrote <pid>-<hex> without the time
_UNREPLACEABLE = {errno.EXDEV, errno.EBUSY}  # renaming a mount point, or across filesystems
_NO_ROOM_BESIDE = _UNREPLACEABLE | {errno.EACCES, errno.EPERM, errno.EROFS}
_IN_PROGRESS: set[str] = set()  # names of the temporary folders of this process's saves


class _CannotReplace(Exception):
    """The target cannot be replaced as a unit from beside it: save inside it instead."""


@dataclass(frozen=True)
class _Leftover:
    path: Path
    kind: str  # one of _KINDS
    tag: str
    stamp: str  # "" for 0.2 names
    pid: int
    inside: bool  # in the target rather than beside it


def save_target(directory: str | Path) -> Path:
    """The folder a save into ``directory`` writes: its real path (symlinks followed), checked.

    Raises:
        ValueError: ``directory`` is a file, a symlink to a missing folder, the working
            directory or one of its parents.
    """
    given = Path(os.path.abspath(directory))
    out = Path(os.path.realpath(given))
    if given.is_symlink() and not out.exists():
        raise ValueError(
            f"Expected a folder to save the adapter in (got {given}, a symlink to the missing "
            f"{out}); create {out} or pass another folder"
        )
    if out.exists() and not out.is_dir():
        raise ValueError(f"Expected a folder to save the adapter in (got the file {out})")
    cwd = Path(os.path.realpath(os.getcwd()))
    if out == cwd or out in cwd.parents:
        raise ValueError(
            f"Expected a folder other than the working directory or its parents (got {out}); "
            "the save replaces the folder as a whole: pass a subfolder such as ./adapter"
        )
    return out


def _new_tag() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _named(out: Path, kind: str, tag: str, inside: bool = False) -> Path:
    return (out if inside else out.parent) / f".{out.name}.{kind}-{tag}"


def _leftovers(out: Path) -> list[_Leftover]:
    """The temporary entries of saves into ``out``, beside it and inside it, oldest first."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.({'|'.join(_KINDS)})-({_TAG})")
    found = []
    for inside, place in ((False, out.parent), (True, out)):
        for entry in sorted(os.listdir(place)) if place.is_dir() else []:
            match = pattern.fullmatch(entry)
            if match:
                kind, tag, stamp, pid = match[1], match[2], match[3] or "", int(match[4])
                found.append(_Leftover(place / entry, kind, tag, stamp, pid, inside))
    return sorted(found, key=lambda item: (item.stamp, item.path.name))


def _in_progress(path: Path, pid: int) -> bool:
    """Whether the save that named ``path`` after process ``pid`` may still run here.

    True whenever that cannot be told. Our own pid counts only for the saves this process has
    in flight: a restarted job often gets the pid of the killed one (PID 1 in a container).
    """
    if pid == os.getpid():
        return path.name in _IN_PROGRESS
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: the process exists, owned by another user
        return True
    return True


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk (folders: where the OS allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():  # e.g. Windows cannot open a folder; its renames are still atomic
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            _fsync(path)
    _fsync(folder)


def _remove(out: Path, item: _Leftover) -> None:
    """Delete a leftover, best effort; a folder is first renamed to ``.removing-``."""
    try:
        if item.path.is_dir() and not item.path.is_symlink():
            doomed = item.path
            if item.kind in ("old", "saving"):  # may be a complete copy: never a partial one
                doomed = _named(out, "removing", _new_tag(), item.inside)
                os.rename(item.path, doomed)
            shutil.rmtree(doomed)
        else:
            item.path.unlink(missing_ok=True)
    except OSError:  # a leftover that cannot be removed now stays for the next save
        pass


def atomic_folder(directory: str | Path, write: Callable[[Path], Any]) -> Path:
    """Write a folder as a unit: ``write(tmp)`` fills a temporary folder, which replaces it.

    ``directory`` is resolved and checked by :func:`save_target`; see the module docstring for
    the steps. If a step raises, the new files are removed and the old folder is left as it was.
    Before anything moves, what killed saves into the folder left is cleaned up
    (:func:`recover_killed_saves`); after the new folder is in place, every backup of this and
    earlier saves is removed.

    Returns:
        The folder written (``directory`` with symlinks resolved).
    """
    out = save_target(directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not (out.is_dir() and os.path.ismount(out)):
        try:
            _save_beside(out, write)
            return out
        except _CannotReplace:
            pass
    _save_inside(out, write)
    return out


def _save_beside(out: Path, write: Callable[[Path], Any]) -> None:
    tag = _new_tag()
    tmp, old = _named(out, "saving", tag), _named(out, "old", tag)
    try:
        tmp.mkdir()
    except OSError as err:
        if out.is_dir() and err.errno in _NO_ROOM_BESIDE:
            raise _CannotReplace from err
        raise
    _IN_PROGRESS.add(tmp.name)
    moved: list[str] = []
    swapping = False
    try:
        write(tmp)
        _fsync_tree(tmp)
        recover_killed_saves(out, keep=tmp)
        swapping = True
        if out.exists():
            for entry in sorted(os.listdir(out)):
                if not (tmp / entry).exists():  # keep what the writer did not replace
                    os.rename(out / entry, tmp / entry)
                    moved.append(entry)
            os.rename(out, old)
        os.rename(tmp, out)
    except BaseException as err:
        if old.exists() and not out.exists():
            os.rename(old, out)
        for entry in moved:
            if (tmp / entry).exists() and out.exists():
                os.rename(tmp / entry, out / entry)
        shutil.rmtree(tmp, ignore_errors=True)
        if swapping and isinstance(err, OSError) and err.errno in _UNREPLACEABLE and out.is_dir():
            raise _CannotReplace from err
        raise
    finally:
        _IN_PROGRESS.discard(tmp.name)
    _fsync(out.parent)
    _discard_backups(out)


def _save_inside(out: Path, write: Callable[[Path], Any]) -> None:
    tag = _new_tag()
    tmp, old = _named(out, "saving", tag, inside=True), _named(out, "old", tag, inside=True)
    tmp.mkdir()
    _IN_PROGRESS.add(tmp.name)
    aside: list[str] = []
    placed: list[str] = []
    try:
        write(tmp)
        _fsync_tree(tmp)
        recover_killed_saves(out, keep=tmp)
        entries = sorted(os.listdir(tmp), key=lambda entry: (entry == CONFIG_NAME, entry))
        for entry in reversed(entries):  # the config leaves first: out stops being an adapter
            if os.path.lexists(out / entry):
                old.mkdir(exist_ok=True)
                os.rename(out / entry, old / entry)
                aside.append(entry)
        for entry in entries:  # the config comes last: out is an adapter again, the new one
            os.rename(tmp / entry, out / entry)
            placed.append(entry)
    except BaseException:
        try:
            for entry in reversed(placed):
                os.rename(out / entry, tmp / entry)
            for entry in reversed(aside):
                os.rename(old / entry, out / entry)
            if old.is_dir():
                old.rmdir()
        except OSError:  # tmp keeps its entries: the next save finishes the roll-back
            pass
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _IN_PROGRESS.discard(tmp.name)
    _fsync(out)
    with contextlib.suppress(OSError):  # emptied: its entries are in place
        tmp.rmdir()
    _discard_backups(out)


def _discard_backups(out: Path) -> None:
    """Remove the backups, half-removed folders and probes of saves into ``out`` that ended.

    A backup stays while its save's temporary folder exists: that save may not have finished,
    and :func:`recover_killed_saves` may still need it.
    """
    items = _leftovers(out)
    saving = {(item.inside, item.tag) for item in items if item.kind == "saving"}
    for item in items:
        if item.kind == "saving" or _in_progress(item.path, item.pid):
            continue
        if item.kind == "old" and (item.inside, item.tag) in saving:
            continue
        _remove(out, item)


def recover_killed_saves(directory: str | Path, keep: str | Path | None = None) -> list[Path]:
    """Clean up after :func:`atomic_folder` saves into ``directory`` that were killed.

    Touched: entries named ``.<name>.<kind>-<tag>`` beside ``directory`` or inside it, of
    saves whose process is gone (saving into one folder from two machines at once is not
    supported). A save beside the folder may have carried entries of ``directory``
    (``metrics.json``, ...) into its temporary folder and, killed between its last two renames,
    left ``directory`` as ``.<name>.old-<tag>``: that folder is renamed back, carried entries
    that ``directory`` lacks return to it (unless ``keep``, the folder of the save now running,
    has the name: it supersedes them), and the temporary folder is removed once each entry it
    still holds is superseded. A save inside the folder that was killed before all its new
    entries were in place has its replaced entries moved back from its ``.old-`` folder. Then,
    if ``directory`` is a folder, the backups of ended saves are removed: it supersedes them.

    Returns:
        The temporary folders removed.
    """
    out = Path(os.path.realpath(directory))
    keep = None if keep is None else Path(keep)
    removed = []
    for item in _leftovers(out):
        if item.kind != "saving" or item.path == keep or not item.path.is_dir():
            continue
        if _in_progress(item.path, item.pid):
            continue
        try:
            restore = _restore_inside if item.inside else _restore_beside
            if restore(out, item, keep):
                removed.append(item.path)
        except OSError:  # best effort: a folder that cannot be cleaned now stays for later
            continue
    if out.is_dir():
        _discard_backups(out)
    return removed


def _restore_beside(out: Path, item: _Leftover, keep: Path | None) -> bool:
    stale, old = item.path, _named(out, "old", item.tag)

    def superseded(entry: str) -> bool:
        return (out / entry).exists() or (keep is not None and (keep / entry).exists())

    if not out.exists() and old.is_dir():
        os.rename(old, out)  # killed between its renames: the previous folder returns
    for entry in sorted(os.listdir(stale)):
        if out.is_dir() and not superseded(entry):
            os.rename(stale / entry, out / entry)  # carried over by the killed save
    if not all(superseded(entry) for entry in os.listdir(stale)):
        return False
    _remove(out, item)
    return True


def _restore_inside(out: Path, item: _Leftover, keep: Path | None) -> bool:
    stale, old = item.path, _named(out, "old", item.tag, inside=True)
    if os.listdir(stale) and old.is_dir():  # killed before its last entry was in place
        entries = sorted(os.listdir(old), key=lambda entry: (entry == CONFIG_NAME, entry))
        for entry in entries:  # the config last: a complete previous adapter, or none
            target = out / entry
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)  # a partly moved new folder
            os.rename(old / entry, target)
        old.rmdir()
    _remove(out, item)
    return True


def latest_backup(directory: str | Path) -> tuple[Path, bool] | None:
    """The newest backup interrupted saves of ``directory`` left, and whether it lies inside."""
    out = Path(os.path.realpath(directory))
    backups = [item for item in _leftovers(out) if item.kind == "old" and item.path.is_dir()]
    return (backups[-1].path, backups[-1].inside) if backups else None


def probe_save(directory: str | Path) -> Path:
    """Do the file operations of a save into ``directory`` on a probe, then remove it.

    Beside the target: create a temporary folder, write and flush a file in it, move an entry
    of the target into it and rename it. Inside the target (a mount point, or where that
    fails as a save would): the same with the folder in the target. Only renaming the target
    itself is not tried; a save that finds it impossible saves inside the target.

    Returns:
        The resolved target (:func:`save_target`).

    Raises:
        ValueError: a folder the save refuses.
        OSError: a step failed; the message names the folder.
    """
    out = save_target(directory)
    try:
        if not (out.is_dir() and os.path.ismount(out)):
            try:
                _probe(out, inside=False)
                return out
            except OSError as err:
                if not (out.is_dir() and err.errno in _NO_ROOM_BESIDE):
                    raise
        _probe(out, inside=True)
    except OSError as err:
        where = f" at {err.filename}" if err.filename else ""
        raise OSError(
            err.errno,
            f"Expected a folder an adapter can be saved in (got {out}: {err.strerror or err}"
            f"{where}); pass a folder on a writable disk",
        ) from err
    return out


def _probe(out: Path, inside: bool) -> None:
    folder = _named(out, "probe", _new_tag(), inside)
    folder.mkdir()
    try:
        with open(folder / "probe", "wb") as file:
            file.write(b"probe")
        _fsync_tree(folder)
        if out.is_dir() and not inside:  # the save moves the target's entries into its folder
            entry = _named(out, "probe", _new_tag(), inside=True)
            entry.write_bytes(b"probe")
            try:
                os.rename(entry, folder / entry.name)
            finally:
                entry.unlink(missing_ok=True)
        if inside:  # the save moves each new entry into the target
            os.rename(folder / "probe", _named(out, "probe", _new_tag(), inside=True))
        else:  # the save renames its folder to the target's name
            os.rename(folder, _named(out, "probe", _new_tag()))
    finally:
        for item in _leftovers(out):
            if item.kind == "probe" and item.pid == os.getpid():
                _remove(out, item)

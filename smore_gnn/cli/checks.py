"""The CLI's user error, and checks of the inputs and outputs of ``smore-gnn``.

:class:`UsageError` is what every check raises (one line, exit code 2). A figure path
(``--png``, or the default inside ``--output-dir``) is resolved and proven writable by creating
and removing a temporary file where it will go, so a bad path stops the run before training
rather than after it. peft's ``size mismatch`` error for a LoRA folder of another base model
becomes a one-line error like the one S'MoRE folders get.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any


class UsageError(ValueError):
    """A user error in the command line, config file or inputs: one line, exit code 2."""


ROUTING_PNG = "routing_tree.png"  # the file name used when --png is unset or a folder
_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from "
    r"checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)"
)


def figure_formats() -> tuple[str, ...]:
    """The file extensions matplotlib can write (``png``, ``pdf``, ``svg``, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return tuple(sorted(FigureCanvasBase.get_supported_filetypes()))


def writable_folder(folder: Path, flag: str) -> None:
    """Prove that files can be created in ``folder`` (or, if missing, where it would be made).

    The probe is the real operation: a temporary file is created and removed in ``folder``'s
    nearest existing ancestor; nothing is left behind.

    Raises:
        UsageError: Naming ``flag`` if an ancestor is a file or the place is not writable.
    """
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise UsageError(
            f"{flag}: {str(existing)!r} is a file, so no folder can be made at {str(folder)!r}; "
            "pass a path in a folder"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UsageError(
            f"{flag}: cannot write in {str(existing)!r} ({err.strerror or err}); "
            "pass a writable place"
        ) from err


def figure_path(png: str | None, output_dir: str) -> Path:
    """The file the routing tree is drawn to, checked before any model is loaded.

    ``png`` unset: ``output_dir/routing_tree.png``. ``png`` an existing folder (or ending with
    ``/``): ``png/routing_tree.png``. Otherwise ``png`` itself, whose extension must be one
    matplotlib writes.

    Raises:
        UsageError: If the extension is missing or unsupported, or the place is not writable.
    """
    flag = "--png" if png else "--output-dir"
    if png is not None and not png.strip():
        raise UsageError("--png: expected a file name such as tree.png (got an empty string)")
    if png is None:
        path = Path(output_dir) / ROUTING_PNG
    elif Path(png).is_dir() or png.endswith(("/", "\\")):
        path = Path(png) / ROUTING_PNG
    else:
        path = Path(png)
        suffix = path.suffix.lower().lstrip(".")
        formats = figure_formats()
        if suffix not in formats:
            got = f"the extension .{suffix}" if suffix else "no extension"
            raise UsageError(
                f"--png: {png!r} has {got}, which matplotlib cannot write; end the file name "
                f"with one of {', '.join('.' + f for f in formats)} (e.g. tree.png)"
            )
    writable_folder(path.parent, flag)
    return path


def adapter_mismatch(err: RuntimeError, directory: str) -> ValueError | None:
    """peft's ``size mismatch`` load error as one line naming the folder, or ``None``."""
    found = _MISMATCH.findall(str(err))
    if not found:
        return None
    shapes = [
        f"{name.removeprefix('base_model.model.').replace('.default.', '.')}: "
        f"expected {model}, got {folder}"
        for name, folder, model in found
    ]
    return ValueError(
        f"the adapter in {directory} does not fit this model: wrong shapes {shapes[:3]} "
        f"({len(shapes)}); load it into the base model it was trained on (--model)"
    )


def check_token(tokenizer: Any, prompt: str, token: int) -> None:
    """Refuse a ``--token`` position outside ``prompt``'s tokens (negative counts from the end)."""
    n_tokens = len(tokenizer(prompt)["input_ids"])
    if not -n_tokens <= token < n_tokens:
        raise UsageError(
            f"--token: {token} is outside the prompt, which has {n_tokens} tokens; use "
            f"0..{n_tokens - 1}, or -1 for the last token"
        )

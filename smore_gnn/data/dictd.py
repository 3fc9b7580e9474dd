"""A small reader for dictd databases (``<name>.index`` + ``<name>.dict`` or ``.dict.dz``).

The index has one line per entry: ``headword<TAB>offset<TAB>length`` (a fourth field, the
original headword, may follow), where offset and length are byte positions in the
uncompressed ``.dict`` text written as base-64 numbers (digits
``A-Za-z0-9+/``, most significant first; ``"B0"`` is 1*64 + 52 = 116). A ``.dict.dz`` file
is dictzip, which is gzip with an extra header field, so plain gzip decompression reads it.
Entries whose headword starts with ``00-database-`` / ``00database`` are metadata.

Reference: the dictd(8) and dictzip(1) manual pages.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DICTD_DIR = "/usr/share/dictd"
B64_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(B64_DIGITS)}
_META_PREFIXES = ("00-database-", "00database")


def decode_b64(text: str) -> int:
    """Decode a dictd base-64 number (``"A"`` = 0, ``"B0"`` = 116).

    Raises:
        ValueError: If ``text`` is empty or holds a character outside ``A-Za-z0-9+/``.
    """
    if not text or any(c not in _B64_VALUE for c in text):
        raise ValueError(f"expected a base-64 number (digits A-Za-z0-9+/), got {text!r}")
    value = 0
    for c in text:
        value = value * 64 + _B64_VALUE[c]
    return value


def encode_b64(value: int) -> str:
    """Encode a non-negative integer as a dictd base-64 number (inverse of :func:`decode_b64`)."""
    if value < 0:
        raise ValueError(f"expected a non-negative integer, got {value}")
    digits = B64_DIGITS[value % 64]
    while value >= 64:
        value //= 64
        digits = B64_DIGITS[value % 64] + digits
    return digits


@dataclass(frozen=True)
class IndexEntry:
    """One index line: the headword and the entry's byte span in the uncompressed text."""

    headword: str
    offset: int
    length: int
    line: int  # 1-based line number in the index file, for error messages

    @property
    def is_meta(self) -> bool:
        """Whether this is a ``00-database-*`` metadata entry rather than a dictionary word."""
        return self.headword.startswith(_META_PREFIXES)


def read_index(path: str | Path) -> list[IndexEntry]:
    """Parse a dictd ``.index`` file, in file order (metadata entries included).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If a line is not ``headword<TAB>offset<TAB>length`` with base-64 numbers
            (the file and line number are named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dictd index {str(path)!r} does not exist; check the path")
    entries = []
    with path.open(encoding="utf-8", errors="strict") as handle:
        for lineno, line in enumerate(handle, start=1):
            fields = line.rstrip("\n").split("\t")
            try:
                if len(fields) not in (3, 4):
                    raise ValueError(f"expected 3 or 4 tab-separated fields, got {len(fields)}")
                offset, length = decode_b64(fields[1]), decode_b64(fields[2])
            except ValueError as err:
                msg = f"{path}:{lineno}: bad index line {line.rstrip()!r} ({err})"
                raise ValueError(f"{msg}; expected 'headword<TAB>offset<TAB>length'") from err
            entries.append(IndexEntry(fields[0], offset, length, lineno))
    return entries


def read_dict_bytes(path: str | Path) -> bytes:
    """Read the whole uncompressed text of a ``.dict`` or dictzip ``.dict.dz`` file.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If a ``.dz`` file is not valid gzip/dictzip data.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dictd data file {str(path)!r} does not exist; check the path")
    raw = path.read_bytes()
    if path.suffix != ".dz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        msg = f"{path}: expected dictzip (gzip) data, could not decompress ({err})"
        raise ValueError(f"{msg}; reinstall the package or use the uncompressed .dict") from err


class DictdDatabase:
    """An opened dictd database: headwords and their entry texts.

    Args:
        index_path: The ``.index`` file.
        dict_path: The ``.dict`` or ``.dict.dz`` file.
        errors: How undecodable UTF-8 bytes are handled (``"strict"`` raises; ``"replace"``
            suits databases with a few stray Latin-1 bytes, such as ``elements``).

    Raises:
        FileNotFoundError: If a file is missing.
        ValueError: If the index is malformed, points past the end of the data, or an entry
            is not UTF-8 (the index file and line are named).
    """

    def __init__(
        self, index_path: str | Path, dict_path: str | Path, errors: str = "strict"
    ) -> None:
        self.index_path, self.dict_path = Path(index_path), Path(dict_path)
        self.errors = errors
        self.index = read_index(self.index_path)
        self._data = read_dict_bytes(self.dict_path)
        for entry in self.index:
            if entry.offset + entry.length > len(self._data):
                end = entry.offset + entry.length
                msg = (
                    f"{self.index_path}:{entry.line}: entry {entry.headword!r} ends at byte "
                    f"{end}, past the end of {self.dict_path} ({len(self._data)} bytes)"
                )
                raise ValueError(f"{msg}; the index and data files do not belong together")

    @classmethod
    def open(
        cls, name: str, directory: str | Path = DEFAULT_DICTD_DIR, errors: str = "strict"
    ) -> DictdDatabase:
        """Open ``<directory>/<name>.index`` with ``<name>.dict.dz`` (or ``<name>.dict``).

        Raises:
            FileNotFoundError: If the database is not there (names the Debian package hint).
        """
        return cls(*cls.files(name, directory), errors)

    @staticmethod
    def files(name: str, directory: str | Path = DEFAULT_DICTD_DIR) -> tuple[Path, Path]:
        """The ``(index, data)`` files of database ``name`` in ``directory``, without reading
        them (``<name>.dict.dz`` preferred over ``<name>.dict``).

        Raises:
            FileNotFoundError: If either is missing (names the Debian package hint).
        """
        directory = Path(directory)
        index = directory / f"{name}.index"
        candidates = (directory / f"{name}.dict.dz", directory / f"{name}.dict")
        data = next((path for path in candidates if path.is_file()), None)
        if not index.is_file() or data is None:
            msg = f"dictd database {name!r} not found in {str(directory)!r} (need {name}.index"
            raise FileNotFoundError(
                f"{msg} and {name}.dict.dz or {name}.dict); install it, e.g. "
                f"`apt-get install dict-{name}`, or pass the directory holding it"
            )
        return index, data

    def text(self, entry: IndexEntry) -> str:
        """The UTF-8 text of one entry (its headword line included, as dictd stores it)."""
        chunk = self._data[entry.offset : entry.offset + entry.length]
        try:
            return chunk.decode("utf-8", self.errors)
        except UnicodeDecodeError as err:
            msg = f"{self.index_path}:{entry.line}: entry {entry.headword!r} is not UTF-8"
            raise ValueError(f"{msg} ({err.reason}); pass errors='replace' to read it") from err

    def entries(self, include_meta: bool = False) -> Iterator[tuple[str, str]]:
        """Yield ``(headword, text)`` in index order; metadata entries only if asked.

        Entries with an empty headword (``freedict-eng-deu`` has one) are skipped.
        """
        for entry, text in self.indexed_entries(include_meta):
            yield entry.headword, text

    def indexed_entries(self, include_meta: bool = False) -> Iterator[tuple[IndexEntry, str]]:
        """:meth:`entries` with each entry's :class:`IndexEntry` (its index line) for errors."""
        for entry in self.index:
            if entry.headword and (include_meta or not entry.is_meta):
                yield entry, self.text(entry)

    def lookup(self, headword: str) -> list[str]:
        """All entry texts whose headword equals ``headword`` (case-insensitive)."""
        key = headword.casefold()
        return [self.text(e) for e in self.index if e.headword.casefold() == key]

    def __len__(self) -> int:
        return sum(not entry.is_meta for entry in self.index)

    def __repr__(self) -> str:
        return f"DictdDatabase({str(self.index_path)!r}, entries={len(self)})"

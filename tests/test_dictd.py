"""Tests for smore_gnn.data.dictd on small dictd files written by hand in each test."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from smore_gnn.data.dictd import (
    DictdDatabase,
    decode_b64,
    encode_b64,
    read_dict_bytes,
    read_index,
)

ENTRIES = [
    ("00-database-short", "00-database-short\n     A test dictionary\n"),
    ("apple", "apple\nPomme, a red fruit.\n"),
    ("Éclair", "Éclair\nA French pastry; non-ASCII bytes shift the offsets.\n"),
    ("zebra", "zebra\nA striped animal.\n"),
]


def write_dictd(folder: Path, name: str = "test", compress: bool = True) -> Path:
    """Write ``name.index`` and ``name.dict.dz`` (gzip) or ``name.dict`` with real offsets."""
    data, lines = b"", []
    for headword, text in ENTRIES:
        raw = text.encode("utf-8")
        lines.append(f"{headword}\t{encode_b64(len(data))}\t{encode_b64(len(raw))}\n")
        data += raw
    (folder / f"{name}.index").write_text("".join(lines), encoding="utf-8")
    if compress:
        (folder / f"{name}.dict.dz").write_bytes(gzip.compress(data))
    else:
        (folder / f"{name}.dict").write_bytes(data)
    return folder


def test_b64_numbers_match_hand_computed_values() -> None:
    assert decode_b64("A") == 0
    assert decode_b64("/") == 63
    assert decode_b64("BA") == 64
    assert decode_b64("B0") == 1 * 64 + 52  # '0' is digit 52
    assert decode_b64("CK") == 2 * 64 + 10
    for value in (0, 1, 63, 64, 4095, 4096, 123456789):
        assert decode_b64(encode_b64(value)) == value
    with pytest.raises(ValueError, match="base-64 number"):
        decode_b64("a-b")
    with pytest.raises(ValueError, match="base-64 number"):
        decode_b64("")


def test_index_lines_parse_to_offsets_and_lengths(tmp_path: Path) -> None:
    path = tmp_path / "x.index"
    path.write_text("apple\tB0\tCK\nzebra\tA\tBA\toriginal Zebra\n", encoding="utf-8")
    entries = read_index(path)
    assert [(e.headword, e.offset, e.length, e.line) for e in entries] == [
        ("apple", 116, 138, 1),
        ("zebra", 0, 64, 2),
    ]


@pytest.mark.parametrize("compress", [True, False])
def test_entries_round_trip_through_gzip_and_plain_files(tmp_path: Path, compress: bool) -> None:
    db = DictdDatabase.open("test", write_dictd(tmp_path, compress=compress))
    assert list(db.entries()) == ENTRIES[1:]  # metadata left out by default
    assert list(db.entries(include_meta=True)) == ENTRIES
    assert len(db) == 3
    assert db.lookup("éCLAIR") == [ENTRIES[2][1]]
    assert db.lookup("missing") == []


def test_corrupt_index_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.index"
    path.write_text("apple\tA\tB\nbroken line without tabs\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.index:2: bad index line 'broken line"):
        read_index(path)
    path.write_text("apple\tA\tB\nzebra\tA!\tB\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.index:2: .*'A!'"):
        read_index(path)


def test_offset_past_the_end_names_the_index_line(tmp_path: Path) -> None:
    write_dictd(tmp_path)
    index = tmp_path / "test.index"
    index.write_text(index.read_text() + "ghost\tZZZ\tB\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"test\.index:5: entry 'ghost' ends at byte"):
        DictdDatabase.open("test", tmp_path)


def test_corrupt_dictzip_and_missing_files_say_which_file(tmp_path: Path) -> None:
    (tmp_path / "bad.dict.dz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"bad\.dict\.dz: expected dictzip"):
        read_dict_bytes(tmp_path / "bad.dict.dz")
    with pytest.raises(FileNotFoundError, match=r"nothere\.index"):
        read_index(tmp_path / "nothere.index")
    with pytest.raises(FileNotFoundError, match="apt-get install dict-elements"):
        DictdDatabase.open("elements", tmp_path)


def test_non_utf8_entry_is_named_unless_replaced(tmp_path: Path) -> None:
    raw = "caf\xe9\nLatin-1 text\n".encode("latin-1")
    (tmp_path / "l1.index").write_text(f"cafe\tA\t{encode_b64(len(raw))}\n", encoding="utf-8")
    (tmp_path / "l1.dict").write_bytes(raw)
    with pytest.raises(ValueError, match=r"l1\.index:1: entry 'cafe' is not UTF-8"):
        list(DictdDatabase.open("l1", tmp_path).entries())
    text = DictdDatabase.open("l1", tmp_path, errors="replace").lookup("cafe")[0]
    assert text == "caf\ufffd\nLatin-1 text\n"

"""Tests for smore_gnn.data.wordnet: parsing, the question builder and the bundled copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from smore_gnn.data import load_bundled, wordnet
from smore_gnn.data.__main__ import main
from smore_gnn.data.records import detect_format, load_jsonl
from smore_gnn.data.wordnet import (
    NOUN_CATEGORIES,
    TYPES,
    build_wordnet_mc,
    parse_data_file,
    write_bundled,
)

WORDNET = Path(wordnet.DEFAULT_WORDNET_DIR)
needs_wordnet = pytest.mark.skipif(
    not (WORDNET / "data.noun").is_file(), reason="WordNet 3.0 (apt-get install wordnet-base)"
)


def check_records(records: list[dict], n: int) -> None:
    assert len(records) == n
    assert detect_format(records) == "mc"
    for r in records:
        assert set(r) == {"question", "choices", "answer", "type", "synset"}
        assert isinstance(r["answer"], int) and 0 <= r["answer"] < 4
        assert len(r["choices"]) == 4
        assert len({c.lower() for c in r["choices"]}) == 4, r
        assert r["type"] in TYPES
    assert {r["type"] for r in records} == set(TYPES)
    assert len({r["synset"] for r in records}) == n  # one question per anchor synset


def test_parse_data_file_reads_hex_word_count_pointers_and_gloss(tmp_path: Path) -> None:
    words = " ".join(f"w_{i} 0" for i in range(10))
    path = tmp_path / "data.noun"
    path.write_text(
        "  1 licence header line\n"
        f'00000100 05 n 0a {words} 002 @ 00000200 n 0000 ~ 00000300 n 0000 | a gloss; "ex"\n',
        encoding="utf-8",
    )
    syn = parse_data_file(path)["00000100-n"]
    assert syn.lexfile == 5 and len(syn.lemmas) == 10 and syn.lemmas[3] == "w 3"
    assert syn.hypernyms == ["00000200-n"] and syn.hyponyms == ["00000300-n"]
    assert syn.gloss == 'a gloss; "ex"'


def test_headword_is_the_word_each_question_type_asks_about() -> None:
    hyponym = {"question": "Which of the following is a kind of feel?", "type": "hyponym"}
    category = {
        "question": "Which category does the word 'ice cream' belong to?",
        "type": "category",
    }
    definition = {"question": "Which word means: x?", "choices": ["a", "rev"], "answer": 1}
    assert wordnet.headword({**hyponym, "choices": ["touch"], "answer": 0}) == "feel"
    assert wordnet.headword({**category, "choices": ["food"], "answer": 0}) == "ice cream"
    assert wordnet.headword({**definition, "type": "definition"}) == "rev"


def test_missing_wordnet_dir_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install wordnet-base"):
        build_wordnet_mc(tmp_path)


@pytest.fixture(scope="module")
def built() -> tuple[list[dict], list[dict]]:
    if not (WORDNET / "data.noun").is_file():
        pytest.skip("WordNet 3.0 not installed (apt-get install wordnet-base)")
    return build_wordnet_mc(WORDNET, n_train=90, n_test=45, seed=0)


@needs_wordnet
def test_builder_is_valid_and_disjoint(built: tuple[list[dict], list[dict]]) -> None:
    train, test = built
    check_records(train, 90)
    check_records(test, 45)
    assert not {r["synset"] for r in train} & {r["synset"] for r in test}


@needs_wordnet
def test_builder_is_deterministic_for_a_seed(built: tuple[list[dict], list[dict]]) -> None:
    assert build_wordnet_mc(WORDNET, n_train=90, n_test=45, seed=0) == built
    assert build_wordnet_mc(WORDNET, n_train=90, n_test=45, seed=1) != built


@needs_wordnet
def test_answers_are_right_and_distractors_wrong(built: tuple[list[dict], list[dict]]) -> None:
    db = wordnet._load_builder(str(WORDNET.resolve()))
    for r in built[0] + built[1]:
        syn = db.syn[r["synset"]]
        answer = r["choices"][r["answer"]]
        wrong = [c for i, c in enumerate(r["choices"]) if i != r["answer"]]
        if r["type"] == "hyponym":
            name = r["question"].removeprefix("Which of the following is a kind of ")[:-1]
            under = db.below(db.senses(name, "n"))
            assert db.senses(answer, "n") & under, r
            assert not any(db.senses(w, "n") & under for w in wrong), r
        elif r["type"] == "definition":
            assert answer in syn.lemmas and not set(wrong) & set(syn.lemmas), r
        else:
            assert answer == NOUN_CATEGORIES[syn.lexfile]
            assert set(wrong) <= set(NOUN_CATEGORIES.values())


def test_bundled_copy_loads_with_expected_sizes_and_disjoint_synsets() -> None:
    train, test = load_bundled("wordnet", "train"), load_bundled("wordnet", "test")
    check_records(train, 2000)
    check_records(test, 500)
    assert not {r["synset"] for r in train} & {r["synset"] for r in test}
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_bundled("wordnet", "validation")
    with pytest.raises(ValueError, match="'multitask', 'wordnet'"):
        load_bundled("wordnet_mc", "train")


def test_bundled_copy_ships_licence_and_stays_small() -> None:
    folder = Path(wordnet.__file__).parents[1] / "resources" / "wordnet_mc"
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in (folder / "LICENSE").read_text()
    assert "python -m smore_gnn.data build wordnet" in (folder / "README.md").read_text()
    assert sum(p.stat().st_size for p in folder.iterdir()) < 1.5e6


@needs_wordnet
def test_bundled_copy_is_reproducible() -> None:
    train, test = build_wordnet_mc(WORDNET, n_train=2000, n_test=500, seed=0)
    assert train == load_bundled("wordnet", "train")
    assert test == load_bundled("wordnet", "test")


@needs_wordnet
def test_main_writes_the_bundle(tmp_path: Path) -> None:
    main(
        [
            "build",
            "wordnet",
            "--out",
            str(tmp_path),
            "--n-train",
            "9",
            "--n-test",
            "6",
            "--seed",
            "2",
        ]
    )
    assert len(load_jsonl(tmp_path / "train.jsonl")) == 9
    assert len(load_jsonl(tmp_path / "test.jsonl")) == 6
    assert "Princeton" in (tmp_path / "LICENSE").read_text()
    write_bundled(tmp_path / "again", WORDNET, n_train=9, n_test=6, seed=2)
    assert (tmp_path / "again" / "train.jsonl").read_text() == (
        tmp_path / "train.jsonl"
    ).read_text()

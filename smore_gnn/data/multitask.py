"""The multi-task multiple-choice benchmark: seven task families from Debian data files.

Tasks: ``wordnet`` (WordNet 3.0 relations, :mod:`smore_gnn.data.wordnet`), ``elements``
(symbols, atomic numbers, weights, order; ``dict-elements``), ``acronyms`` (expansions;
``dict-vera``), ``en_fr`` / ``en_de`` / ``en_es`` (English word translation;
``dict-freedict-eng-*``) and ``computing`` (FOLDOC definition -> term; ``dict-foldoc``).

Splits are by headword (the record's ``key``): for the dictd tasks the key's hash (with the
seed) puts it in train or test for every task; WordNet questions come split by synset from
their builder, and test questions whose headword is asked in train are dropped. Distractors
come from the answers of the same task, kind and split (see
:mod:`smore_gnn.data.families`). Build-time code: run
``python -m smore_gnn.data build multitask --out DIR``.
"""

from __future__ import annotations

import hashlib
import random
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from smore_gnn.data import families, sources, wordnet, write_jsonl
from smore_gnn.data.dictd import DEFAULT_DICTD_DIR, DictdDatabase
from smore_gnn.data.families import Item
from smore_gnn.data.records import format_example, mc_prompt

TASKS = ("wordnet", "elements", "acronyms", "en_fr", "en_de", "en_es", "computing")
N_TRAIN, N_TEST = 580, 145  # per task; elements has fewer train questions (103 elements)
TEST_FRACTION = 0.25  # share of headwords that go to test (before sampling)
N_CHOICES = 4
MAX_PROMPT_CHARS = 170  # mc_prompt length, the cheap cut when no tokenizer is given
MAX_TOKENS = 56  # prompt + " B" + EOS with the SmolLM2 tokenizer, well under max_length 64
MAX_TEXT_TOKENS = 64  # prompt + " <choice text>" + EOS for every choice (text scoring)
Fits = Callable[[dict[str, Any]], bool]
DICTD_DATABASES = {  # the dictd database of each dictd task
    "elements": "elements",
    "acronyms": "vera",
    "en_fr": "freedict-eng-fra",
    "en_es": "freedict-eng-spa",
    "en_de": "freedict-eng-deu",
    "computing": "foldoc",
}


def in_test(key: str, seed: int, fraction: float = TEST_FRACTION) -> bool:
    """Whether headword ``key`` (case-folded) belongs to the test split for ``seed``."""
    digest = hashlib.sha256(f"{seed}:{key.casefold()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def _distractors(item: Item, pool: dict[str, list[str]], rng: random.Random) -> list[str] | None:
    """``N_CHOICES - 1`` distinct wrong answers, from the finest shared group to any answer."""
    banned = {item.answer.casefold(), *(x.casefold() for x in item.exclude)}
    out: list[str] = []
    for candidates in [pool[f"{level}:{g}"] for level, g in enumerate(item.groups)] + [pool["*"]]:
        for _ in range(40 if candidates else 0):
            word = candidates[rng.randrange(len(candidates))]
            if word.casefold() not in banned:
                out.append(word)
                banned.add(word.casefold())
                if len(out) == N_CHOICES - 1:
                    return out
    return None


def _answer_at(record: dict[str, Any], position: int) -> dict[str, Any]:
    """The record with its right choice moved to ``position`` (wrong ones keep their order).

    Positions are assigned round-robin so that every letter is right equally often (a model
    that always says "A" scores 25 %, not whatever the shuffles happened to give).
    """
    right = record["choices"][record["answer"]]
    wrong = [c for i, c in enumerate(record["choices"]) if i != record["answer"]]
    choices = [*wrong[:position], right, *wrong[position:]]
    return {**record, "choices": choices, "answer": position}


def _interleave_types(items: list[Item], rng: random.Random) -> list[Item]:
    """Shuffle each question type, then alternate types so any prefix is balanced."""
    by_type: dict[str, list[Item]] = {}
    for item in items:
        by_type.setdefault(item.type, []).append(item)
    lists = [by_type[t] for t in sorted(by_type)]
    for values in lists:
        rng.shuffle(values)
    return [v[i] for i in range(max(map(len, lists), default=0)) for v in lists if i < len(v)]


def prompt_fits(
    count_tokens: Callable[[str], int] | None = None,
    max_tokens: int = MAX_TOKENS,
    max_chars: int = MAX_PROMPT_CHARS,
    max_text_tokens: int = MAX_TEXT_TOKENS,
) -> Fits:
    """A length check for records: the prompt has at most ``max_chars`` characters and, with a
    token counter, prompt + letter answer + EOS has at most ``max_tokens`` tokens and prompt +
    any choice's text + EOS at most ``max_text_tokens``."""

    def fits(record: dict[str, Any]) -> bool:
        prompt = mc_prompt(record)
        if len(prompt) > max_chars:
            return False
        if count_tokens is None:
            return True
        texts = [prompt + " " + choice for choice in record["choices"]]
        return count_tokens("".join(format_example(record))) < max_tokens and all(
            count_tokens(text) < max_text_tokens for text in texts
        )

    return fits


def records_for_split(
    items: Sequence[Item], n: int, rng: random.Random, fits: Fits | None = None
) -> list[dict[str, Any]]:
    """Up to ``n`` records from one task's items of one split, with distractors drawn there.

    ``fits`` (default :func:`prompt_fits` without a tokenizer) drops records that are too long.
    """
    fits = fits or prompt_fits()
    pools: dict[str, dict[str, set[str]]] = {}  # kind -> "level:group" or "*" -> answers
    for item in items:
        pool = pools.setdefault(item.kind, {})
        for name in ["*", *(f"{level}:{g}" for level, g in enumerate(item.groups))]:
            pool.setdefault(name, set()).add(item.answer)
    sorted_pools = {kind: {k: sorted(v) for k, v in p.items()} for kind, p in pools.items()}
    records = []
    for item in _interleave_types(list(items), rng):
        if len(records) == n:
            break
        wrong = _distractors(item, sorted_pools[item.kind], rng)
        if wrong is None:
            continue
        record = dict(
            question=item.question,
            choices=[item.answer, *wrong],  # distractors come in random order
            answer=0,
            task=item.task,
            type=item.type,
            key=item.key,
        )
        record = _answer_at(record, len(records) % N_CHOICES)
        if fits(record):
            records.append(record)
    return records


def split_items(
    items: Sequence[Item], n_train: int, n_test: int, seed: int, fits: Fits | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split one or more tasks' items by headword and sample up to n per task and split."""
    train, test = [], []
    tasks = sorted({item.task for item in items})
    for task in tasks:
        for is_test, n, out in ((False, n_train, train), (True, n_test, test)):
            chosen = [i for i in items if i.task == task and in_test(i.key, seed) == is_test]
            rng = random.Random(f"{seed}:{task}:{'test' if is_test else 'train'}")
            out.extend(records_for_split(chosen, n, rng, fits))
    return train, test


def check_sources(
    dictd_dir: str | Path = DEFAULT_DICTD_DIR,
    wordnet_dir: str | Path = wordnet.DEFAULT_WORDNET_DIR,
) -> None:
    """Check that every source file is there, before anything slow runs.

    Raises:
        FileNotFoundError: Naming the first missing database or folder and its Debian package.
    """
    for name in DICTD_DATABASES.values():
        DictdDatabase.files(name, dictd_dir)
    wordnet.check_dir(wordnet_dir)


def dictd_items(dictd_dir: str | Path = DEFAULT_DICTD_DIR) -> list[Item]:
    """Question items of every dictd task (all but ``wordnet``), parsed from ``dictd_dir``."""
    names = DICTD_DATABASES
    elements = DictdDatabase.open(names["elements"], dictd_dir, errors="replace")
    items = families.element_items(sources.parse_elements(elements))
    acronyms = sources.parse_acronyms(DictdDatabase.open(names["acronyms"], dictd_dir))
    items += families.acronym_items(acronyms)
    words = {}
    for task in ("en_fr", "en_es", "en_de"):
        db = DictdDatabase.open(names[task], dictd_dir)
        words[task] = sources.parse_translations(db)
    everyday = set(words["en_fr"]) | set(words["en_es"])  # German: 460k entries, keep common ones
    for task in families.LANGUAGES:
        german = task == "en_de"
        only = everyday if german else None
        items += families.translation_items(task, words[task], only, single_sense=german)
    foldoc = sources.parse_foldoc(DictdDatabase.open(names["computing"], dictd_dir))
    return items + families.computing_items(foldoc)


def wordnet_records(
    wordnet_dir: str | Path, n_train: int, n_test: int, seed: int, fits: Fits | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The WordNet family: the WordNet builder's questions (disjoint by synset), keyed by
    headword, without test questions whose headword is asked in train, short prompts only."""
    fits = fits or prompt_fits()
    extra = [round(n * 1.3) + 10 for n in (n_train, n_test)]  # room for the filters
    out: list[list[dict[str, Any]]] = []
    for records in wordnet.build_wordnet_mc(wordnet_dir, *extra, seed=seed):
        out.append(
            [
                dict(
                    question=r["question"],
                    choices=r["choices"],
                    answer=r["answer"],
                    task="wordnet",
                    type=r["type"],
                    key=wordnet.headword(r),
                )
                for r in records
                if fits(r)
            ]
        )
    train = out[0][:n_train]
    asked = {r["key"] for r in train}
    test = [r for r in out[1] if r["key"] not in asked][:n_test]
    train, test = (
        [_answer_at(r, i % N_CHOICES) for i, r in enumerate(rs)] for rs in (train, test)
    )
    return train, test


def build_multitask(
    dictd_dir: str | Path = DEFAULT_DICTD_DIR,
    wordnet_dir: str | Path = wordnet.DEFAULT_WORDNET_DIR,
    n_train: int = N_TRAIN,
    n_test: int = N_TEST,
    seed: int = 0,
    fits: Fits | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Build the train/test records of all seven tasks (``n_*`` per task, fewer if short).

    Args:
        dictd_dir: Folder of the dictd databases (``/usr/share/dictd``).
        wordnet_dir: Folder of the WordNet 3.0 database files.
        n_train: Training questions per task.
        n_test: Test questions per task.
        seed: Random seed (split, sampling, distractors); the output is deterministic for it.
        fits: Length check per record (default: :func:`prompt_fits` without a tokenizer; the
            shipped copy used the SmolLM2 tokenizer, see ``python -m smore_gnn.data``).

    Returns:
        ``(train, test)`` lists of ``{question, choices, answer, task, type, key}`` records
        (4 choices, ``answer`` the right index), shuffled; deterministic for a seed.

    Raises:
        FileNotFoundError: If a Debian data file is missing (the package is named).
        ValueError: If a size is negative.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"expected n_train, n_test >= 0, got {n_train}, {n_test}")
    train, test = split_items(dictd_items(dictd_dir), n_train, n_test, seed, fits)
    wn_train, wn_test = wordnet_records(wordnet_dir, n_train, n_test, seed, fits)
    train, test = train + wn_train, test + wn_test
    seen = {r["question"] for r in train}
    test = [r for r in test if r["question"] not in seen]  # belt and braces: no shared question
    rng = random.Random(seed)
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def _counts(records: Sequence[dict[str, Any]]) -> str:
    counts = Counter(r["task"] for r in records)
    return ", ".join(f"{task} {counts[task]}" for task in TASKS if task in counts)


def write_bundled(
    out_dir: str | Path,
    train: Sequence[dict[str, Any]],
    test: Sequence[dict[str, Any]],
    command: str,
    doc_dir: str | Path = "/usr/share/doc",
) -> None:
    """Write ``train.jsonl``, ``test.jsonl``, ``README.md``, ``LICENSES.md`` and ``licenses/``.

    Args:
        out_dir: Output folder (created if missing).
        train: Training records, from :func:`build_multitask`.
        test: Test records, from :func:`build_multitask`.
        command: The command that built them, quoted in the README.
        doc_dir: Where the Debian ``<package>/copyright`` files are copied from.
    """
    out = Path(out_dir)
    (out / "licenses").mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "test.jsonl", test)
    lines = [
        "# Sources and licences",
        "",
        "| task | Debian package | licence | copyright file |",
        "|---|---|---|---|",
    ]
    for task, package in sources.PACKAGES.items():
        copyright_file = Path(doc_dir) / package / "copyright"
        name = f"licenses/{package}.copyright" if copyright_file.is_file() else "(not found)"
        if copyright_file.is_file():
            shutil.copyfile(copyright_file, out / name)
        lines.append(f"| {task} | {package} | {sources.LICENCES[package]} | {name} |")
    lines += [
        "",
        "Each JSONL record is derived from the source of its `task` and is redistributed",
        "under that source's licence (full texts in the copyright files).",
    ]
    (out / "LICENSES.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "README.md").write_text(
        f"Multi-task multiple-choice questions ({len(train)} train + {len(test)} test), built "
        f"from Debian data files by `{command}`.\n\nSplit by headword (the `key` field): no "
        f"key of a task is in both splits.\n\nTrain per task: {_counts(train)}.\n"
        f"Test per task: {_counts(test)}.\nSources and licences: LICENSES.md.\n",
        encoding="utf-8",
    )

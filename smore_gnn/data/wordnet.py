"""Multiple-choice questions built from the WordNet 3.0 database files (no nltk).

Build-time code: run it through ``python -m smore_gnn.data build wordnet --out DIR``; the
prebuilt copy ships in ``smore_gnn/resources/wordnet_mc`` and loads with
``smore_gnn.data.load_bundled("wordnet", split)``.

Types: ``hyponym`` ("Which of the following is a kind of X?"), ``definition`` ("Which word
means: <gloss>?") and ``category`` ("Which category does the word W belong to?", noun
lexicographer files); distractors are checked to be wrong. Train/test are disjoint by synset.
"""

from __future__ import annotations

import random
import re
from collections.abc import Container, Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import takewhile
from pathlib import Path
from typing import Any

from smore_gnn.data import write_jsonl

DEFAULT_WORDNET_DIR = "/usr/share/wordnet"
N_CHOICES = 4
TYPES = ("hyponym", "definition", "category")
# Readable names of the noun lexicographer files 04..28 (03, noun.Tops, is left out).
_NAMES = (
    "act or action|animal|man-made object|attribute or quality|body part|cognition or idea|"
    "communication|event|feeling or emotion|food or drink|group of things or people|"
    "place or location|motive or goal|natural object|person|natural phenomenon|plant|"
    "possession or money|process|quantity or unit of measure|relation|shape|state or condition|"
    "substance or material|time"
)
NOUN_CATEGORIES = dict(enumerate(_NAMES.split("|"), start=4))
_WORD = re.compile(r"^[a-z][a-z'-]*( [a-z][a-z'-]*){0,2}$")
# Glosses that mark a sense as offensive; lemmas with such a sense are never used.
_OFFENSIVE = re.compile(r"offensive|obscene|vulgar|slur|derogatory|disparaging|insult")


@dataclass
class Synset:
    """One parsed synset: id (``offset-pos``), lexicographer file, lemmas, pointers, gloss,
    and where it was read (``file:line``, for error messages)."""

    id: str
    lexfile: int
    lemmas: list[str]
    gloss: str
    hypernyms: list[str]
    hyponyms: list[str]
    source: str = ""


_REINSTALL = "the file is damaged; `apt-get install --reinstall wordnet-base`"
_POS = frozenset("nvasr")


def check_dir(wordnet_dir: str | Path) -> Path:
    """``wordnet_dir`` as a Path; FileNotFoundError naming the package if it lacks the files."""
    path = Path(wordnet_dir)
    if not (path / "data.noun").is_file():
        msg = f"expected WordNet 3.0 files (data.noun, ...) in {str(path)!r}, found none"
        raise FileNotFoundError(f"{msg}; `apt-get install wordnet-base` or use the bundled copy")
    return path


def _lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a WordNet file, licence header skipped; ValueError on bytes
    that are not UTF-8 or a missing file, naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"WordNet file {str(path)!r} is missing; {_REINSTALL}")
    for lineno, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}:{lineno}: not UTF-8 ({err.reason}); {_REINSTALL}") from err
        if line.strip() and not line.startswith("  "):  # "  1 This software ..." licence
            yield lineno, line


def _data_line(line: str, where: str) -> Synset:
    """One ``data.<pos>`` line: ``offset lexfile pos n_words (word lex_id)* n_ptrs
    (symbol offset pos source/target)* ... | gloss``."""
    head, _, gloss = line.partition(" | ")
    f = head.split()
    pos = "a" if f[2] == "s" else f[2]
    if f[2] not in _POS or not f[0].isdigit():
        raise ValueError(f"bad offset {f[0]!r} or part of speech {f[2]!r}")
    n_words = int(f[3], 16)
    lemmas = [f[4 + 2 * i].replace("_", " ") for i in range(n_words)]
    k = 4 + 2 * n_words
    ptrs = [f[k + 1 + 4 * j : k + 4 + 4 * j] for j in range(int(f[k]))]
    if any(len(p) != 3 for p in ptrs):
        raise ValueError(f"{f[k]} pointers announced, fewer given")
    up = [f"{o}-{p}" for sym, o, p in ptrs if sym == "@"]  # hypernyms
    down = [f"{o}-{p}" for sym, o, p in ptrs if sym == "~"]  # hyponyms / troponyms
    sid = f"{f[0]}-{pos}"
    return Synset(sid, int(f[1]), lemmas, gloss.strip(), up, down, where)


def parse_data_file(path: str | Path) -> dict[str, Synset]:
    """Parse a WordNet ``data.<pos>`` file into synsets keyed by ``offset-pos``.

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: Naming ``path:line`` if a line is not a WordNet data line.
    """
    synsets: dict[str, Synset] = {}
    for lineno, line in _lines(path):
        try:
            synset = _data_line(line, f"{path}:{lineno}")
        except (IndexError, ValueError) as err:
            raise ValueError(
                f"{path}:{lineno}: expected a WordNet data line 'offset lexfile pos n_words "
                f"word lex_id ... n_pointers ... | gloss' ({str(err) or type(err).__name__}); "
                f"{_REINSTALL}"
            ) from err
        synsets[synset.id] = synset
    return synsets


def parse_index_file(
    path: str | Path, synsets: Container[str] | None = None
) -> dict[str, tuple[list[str], int]]:
    """Parse ``index.<pos>`` into ``lemma -> (synset ids by frequency, tagged sense count)``.

    Args:
        path: The ``index.<pos>`` file.
        synsets: If given, every synset id of the index must be in it (the parsed data files).

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: Naming ``path:line`` if a line is malformed or names an unknown synset.
    """
    index: dict[str, tuple[list[str], int]] = {}
    for lineno, line in _lines(path):
        try:
            f = line.split()
            n_synsets, n_ptr = int(f[2]), int(f[3])
            ids = [f"{o}-{f[1]}" for o in f[6 + n_ptr : 6 + n_ptr + n_synsets]]
            if len(ids) != n_synsets:
                raise ValueError(f"{n_synsets} synsets announced, {len(ids)} given")
            tagged = int(f[5 + n_ptr])
        except (IndexError, ValueError) as err:
            raise ValueError(
                f"{path}:{lineno}: expected a WordNet index line 'lemma pos n_synsets "
                f"n_pointers ... n_tagged offsets...' ({str(err) or type(err).__name__}); "
                f"{_REINSTALL}"
            ) from err
        unknown = [i for i in ids if synsets is not None and i not in synsets]
        if unknown:
            raise ValueError(
                f"{path}:{lineno}: synset {unknown[0]} of {f[0]!r} is in no data file; "
                f"the index and data files do not belong together; {_REINSTALL}"
            )
        index[f[0].replace("_", " ")] = (ids, tagged)
    return index


class _Builder:
    """Holds the parsed database and generates questions for one synset split."""

    def __init__(self, wordnet_dir: Path) -> None:
        names = {"n": "noun", "v": "verb"}
        self.syn: dict[str, Synset] = {}
        for pos, n in names.items():
            synsets = parse_data_file(wordnet_dir / f"data.{n}")
            wrong = next((s for s in synsets.values() if s.id[-1] != pos), None)
            if wrong is not None:
                raise ValueError(f"{wrong.source}: synset {wrong.id} in data.{n}; {_REINSTALL}")
            self.syn.update(synsets)
        for s in self.syn.values():
            missing = next((i for i in (*s.hypernyms, *s.hyponyms) if i not in self.syn), None)
            if missing is not None:
                raise ValueError(
                    f"{s.source}: synset {s.id} points to {missing}, which no data file holds; "
                    f"{_REINSTALL}"
                )
        self.index = {
            p: parse_index_file(wordnet_dir / f"index.{n}", self.syn) for p, n in names.items()
        }
        bad = {w for s in self.syn.values() if _OFFENSIVE.search(s.gloss) for w in s.lemmas}
        # Words a learner could know: lower case, <= 3 words, tagged in SemCor at least once.
        self.known = {
            pos: {w for w, (_, tagged) in idx.items() if tagged and _WORD.match(w)} - bad
            for pos, idx in self.index.items()
        }
        self.by_lexfile: dict[int, list[str]] = {}  # usable words, once per synset
        for s in self.syn.values():
            self.by_lexfile.setdefault(s.lexfile, []).extend(self.usable(s))

    def usable(self, s: Synset) -> list[str]:
        return [w for w in s.lemmas if w in self.known[s.id[-1]] and 3 <= len(w) <= 24]

    def senses(self, lemma: str, pos: str) -> set[str]:
        return set(self.index[pos].get(lemma, ([], 0))[0])

    def below(self, ids: set[str], limit: int = 3000) -> set[str]:
        seen, stack = set(ids), list(ids)
        while stack and len(seen) <= limit:
            for child in self.syn[stack.pop()].hyponyms:
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return seen

    def distractors(
        self, rng: random.Random, lexfile: int, bad_ids: set[str], bad_words: set[str], pos: str
    ) -> list[str] | None:
        """Three words of ``lexfile`` outside ``bad_words`` with no sense in ``bad_ids``."""
        pool, out = self.by_lexfile[lexfile], []
        for _ in range(60):
            word = pool[rng.randrange(len(pool))]
            if word in bad_words or self.senses(word, pos) & bad_ids:
                continue
            out.append(word)
            bad_words = bad_words | {word}
            if len(out) == N_CHOICES - 1:
                return out
        return None

    def hyponym(self, s: Synset, rng: random.Random, split: set[str]) -> dict[str, Any] | None:
        words = self.usable(s)
        if s.id[-1] != "n" or not words or len(s.hyponyms) < 2:
            return None
        name = words[0]
        kids = [self.syn[h] for h in s.hyponyms if h in split]
        kinds = [w for kid in kids for w in self.usable(kid) if name not in w]
        under = self.below(self.senses(name, "n"))
        if not kinds or len(under) > 3000:
            return None
        kinds.sort(key=lambda w: -self.index["n"][w][1])  # most familiar words first
        answer = kinds[rng.randrange(min(3, len(kinds)))]
        banned = {w for w in self.by_lexfile[s.lexfile] if name in w} | {answer}
        wrong = self.distractors(rng, s.lexfile, under, banned, "n")
        if wrong is None:
            return None
        question = f"Which of the following is a kind of {name}?"
        return _record(question, answer, wrong, rng, "hyponym", s.id)

    def definition(self, s: Synset, rng: random.Random, split: set[str]) -> dict[str, Any] | None:
        words = self.usable(s)
        gloss = s.gloss.split('; "')[0].strip()
        if not words or not 10 <= len(gloss) <= 120 or words[0] in gloss.lower():
            return None
        siblings = [c for h in s.hypernyms for c in self.syn[h].hyponyms]
        near = {s.id, *s.hypernyms, *s.hyponyms, *siblings}
        wrong = self.distractors(rng, s.lexfile, near, set(s.lemmas), s.id[-1])
        if wrong is None:
            return None
        return _record(f"Which word means: {gloss}?", words[0], wrong, rng, "definition", s.id)

    def category(self, s: Synset, rng: random.Random, split: set[str]) -> dict[str, Any] | None:
        words = [w for w in self.usable(s) if len(self.senses(w, "n")) == 1]
        if s.id[-1] != "n" or s.lexfile not in NOUN_CATEGORIES or not words:
            return None
        others = sorted(set(NOUN_CATEGORIES) - {s.lexfile})
        wrong = [NOUN_CATEGORIES[k] for k in rng.sample(others, N_CHOICES - 1)]
        question = f"Which category does the word '{words[0]}' belong to?"
        return _record(question, NOUN_CATEGORIES[s.lexfile], wrong, rng, "category", s.id)


@lru_cache(maxsize=2)
def _load_builder(wordnet_dir: str) -> _Builder:  # parsed once per directory, then read-only
    return _Builder(Path(wordnet_dir))


def _record(
    question: str, answer: str, wrong: list[str], rng: random.Random, kind: str, synset: str
) -> dict[str, Any]:
    choices = [answer, *wrong]
    rng.shuffle(choices)
    answer_index = choices.index(answer)
    return dict(question=question, choices=choices, answer=answer_index, type=kind, synset=synset)


def headword(record: dict[str, Any]) -> str:
    """The word a question is about: the X of a ``hyponym`` question, the word asked in a
    ``category`` question, the answer of a ``definition`` question."""
    if record["type"] == "hyponym":
        return record["question"].removeprefix("Which of the following is a kind of ")[:-1]
    if record["type"] == "category":
        return record["question"].split("'")[1]
    return record["choices"][record["answer"]]


def build_wordnet_mc(
    wordnet_dir: str | Path = DEFAULT_WORDNET_DIR,
    n_train: int = 2000,
    n_test: int = 500,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Build train/test multiple-choice questions from WordNet 3.0, disjoint by synset.

    Args:
        wordnet_dir: Directory holding ``data.noun``, ``data.verb``, ``index.noun``, ...
        n_train: Number of training questions.
        n_test: Number of test questions.
        seed: Random seed; the output is deterministic for a seed.

    Returns:
        ``(train, test)`` lists of ``{question, choices, answer, type, synset}`` records with 4
        choices, ``answer`` the index of the correct one, types cycling over :data:`TYPES`.

    Raises:
        FileNotFoundError: If the WordNet files are missing.
        ValueError: If a size is negative or WordNet cannot supply that many questions.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"expected n_train, n_test >= 0, got {n_train}, {n_test}")
    builder = _load_builder(str(check_dir(wordnet_dir).resolve()))
    rng = random.Random(seed)
    ids = sorted(builder.syn)
    rng.shuffle(ids)
    cut = round(len(ids) * n_test / max(1, n_train + n_test))
    out = []
    for split_ids, n in ((ids[cut:], n_train), (ids[:cut], n_test)):
        split, records = set(split_ids), []
        makers = [getattr(builder, kind) for kind in TYPES]
        pools = [iter(split_ids) for _ in TYPES]  # each type walks the shuffled split
        used: set[str] = set()
        while len(records) < n:
            k = len(records) % len(TYPES)
            found = (makers[k](builder.syn[i], rng, split) for i in pools[k] if i not in used)
            record = next(filter(None, found), None)
            if record is None:
                msg = f"WordNet ran out of {TYPES[k]!r} questions after {len(records)}"
                raise ValueError(f"{msg}; ask for fewer than {n}")
            used.add(record["synset"])
            records.append(record)
        out.append(records)
    return out[0], out[1]


def _licence_text(wordnet_dir: Path) -> str:
    text = (wordnet_dir / "data.noun").read_text(encoding="utf-8")[:4000].split("\n")
    header = [line for line in takewhile(lambda x: x.startswith("  "), text)]
    return "\n".join(re.sub(r"^\s+\d+ ?", "", line).rstrip() for line in header).strip() + "\n"


def write_bundled(
    out_dir: str | Path,
    wordnet_dir: str | Path = DEFAULT_WORDNET_DIR,
    n_train: int = 2000,
    n_test: int = 500,
    seed: int = 0,
) -> None:
    """Write ``train.jsonl``, ``test.jsonl``, ``LICENSE`` and ``README.md`` into ``out_dir``."""
    wordnet_dir = check_dir(wordnet_dir)
    train, test = build_wordnet_mc(wordnet_dir, n_train, n_test, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "test.jsonl", test)
    (out / "LICENSE").write_text(_licence_text(wordnet_dir), encoding="utf-8")
    command = (
        f"python -m smore_gnn.data build wordnet --out {out_dir} "
        f"--n-train {n_train} --n-test {n_test}"
    )
    (out / "README.md").write_text(
        f"WordNet 3.0 multiple-choice questions (licence: LICENSE), {len(train)} train + "
        f"{len(test)} test, generated from Debian's wordnet-base by `{command} --seed {seed}`\n",
        encoding="utf-8",
    )

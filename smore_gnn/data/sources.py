"""Facts extracted from Debian dictd databases, one parser per source.

Each parser takes a :class:`~smore_gnn.data.dictd.DictdDatabase` and returns plain facts
(no questions yet): chemical elements (``dict-elements``), acronym expansions (``dict-vera``),
English -> French / German / Spanish translations (``dict-freedict-eng-*``) and computing
terms with their category and first definition sentence (``dict-foldoc``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smore_gnn.data.dictd import DictdDatabase

_BRACKETS = re.compile(r"\s*(\[[^\]]*\]|<[^>]*>|\([^)]*\)|\{[^}]*\})")
# Debian package of each task; their copyright files ship beside the data.
PACKAGES = {
    "wordnet": "wordnet-base",
    "elements": "dict-elements",
    "acronyms": "dict-vera",
    "en_fr": "dict-freedict-eng-fra",
    "en_de": "dict-freedict-eng-deu",
    "en_es": "dict-freedict-eng-spa",
    "computing": "dict-foldoc",
}
LICENCES = {
    "wordnet-base": "WordNet 3.0 licence (Princeton University, permissive)",
    "dict-elements": "public domain (Jay F. Kominek); Debian packaging GPL-3",
    "dict-vera": "GNU FDL 1.1 or later (Oliver Heidelbach)",
    "dict-freedict-eng-fra": "GPL-2+ (FreeDict contributors)",
    "dict-freedict-eng-deu": "GPL-3+ (Frank Richter, Einhard Leichtfuß; from Ding)",
    "dict-freedict-eng-spa": "GPL-2+ (FreeDict contributors)",
    "dict-foldoc": "GNU FDL 1.1 or later; cite as: The Free On-line Dictionary of Computing, "
    "http://www.foldoc.org/, Editor Denis Howe",
}
MAX_ELEMENT = 103  # lawrencium
_ENGLISH_WORD = re.compile(r"^[a-z]{3,14}$")
_ACRONYM = re.compile(r"^[A-Z]{2,6}$")
_EXPANSION = re.compile(r"^[A-Z][A-Za-z0-9'&/.-]*( [A-Za-z0-9'&/.-]+){0,5}$")
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)])\.(\s|$)")


@dataclass(frozen=True)
class Element:
    """A chemical element: name (lower case, as the database spells it), symbol, Z, weight."""

    name: str
    symbol: str
    number: int
    weight: str


@dataclass(frozen=True)
class Term:
    """A computing term with its other names, first FOLDOC category and first sentence."""

    term: str
    aliases: tuple[str, ...]
    category: str
    definition: str


def parse_elements(db: DictdDatabase, max_number: int = MAX_ELEMENT) -> list[Element]:
    """Elements with a symbol, atomic number and weight, sorted by atomic number.

    Entries look like ``"iron\\nSymbol: Fe\\nAtomic number: 26\\nAtomic weight: 55.847\\n..."``;
    a weight in parentheses (the mass number of the most stable isotope) is kept as written.
    Elements past ``max_number`` are dropped: the 2000 database gives them names that IUPAC
    later replaced (``unnilquadium`` for rutherfordium).
    """
    out: dict[int, Element] = {}
    for headword, text in db.entries():
        fields = dict(re.findall(r"^(Symbol|Atomic number|Atomic weight): *(\S+)", text, re.M))
        if len(fields) < 3 or not fields["Atomic number"].isdigit():
            continue
        number = int(fields["Atomic number"])
        if number <= max_number:  # first spelling in index order wins (aluminium/aluminum)
            out.setdefault(
                number,
                Element(headword.lower(), fields["Symbol"], number, fields["Atomic weight"]),
            )
    return [out[z] for z in sorted(out)]


def _clean_phrase(text: str) -> str:
    """Drop bracketed notes (``[Br.]``, ``<fem>``, ``(CPU)``, ``{x}``) and squeeze spaces."""
    return " ".join(_BRACKETS.sub("", text).replace('"', "").split()).strip(" ,;")


def _plain_case(phrase: str) -> bool:
    """No word mixes case beyond a capital initial (VERA writes ``TeleTYpe``, a giveaway)."""
    return all(w.isupper() or w[1:] == w[1:].lower() for w in phrase.split())


def parse_acronyms(db: DictdDatabase) -> dict[str, list[str]]:
    """Upper-case acronyms (2-6 letters) -> cleaned expansions (<= 6 plainly cased words).

    All expansions of an acronym are kept (so that distractors can avoid every right answer),
    but an acronym with any unusable expansion (unclosed brackets, ``TeleTYpe`` case hints)
    maps to ``[]``.
    """
    out: dict[str, list[str]] = {}
    for _, text in db.entries():  # the index lower-cases headwords; the text keeps case
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if len(lines) < 2 or not _ACRONYM.match(lines[0]):
            continue
        expansion = _clean_phrase(lines[1].split(', "')[0])
        usable = bool(_EXPANSION.match(expansion)) and _plain_case(expansion)
        out.setdefault(lines[0], []).append(expansion if usable else "")
    return {acronym: [] if "" in found else found for acronym, found in out.items()}


def _senses(text: str) -> list[list[str]]:
    """Translation senses of a FreeDict entry: each a list of comma-separated translations."""
    senses = []
    for line in text.splitlines()[1:]:  # line 0 is "headword /pronunciation/"
        if not line.strip() or line.startswith(("  ", " see:", "\t")):  # notes, synonyms
            continue
        line = re.sub(r"^\s*\d+\.\s*", "", line)  # "2. brazo"
        words = [_clean_phrase(w) for w in re.split(r"[,;]", _clean_phrase(line))]
        if words := [w for w in words if w]:
            senses.append(words)
    return senses


def parse_translations(db: DictdDatabase) -> dict[str, list[list[str]]]:
    """Single-word lower-case English headwords -> translation senses (first sense first)."""
    out: dict[str, list[list[str]]] = {}
    for headword, text in db.entries():
        if _ENGLISH_WORD.match(headword):
            out.setdefault(headword, []).extend(_senses(text))
    return {word: senses for word, senses in out.items() if senses}


def _first_sentence(paragraph: str) -> str | None:
    """The text before the first full stop, or None if the sentence runs on (``adds:``)."""
    match = _SENTENCE_END.search(paragraph)
    return paragraph[: match.start()] if match else None


def parse_foldoc(db: DictdDatabase) -> list[Term]:
    """FOLDOC terms with a category tag (``<programming>``) and a first definition sentence.

    The sentence has cross-reference braces removed (``{compiler}`` -> ``compiler``),
    pronunciations and parenthesised notes dropped; redirect-only entries are skipped.

    Raises:
        ValueError: an entry with a definition but no name line before it (the index file and
            line are named).
    """
    out = []
    for entry, text in db.indexed_entries():
        names, _, body = text.partition("\n\n")  # the first lines name the term (case kept)
        paragraph = " ".join(body.strip().split("\n\n", 1)[0].split())
        match = re.match(r"<([^>]+)>\s*(.*)", paragraph)
        if not match:  # no category: a redirect ("{object request broker}") or a stub
            continue
        rest = re.sub(r"/[^/ ][^/]*/", "", match.group(2))  # /broh'k*t/ pronunciations
        rest = re.sub(r"\{([^}|]*)\}", r"\1", rest)  # cross-references keep their text
        if (first := _first_sentence(rest)) is None or "country code" in first:
            continue  # a run-on list, or one of ~250 look-alike "country code for X" entries
        sentence = " ".join(re.sub(r"\([^)]*\)|\[[^\]]*\]", "", first).split())
        category = match.group(1).split(",")[0].strip()
        found = [n.strip() for n in names.splitlines() if n.strip()]
        if not found:
            raise ValueError(
                f"{db.index_path}:{entry.line}: expected FOLDOC entry {entry.headword!r} to "
                f"start with its name line, got a blank line before '<{match.group(1)}> ...'; "
                "the database is damaged; apt-get install --reinstall dict-foldoc"
            )
        first, *aliases = found
        out.append(Term(first, tuple(aliases), category, sentence.strip(" ,;:")))
    return out

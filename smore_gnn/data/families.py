"""Question items of the multi-task families, built from parsed dictd facts.

An :class:`Item` is a question with its right answer, not yet with distractors: the builder
(:mod:`smore_gnn.data.multitask`) draws those from the answers of the same task, answer
kind and split, preferring answers that share the finest of the item's ``groups`` (e.g.
element names near the right one in the periodic table, French words of similar length,
computing terms of the same FOLDOC category and shape) so that the wrong choices are
plausible.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from smore_gnn.data.sources import Element, Term

LANGUAGES = {"en_fr": "French", "en_de": "German", "en_es": "Spanish"}
_TRANSLATION = re.compile(r"^[^\W\d_][^\d_]{1,22}[^\W\d_]$")
_TERM = re.compile(r"^[A-Za-z][A-Za-z0-9+#./ -]{1,23}$")


@dataclass(frozen=True)
class Item:
    """A question before distractors are drawn.

    Attributes:
        task: Task family name (``"elements"``, ``"en_fr"``, ...).
        type: Question type within the task (``"symbol_to_name"``, ...).
        key: The headword the question is about; train and test never share a key.
        question: The question text.
        answer: The right answer.
        kind: Answers of the same task and kind form the distractor pool.
        groups: Features of the answer, finest first; distractors sharing the finest group
            are preferred, then the next, then any answer of the kind.
        exclude: Other right answers, never used as distractors (compared case-folded).
    """

    task: str
    type: str
    key: str
    question: str
    answer: str
    kind: str
    groups: tuple[str, ...] = ()
    exclude: frozenset[str] = frozenset()


def _shapes(text: str) -> tuple[str, str]:
    """Surface shape, fine (word count, case, length bucket) then coarse (word count, case)."""
    case = "upper" if text.isupper() else "title" if text[:1].isupper() else "lower"
    coarse = f"{len(text.split())}-{case}"
    return f"{coarse}-{min(len(text) // 4, 5)}", coarse


def element_items(elements: Iterable[Element]) -> list[Item]:
    """Six question types per element: symbol, name, atomic number, weight and successor."""
    elements = list(elements)
    by_number = {e.number: e for e in elements}
    items = []
    for e in elements:
        name, near = e.name.capitalize(), (str((e.number - 1) // 10),)  # neighbours look alike
        asks = [  # (type, question, answer, answer kind, distractor groups)
            ("symbol_to_name", f"Which element has the symbol {e.symbol}?", name, "name", near),
            (
                "name_to_symbol",
                f"What is the chemical symbol of {e.name}?",
                e.symbol,
                "symbol",
                (e.symbol[0],),
            ),
            ("number_to_name", f"Which element has atomic number {e.number}?", name, "name", near),
            (
                "name_to_number",
                f"What is the atomic number of {e.name}?",
                str(e.number),
                "number",
                near,
            ),
        ]
        if not e.weight.startswith("("):  # "(253)" is an isotope's mass number, not a weight
            question = f"Which element has an atomic weight of {e.weight}?"
            asks.append(("weight_to_name", question, name, "name", near))
        if (after := by_number.get(e.number + 1)) is not None:
            question = f"Which element comes right after {e.name} in the periodic table?"
            asks.append(("next_element", question, after.name.capitalize(), "name", near))
        asked = frozenset({name})  # never offer the element the question names
        items += [Item("elements", t, e.name, q, a, k, g, asked) for t, q, a, k, g in asks]
    return items


def acronym_items(acronyms: dict[str, list[str]]) -> list[Item]:
    """``What does NASA stand for?`` for acronyms with exactly one usable expansion.

    Expansions of other acronyms whose word initials spell this acronym are never distractors
    (they could be right too).
    """
    by_initials: dict[str, set[str]] = {}
    for expansion in (e for found in acronyms.values() for e in found):
        by_initials.setdefault("".join(w[0] for w in expansion.split()).upper(), set()).add(
            expansion
        )
    items = []
    for acronym, expansions in acronyms.items():
        if len(expansions) != 1 or len(expansions[0]) > 48:
            continue
        words = len(expansions[0].split())
        groups = (f"{acronym[0]}{words}", acronym[0], str(words))  # initial, then word count
        exclude = frozenset(by_initials.get(acronym, ()))
        question = f"What does the acronym {acronym} stand for?"
        items.append(
            Item(
                "acronyms",
                "expansion",
                acronym,
                question,
                expansions[0],
                "expansion",
                groups,
                exclude,
            )
        )
    return items


def translation_items(
    task: str,
    translations: dict[str, list[list[str]]],
    words: set[str] | None = None,
    single_sense: bool = False,
) -> list[Item]:
    """``What is the French word for 'dog'?`` -> the first translation of the first sense.

    Args:
        task: ``"en_fr"``, ``"en_de"`` or ``"en_es"``.
        translations: English word -> senses (lists of translations), from
            :func:`~smore_gnn.data.sources.parse_translations`.
        words: If given, only these English words are asked (keeps the large German
            dictionary to everyday words).
        single_sense: Only ask words with one sense. The German dictionary (from Ding) sorts
            senses alphabetically, so its first sense of ``dog`` is ``Bandhaken``, not ``Hund``.
    """
    language, items = LANGUAGES[task], []
    for english, senses in translations.items():
        if (words is not None and english not in words) or (single_sense and len(senses) > 1):
            continue
        answer = senses[0][0]
        tail = answer.split()[1:]
        if not _TRANSLATION.match(answer) or any(t[0].isupper() and len(t) <= 3 for t in tail):
            continue  # odd strings, trailing codes ("Tansania TZ", "Titan Ti")
        if answer.casefold() == english:
            continue  # identical cognates ("machine") test nothing
        exclude = frozenset(w for sense in senses for w in sense)
        question = f"What is the {language} word for '{english}'?"
        items.append(
            Item(task, "translation", english, question, answer, "word", _shapes(answer), exclude)
        )
    return items


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(name.casefold())}(?!\w)", text.casefold()) is not None


def computing_items(terms: Iterable[Term]) -> list[Item]:
    """``Which computing term means: <first FOLDOC sentence>?`` -> the term."""
    items, seen = [], set()
    for t in terms:
        names = (t.term, *t.aliases)
        if not _TERM.match(t.term) or not 25 <= len(t.definition) <= 100:
            continue
        if t.term.casefold() in seen or any(_mentions(t.definition, n) for n in names):
            continue  # the definition must not give the answer away
        seen.add(t.term.casefold())
        question = f"Which computing term means: {t.definition}?"
        fine, coarse = _shapes(t.term)
        groups = (f"{t.category}|{fine}", f"{t.category}|{coarse}", coarse)
        items.append(
            Item(
                "computing",
                "definition",
                t.term.casefold(),
                question,
                t.term,
                "term",
                groups,
                frozenset(names),
            )
        )
    return items

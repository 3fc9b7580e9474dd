"""docs/: the specification the code cites exists, and no reference points outside the repo."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP = {".git", ".venv", "node_modules", "__pycache__", ".ipynb_checkpoints"}
SUFFIXES = {".py", ".md", ".ipynb", ".yaml", ".yml", ".toml", ".cfg", ".txt"}
HEADING = re.compile(r"^(#{2,3}) (\d+(?:\.\d+)?)\.? ", re.MULTILINE)
NUMBER = r"\d+(?:\.\d+)?"
CITATION = re.compile(rf"docs/spec\.md (§{NUMBER}(?:(?:\s?[-,]\s?|\sand\s)§?{NUMBER})*)")


def repo_files() -> list[Path]:
    """Text files of the repository (this test file excluded: it quotes examples)."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP and not d.startswith(".")]
        found += [Path(folder) / f for f in files if Path(f).suffix in SUFFIXES]
    return [p for p in found if p != Path(__file__).resolve()]


HEADING_NUMBERS = [m.group(2) for m in HEADING.finditer((DOCS / "spec.md").read_text())]


def test_spec_keeps_the_section_numbering():
    top = [n for n in HEADING_NUMBERS if "." not in n]
    assert top == [str(i) for i in range(1, 13)]  # §12: the shared_rank extension
    assert {"7.1", "7.2", "7.3"} <= set(HEADING_NUMBERS)


def cited_sections(text: str) -> list[str]:
    return [n for m in CITATION.finditer(text) for n in re.findall(NUMBER, m.group(1))]


def test_citation_parser():
    text = "see docs/spec.md §2-§5 and docs/spec.md §7.3, docs/spec.md §6-7 (docs/spec.md §4, §9)"
    assert cited_sections(text) == ["2", "5", "7.3", "6", "7", "4", "9"]


def test_every_cited_section_exists():
    sections = set(HEADING_NUMBERS)
    bad = [
        f"{p.relative_to(ROOT)}: §{n}"
        for p in repo_files()
        for n in cited_sections(p.read_text(errors="ignore"))
        if n not in sections
    ]
    assert not bad, f"citations of sections docs/spec.md does not have: {bad}"


def test_no_reference_points_outside_the_repo():
    """Issue 11 item 5: the code cited a SPEC.md that was not shipped."""
    pattern = re.compile(r"SPEC §|shared/SPEC|shared/STYLE")
    bad = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in repo_files()
        for i, line in enumerate(p.read_text(errors="ignore").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not bad, f"replace these with docs/spec.md §n: {bad}"


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_relative_links_and_anchors_resolve(page):
    text = (DOCS / page).read_text()
    for target, anchor in re.findall(r"\]\(([^)#:\s]*)(?:#([^)\s]+))?\)", text):
        path = DOCS / target if target else DOCS / page
        assert path.exists(), f"{page} links to a missing file {target}"
        if anchor:
            slugs = {
                re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", path.read_text(), re.MULTILINE)
            }
            assert anchor in slugs, f"{page} links to a missing anchor {target}#{anchor}"

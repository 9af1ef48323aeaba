"""The README is the page a newcomer finishes; the rest lives in docs/. Every relative link of
the README and of docs/*.md resolves: to a file of the repository, and an anchor to a heading of
its page (GitHub's heading ids)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"```.*?```", re.S)


def heading_ids(page: Path) -> set[str]:
    """GitHub's ids: lower case, punctuation dropped (but '-' and '_'), spaces to '-'."""
    text = CODE.sub("", page.read_text(encoding="utf-8"))
    ids = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M):
        plain = re.sub(r"[`*]", "", heading).strip().lower()
        ids.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", plain)))
    return ids


def links(page: Path) -> list[str]:
    return [t for t in LINK.findall(CODE.sub("", page.read_text(encoding="utf-8"))) if not re.match(r"[a-z]+:", t)]


def test_the_readme_is_short():
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 150, f"README.md has {lines} lines: the details belong in docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_link_resolves(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in heading_ids(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO_ROOT)}")
    assert not broken, broken


def test_every_doc_is_linked_from_the_readme():
    readme_targets = {(REPO_ROOT / t.partition("#")[0]).resolve() for t in links(REPO_ROOT / "README.md")}
    orphans = [p.name for p in PAGES[1:] if p.resolve() not in readme_targets]
    assert not orphans, f"docs no one can find from the README: {orphans}"

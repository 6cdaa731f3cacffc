"""A clone stands on its own: no tracked file outside experiments/ points beside the checkout, and every link,
section pointer and repository path the documentation names exists."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.helpers import REPO

# Data and notes that sit beside a development checkout, never in a user's clone. Only experiments/ may look for
# them (and must run without them).
BESIDE_THE_CHECKOUT = re.compile(r"\.\./shared\b")
DOCS = ["README.md", "experiments/README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
METHOD_POINTER = re.compile(r"docs/method\.md#([\w-]+)")
# A repository path named in prose or commands: a top-level source folder, then a path (stops at globs, <...>).
REPO_PATH = re.compile(r"(?<![\w./-])((?:blockqnn|conf|docs|experiments|tests)/[\w./-]*[\w/])")


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"needs a git checkout to know the tracked files ({e})")
    return [name for name in out.stdout.split("\0") if name and (REPO / name).is_file()]


def text_of(name: str) -> str | None:
    """A tracked file's text, or None for a binary file."""
    try:
        return (REPO / name).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def without_code_blocks(markdown: str) -> str:
    return re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: the heading in lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", without_code_blocks(markdown), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_no_tracked_file_outside_experiments_points_beside_the_checkout():
    found = [
        f"{name}:{number}: {line.strip()}"
        for name in tracked_files() if not name.startswith("experiments/")
        for number, line in enumerate((text_of(name) or "").splitlines(), 1) if BESIDE_THE_CHECKOUT.search(line)
    ]
    assert not found, "a clone has nothing beside it; use a path inside the repository:\n" + "\n".join(found)


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_reach_a_file_and_a_heading(doc):
    source = REPO / doc
    broken = []
    for target in LINK.findall(without_code_blocks(source.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (source.parent / path).resolve() if path else source
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO)}")
    assert not broken, f"{doc}:\n" + "\n".join(broken)


@pytest.mark.parametrize("doc", DOCS)
def test_repository_paths_named_in_the_docs_exist(doc):
    missing = sorted({p for p in REPO_PATH.findall((REPO / doc).read_text()) if not (REPO / p).exists()})
    assert not missing, f"{doc} names paths a clone does not have: {missing}"


def test_pointers_into_the_method_document_name_its_headings():
    headings = anchors((REPO / "docs" / "method.md").read_text())
    dangling = [
        f"{name}: #{anchor}"
        for name in tracked_files()
        for anchor in METHOD_POINTER.findall(text_of(name) or "") if anchor not in headings
    ]
    assert not dangling, "pointers to sections docs/method.md does not have:\n" + "\n".join(dangling)


def test_method_pointers_exist_in_the_configs():
    """The configs' [paper] / [reimpl] / [open] tags point to where the method document explains them."""
    tagged = [p for p in (REPO / "conf").rglob("*.yaml") if re.search(r"\[(paper|reimpl|open)\b", p.read_text())]
    unpointed = [str(p.relative_to(REPO)) for p in tagged if "docs/method.md" not in p.read_text()]
    assert tagged and not unpointed, f"tagged configs without a pointer to docs/method.md: {unpointed}"

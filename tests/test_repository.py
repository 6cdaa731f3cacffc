"""A clone stands on its own: no tracked file outside experiments/ points beside the checkout, and every link,
section pointer and repository path the documentation names exists. Every page's shown commands work (Hydra
commands compose, CLI commands end as the page says, make targets exist), and the README stays a small entry
whose maps list every docs page and every module."""

from __future__ import annotations

import re
import runpy
import shlex
import subprocess
import sys

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


# ---- the commands the pages show ----------------------------------------------------------------------------------
# ``python -m blockqnn.X ...`` or its console script ``blockqnn-X ...`` (pyproject.toml's [project.scripts]).
SHOWN_COMMAND = re.compile(r"^(?:\w+=\S* )*(?:(?:\.venv/bin/)?python -m blockqnn\.|blockqnn-)(\w+)\b(.*)$")
INLINE_COMMAND = re.compile(r"`((?:(?:\.venv/bin/)?python -m blockqnn\.|blockqnn-)\w+ [^`]+)`")
EXPECTED_OUTCOME = re.compile(r"^#\s*(?:(error: .*?)\s+)?(?:ok, )?exit (\d+)$")
COMPOSED = {"search", "train"}  # Hydra apps: a shown command must compose; the others are argparse CLIs


def code_blocks(markdown: str) -> list[str]:
    """Fenced blocks, their backslash continuations joined."""
    return [b.replace("\\\n", " ") for b in re.findall(r"^```[\w-]*\n(.*?)^```", markdown, flags=re.S | re.M)]


def shown_commands(doc: str) -> list[tuple[str, list[str], str]]:
    """Every ``python -m blockqnn.X ...`` (or ``blockqnn-X ...``) a page shows: (module, arguments, the outcome its
    comment promises).

    Fenced lines and inline spans alike; a span that elides arguments (``...``) is not a command to run, and a
    placeholder in angle brackets (``runs/search/<run>``) is filled in with its name as a user fills it in."""
    text, found = re.sub(r"<([\w-]+)>", r"\1", (REPO / doc).read_text()), []
    for block in code_blocks(text):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if m := SHOWN_COMMAND.match(line.strip()):
                code, comment = split_comment(m.group(2))
                following = lines[i + 1].strip() if i + 1 < len(lines) and lines[i + 1].startswith("#") else ""
                found.append((m.group(1), shlex.split(code), following or comment))
    for span in INLINE_COMMAND.findall(without_code_blocks(text)):
        if "..." not in span and (m := SHOWN_COMMAND.match(span)):
            found.append((m.group(1), shlex.split(m.group(2)), ""))
    return found


def split_comment(line: str) -> tuple[str, str]:
    """A shell line's code and its trailing ``# comment`` (a ``#`` inside quotes is code)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i:].strip()
    return line, ""


def sweeps(args: list[str]) -> list[list[str]]:
    """A multirun's jobs, enough to compose every swept value once: ``-m a=x,y b=1,2`` -> (x, 1), (y, 1), (x, 2);
    ``range(a,b)`` sweeps as Hydra does. A plain run is one job."""
    if not {"-m", "--multirun"} & set(args):
        return [args]
    choices = []
    for key, _, value in (a.partition("=") for a in args if a not in ("-m", "--multirun")):
        if span := re.fullmatch(r"range\((\d+),(\d+)(?:,(\d+))?\)", value):
            values = [str(v) for v in range(*(int(g) for g in span.groups() if g is not None))]
        else:
            values = value.split(",") if re.fullmatch(r"[^\[\]()\"',]+(?:,[^\[\]()\"',]+)+", value) else [value]
        choices.append([f"{key}={v}" for v in values])
    first = [c[0] for c in choices]
    return [first] + [first[:i] + [v] + first[i + 1:] for i, c in enumerate(choices) for v in c[1:]]


def run_module_in_process(module: str, args: list[str], capsys) -> tuple[int, str, str]:
    """``python -m blockqnn.<module> ARGS`` in this process: exit status, stdout, stderr."""
    argv = sys.argv
    sys.argv = [f"blockqnn.{module}", *args]
    try:
        runpy.run_module(f"blockqnn.{module}", run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return status, out.out, out.err


def test_the_pages_show_commands():
    """The checks below follow every page; a page set that lost its commands would pass them vacuously."""
    shown = {module for doc in DOCS for module, _, _ in shown_commands(doc)}
    assert shown >= {"search", "train", "report", "nsc", "nasbench201"}


@pytest.mark.parametrize("doc", DOCS)
def test_every_search_and_train_command_shown_composes(doc):
    """What a page tells a user to run gets past composition and the schema: no stale key, group or value."""
    from blockqnn.config import compose
    from blockqnn.errors import ConfigError

    refused = []
    for module, args, _ in shown_commands(doc):
        for job in sweeps(args) if module in COMPOSED else []:
            try:
                compose(module, job)
            except ConfigError as e:
                refused.append(f"python -m blockqnn.{module} {shlex.join(job)}: {e}")
    assert not refused, f"{doc}:\n" + "\n".join(refused)


@pytest.mark.parametrize("doc", DOCS)
def test_every_argparse_command_shown_does_what_the_page_says(doc, capsys, tmp_path, monkeypatch):
    """``nsc`` commands run for real and end as their comment says (``# ok, exit 0``, ``# error: ... exit 1``);
    a ``report`` command names placeholder folders, and a ``nasbench201`` command a download no clone has, so each
    must get past argument parsing to the check of its input (run from an empty folder: a shown path that exists in
    this checkout is someone's run, not to be reported on)."""
    monkeypatch.chdir(tmp_path)
    wrong = []
    for module, args, promise in shown_commands(doc):
        if module == "nsc":
            status, out, err = run_module_in_process(module, args, capsys)
            expected = EXPECTED_OUTCOME.match(promise) if promise else None
            want_status, want_error = (int(expected.group(2)), expected.group(1)) if expected else (0, None)
            not_ok = promise.startswith("# ok") and out.strip() != "ok"
            if status != want_status or (want_error and err.strip() != want_error) or not_ok:
                wrong.append(f"nsc {shlex.join(args)}: exit {status}, {err.strip()!r}; the page says {promise!r}")
        elif module == "report":
            args = [a.strip("[]") for a in args]  # RUN_DIR [--top-k 5]: the optional part given
            status, _, err = run_module_in_process(module, args, capsys)
            if status != 1 or not err.startswith("error: ") or "is not a folder" not in err:
                wrong.append(f"report {shlex.join(args)}: exit {status}, {err.strip()!r}")
        elif module == "nasbench201":
            status, _, err = run_module_in_process(module, args, capsys)
            if status != 1 or not err.startswith("error: ") or "not found" not in err:
                wrong.append(f"nasbench201 {shlex.join(args)}: exit {status}, {err.strip()!r}")
    assert not wrong, f"{doc}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("doc", DOCS)
def test_every_make_target_shown_exists(doc):
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M))
    text = (REPO / doc).read_text()
    shown = {t for block in code_blocks(text) for t in re.findall(r"^make ([\w-]+)", block, flags=re.M)}
    shown |= set(re.findall(r"`make ([\w-]+)`", text))
    assert shown <= targets, f"{doc} shows make targets the Makefile lacks: {sorted(shown - targets)}"


def test_every_load_example_is_the_one_the_export_tests_run():
    """tests/test_export.py runs the README's ``blockqnn.load`` example; a page that shows it shows that one."""
    def examples(doc):
        return [b for b in re.findall(r"```python\n(.*?)```", (REPO / doc).read_text(), re.S) if "blockqnn.load(" in b]

    [readme_example] = examples("README.md")
    others = {doc: e for doc in DOCS for e in examples(doc) if e != readme_example}
    assert not others, f"load examples the tests do not run: {sorted(others)}"


# ---- the README: small, and a map of the docs and of the tree -----------------------------------------------------
def readme() -> str:
    return (REPO / "README.md").read_text()


def test_the_readme_starts_small():
    assert len(readme().splitlines()) <= 200, "the README is the entry: move detail to a page under docs/"


def test_the_readme_lists_every_docs_page():
    linked = {target.partition("#")[0] for target in LINK.findall(without_code_blocks(readme()))}
    pages = {str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")} | {"experiments/README.md"}
    assert pages <= linked, f"pages the README's documentation map does not list: {sorted(pages - linked)}"


def architecture_map() -> list[str]:
    section = readme().partition("\n## Architecture\n")[2]
    return re.search(r"^```text\n(.*?)^```", section, flags=re.S | re.M).group(1).splitlines()


def test_the_architecture_map_names_every_module_and_no_other():
    """The map lists each module and subpackage of blockqnn/ (one room each), and the conf/ groups it names exist."""
    lines = architecture_map()
    start = lines.index("blockqnn/")
    mapped = [line.split()[0] for line in lines[start + 1:] if line.startswith("  ") and not line.startswith("   ")]
    package = REPO / "blockqnn"
    actual = sorted([p.name for p in package.glob("*.py") if p.name != "__init__.py"]
                    + [f"{p.name}/" for p in package.iterdir() if p.is_dir() and any(p.glob("*.py"))])
    assert sorted(mapped) == actual, f"in the map only: {set(mapped) - set(actual)}; in blockqnn/ only: " \
                                     f"{set(actual) - set(mapped)}"
    [conf] = [line for line in lines if line.startswith("conf/")]
    groups = re.findall(r"\b([a-z_]+)/", conf.partition(" ")[2])
    assert groups and all((REPO / "conf" / g).is_dir() for g in groups), \
        f"conf groups the map names but conf/ lacks: {[g for g in groups if not (REPO / 'conf' / g).is_dir()]}"


def room_of(module: str) -> str:
    """The map's room of a dotted module name: ``blockqnn.agents.qlearning`` -> ``agents/``."""
    parts = module.split(".")[1:]
    if not parts:
        return "__init__"
    package = REPO / "blockqnn" / parts[0]
    return f"{parts[0]}/" if package.is_dir() else f"{parts[0]}.py"


def test_no_module_imports_a_room_listed_below_it():
    """The map is the house's floors: every import inside blockqnn/ (nested ones included) reaches a room above its
    own, or its own room (a package's modules import each other)."""
    import ast

    lines = architecture_map()
    rooms = [line.split()[0] for line in lines[lines.index("blockqnn/") + 1:]
             if line.startswith("  ") and not line.startswith("   ")]
    floor = {room: i for i, room in enumerate(rooms)}
    broken = []
    for path in sorted((REPO / "blockqnn").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        own = room_of(module)
        if own == "__init__":
            continue  # blockqnn/__init__.py: the public face (blockqnn.load) sits on top
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module == "blockqnn":
                names = [f"blockqnn.{a.name}" for a in node.names]
            for name in names:
                if name.startswith("blockqnn.") and floor[room_of(name)] > floor[own]:
                    broken.append(f"{path.relative_to(REPO)} imports {name} ({room_of(name)} is below {own})")
    assert not broken, "\n".join(broken)


MODULE_LINES = 360  # the "about 360": past it, a module holds two concepts and reads as two


def test_every_module_reads_top_to_bottom_in_one_sitting():
    """A module past ~360 lines is two concepts: split it into its package's rooms."""
    long = {str(path.relative_to(REPO)): n for path in sorted((REPO / "blockqnn").rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > MODULE_LINES * 1.05}
    assert not long, f"over ~{MODULE_LINES} lines: {long}"

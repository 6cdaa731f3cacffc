"""A run folder that stops taking writes mid-search (its disk full, made read-only, removed) ends the search with one
``error:`` line saying what to do, exit status 1 and nothing lost: the resume continues to the history an
uninterrupted search writes. The faults are SQLite's own errors, raised at the store's writes: a page limit
(``PRAGMA max_page_count``: "database or disk is full", as on a full file system) and ``PRAGMA query_only``
("attempt to write a readonly database")."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from blockqnn import store as store_module
from blockqnn.errors import RunFolderUnwritable
from blockqnn.evaluate import evaluate_candidate
from blockqnn.search import search
from blockqnn.store import DB_NAME
from tests.helpers import REPO, cli_env, history, read_wandb_file, scored_by, stored_count

FAULTS = {  # what happens to the store's connection, and the start of the one line
    "disk full": ("PRAGMA max_page_count = 1", "the disk holding run folder {run} is full (database or disk is "
                                                "full): free space on it, then continue with: "),
    "read-only": ("PRAGMA query_only = 1", "run folder {run} became read-only (attempt to write a readonly "
                                           "database): make it writable, then continue with: "),
}


def faulty_after(count: int, fault, connections: list):
    """An evaluator that scores blocks by the table and, before its ``count``-th, breaks the folder."""
    calls = []

    def evaluate(arch, cfg):
        calls.append(arch)
        if len(calls) == count:
            fault(connections[-1])
        return evaluate_candidate(arch, cfg)

    return evaluate


@pytest.fixture
def connections(monkeypatch) -> list:
    """The store's connections, as it opens them."""
    opened, connect = [], store_module._connect

    def recording(path):
        opened.append(connect(path))
        return opened[-1]

    monkeypatch.setattr(store_module, "_connect", recording)
    return opened


def intact(run: Path) -> int:
    """The history passes SQLite's integrity check; its candidate count."""
    with closing(sqlite3.connect(f"file:{run / DB_NAME}?mode=ro", uri=True)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return db.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_full_or_read_only_folder_stops_the_search_and_the_resume_loses_nothing(
        compose, table_search, tmp_path, connections, fault):
    pragma, line = FAULTS[fault]
    reference, run = tmp_path / "reference", tmp_path / "run"
    search(compose(*table_search), reference)
    with pytest.raises(RunFolderUnwritable) as stopped:
        search(scored_by(compose(*table_search), faulty_after(13, lambda db: db.execute(pragma), connections)), run)
    resume = f"python -m blockqnn.search resume={run} (nothing stored is lost)"
    assert str(stopped.value) == line.format(run=run) + resume
    assert 0 < intact(run) < len(history(reference)[0])
    search(compose(*table_search, f"resume={run}"), run)  # space freed: the same connection setting is gone
    assert history(run) == history(reference)


def test_a_removed_folder_is_written_back_and_the_search_resumes(compose, table_search, tmp_path, connections):
    """The store still holds the removed history open: it writes it back where it was, then stops."""
    import shutil

    reference, run = tmp_path / "reference", tmp_path / "run"
    search(compose(*table_search), reference)
    with pytest.raises(RunFolderUnwritable, match=f"run folder {run} was removed while the search ran: its history "
                                                  rf"\(every candidate stored so far\) was written back to "
                                                  f"{run / DB_NAME}, then continue with: "):
        search(scored_by(compose(*table_search), faulty_after(13, lambda db: shutil.rmtree(run), connections)), run)
    assert intact(run) in (12, 13)  # 13: the write after the removal went into the removed file, and back with it
    search(compose(*table_search, f"resume={run}"), run)
    assert history(run) == history(reference)


def test_the_w_and_b_run_of_a_search_stopped_by_a_full_disk_is_marked_failed(
        compose, table_search, tmp_path, connections):
    overrides = [o for o in table_search if o != "logger=none"] + ["logger=wandb"]
    with pytest.raises(RunFolderUnwritable):
        breaking = faulty_after(5, lambda db: db.execute(FAULTS["disk full"][0]), connections)
        search(scored_by(compose(*overrides), breaking), tmp_path)
    records = read_wandb_file(next((tmp_path / "wandb").glob("offline-run-*/*.wandb")))
    exits = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
    assert exits == [1]  # failed: finished by the search with an error, not crashed


# The command line with a history limited to a few pages: the store's connection as on a small file system.
SMALL_DISK = """import sys
from blockqnn import store
connect = store._connect
def small(path):
    db = connect(path)
    db.execute("PRAGMA max_page_count = 40")
    return db
store._connect = small
sys.argv[0] = "blockqnn-search"
from blockqnn.search.__main__ import main
main()
"""


@pytest.mark.slow
def test_the_command_line_says_it_in_one_line_and_the_resume_finishes(table_search, tmp_path):
    run = tmp_path / "run"
    args = [o for o in table_search if not o.startswith(("executor.", "agent.schedule_scale"))] + [
        "agent.budget=2000", f"hydra.run.dir={run}"]
    full = subprocess.run([sys.executable, "-c", SMALL_DISK, *args], cwd=REPO, env=cli_env(), capture_output=True,
                          text=True, timeout=300)
    assert full.returncode == 1, full.stderr[-3000:]
    assert full.stderr.startswith(f"error: the disk holding run folder {run} is full") and full.stderr.count(
        "\n") == 1, full.stderr
    assert full.stderr.rstrip().endswith(f"then continue with: python -m blockqnn.search resume={run} (nothing "
                                         "stored is lost)")
    stored = intact(run)
    resumed = subprocess.run([sys.executable, "-m", "blockqnn.search", f"resume={run}"], cwd=REPO, env=cli_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert stored_count(run) > stored

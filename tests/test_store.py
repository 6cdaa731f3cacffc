"""The SQLite history: round trips, atomic checkpoints, concurrent readers, and broken folders left untouched."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from blockqnn.agents.qlearning import STATE_FORMAT
from blockqnn.candidate import Candidate, Result, Status
from blockqnn.cli import describe, user_errors
from blockqnn.search import search
from blockqnn.store import CANDIDATE_COLUMNS, DB_NAME, SCHEMA_VERSION, Store, StoreError, check, is_run
from tests.helpers import DAMAGED, damage, folder_digest, row, run_cli, small_run

BAD_CHECKPOINTS = {"not-json": "'{\"format\": 1'", "a-list": "'[1, 2]'", "null": "NULL"}


def test_create_and_reopen_round_trip(tmp_path):
    with Store.create(tmp_path, {"seed": 3, "space": {"max_index": "${seed}"}}) as store:
        store.record(row(0, 1, 0.5, flops=1e6, params=10, error=None, started_at=1.0, finished_at=2.0))
        store.record(row(0, 0, 0.7))
        store.record(row(1, 0, None, error="NaN loss"))
        store.checkpoint(0, {"q": [0.5, 0.6], "rng": {"state": 12345678901234567890}})
    assert is_run(tmp_path)
    with Store.open(tmp_path) as store:
        assert store.config().space.max_index == 3  # stored resolved
        assert store.get("schema_version") == SCHEMA_VERSION and float(store.get("created_at")) > 0
        rows = store.candidates()
        assert [(r["iteration"], r["position"]) for r in rows] == [(0, 0), (0, 1), (1, 0)]
        assert set(rows[0]) == set(CANDIDATE_COLUMNS)
        assert rows[1]["flops"] == 1e6 and rows[1]["params"] == 10 and rows[1]["started_at"] == 1.0
        assert rows[2]["status"] == "failed" and rows[2]["error"] == "NaN loss"
        assert [r["position"] for r in store.candidates(iteration=0)] == [0, 1]
        assert store.latest_agent_state() == (0, {"q": [0.5, 0.6], "rng": {"state": 12345678901234567890}})


def test_a_candidate_is_one_row_and_reads_back_the_same(tmp_path):
    """What the loop writes (a Candidate, running, then finished, then a cached twin) is what a resume reads."""
    running = Candidate(iteration=1, position=2, arch="a", hash="h", epsilon=0.5, dispatched_at=1.0, sampled_event=3)
    with Store.create(tmp_path, {}) as store:
        store.write([running])
        assert store.dispatched() == [running] and store.running()[0]["status"] == "running"
        done = running.finish(Result(status=Status.STOPPED, accuracy=0.4, reward=0.3, epochs=2, curve=[0.2, 0.4]))
        twin = Candidate(iteration=1, position=3, arch="a", hash="h", epsilon=0.5).copy_of(done)
        store.write([done, twin])
        assert store.dispatched() == [] and store.finished() == [done, twin]
        assert store.candidates()[1]["cached"] == 1 and store.candidates()[1]["curve"] == [0.2, 0.4]


def test_best_skips_failures_and_cached_copies(tmp_path):
    with Store.create(tmp_path, {}) as store:
        store.record(row(0, 0, 0.4))
        store.record(row(0, 1, 0.9))
        store.record(row(0, 2, None))
        store.record(row(1, 0, 0.9, cached=1))
        store.record(row(1, 1, 0.6))
        assert [(r["iteration"], r["position"]) for r in store.best(2)] == [(0, 1), (1, 1)]
        assert len(store.best(10)) == 3


def test_a_position_is_recorded_once(tmp_path):
    with Store.create(tmp_path, {}) as store:
        store.record(row(0, 0, 0.4))
        with pytest.raises(sqlite3.IntegrityError):
            store.record(row(0, 0, 0.5))
        assert store.candidates()[0]["reward"] == 0.4


def test_checkpoint_keeps_only_the_latest(tmp_path):
    with Store.create(tmp_path, {}) as store:
        assert store.latest_agent_state() is None
        for i in range(3):
            store.checkpoint(i, {"iteration": i + 1})
        assert store.latest_agent_state() == (2, {"iteration": 3})
        assert store.conn.execute("SELECT COUNT(*) FROM agent_checkpoints").fetchone()[0] == 1


def test_create_refuses_an_existing_history(tmp_path):
    Store.create(tmp_path, {"a": 1}).close()
    with pytest.raises(StoreError, match="already holds"):
        Store.create(tmp_path, {"a": 2})
    assert Store.open(tmp_path).config().a == 1


def test_reader_sees_writes_while_the_writer_is_open(tmp_path):
    writer = Store.create(tmp_path, {})
    reader = Store.open(tmp_path, readonly=True)
    writer.record(row(0, 0, 0.3))
    assert [r["reward"] for r in reader.candidates()] == [0.3]
    with pytest.raises(sqlite3.OperationalError):
        reader.record(row(0, 1, 0.3))
    reader.close()
    writer.close()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, "not a search run"),
        (lambda d: (d / DB_NAME).write_bytes(b"this is not sqlite" * 100), "corrupt"),
        (lambda d: sqlite3.connect(d / DB_NAME).execute("CREATE TABLE other (x)").connection.commit(), "corrupt"),
    ],
    ids=["empty-folder", "garbage-file", "other-database"],
)
def test_broken_folders_are_refused_and_left_untouched(tmp_path, make, message):
    (tmp_path / "notes.txt").write_text("mine")
    make(tmp_path)
    before = folder_digest(tmp_path)
    for opener in (check, Store.open, lambda d: Store.open(d, readonly=True)):
        with pytest.raises(StoreError, match=message):
            opener(tmp_path)
    assert folder_digest(tmp_path) == before


def test_truncated_database_is_reported_corrupt(tmp_path):
    with Store.create(tmp_path, {"big": "x" * 20000}) as store:
        for i in range(200):
            store.record(row(i, 0, 0.5, arch="(1,1,3,0,0)" * 20))
    path = tmp_path / DB_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="corrupt"):
        Store.open(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(StoreError, match="not a folder"):
        Store.open(tmp_path / "nope")


@pytest.mark.parametrize("sql, message", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_history_is_refused_on_open_and_left_untouched(tmp_path, sql, message):
    run = small_run(tmp_path)
    damage(run, sql)
    before = folder_digest(run)
    for opener in (check, Store.open, lambda d: Store.open(d, readonly=True)):  # train and report open read-only
        with pytest.raises(StoreError, match=f"{DB_NAME} is corrupt or not a search history .*{re.escape(message)}"):
            opener(run)
    assert folder_digest(run) == before


@pytest.mark.parametrize("state", BAD_CHECKPOINTS.values(), ids=BAD_CHECKPOINTS.keys())
def test_an_unreadable_agent_checkpoint_stops_a_resume_but_not_a_reader(tmp_path, state):
    run = small_run(tmp_path)
    damage(run, f"UPDATE agent_checkpoints SET state = {state}")
    before = folder_digest(run)
    message = "corrupt or not a search history .*the agent checkpoint of iteration 0 is not a JSON object"
    with pytest.raises(StoreError, match=message):
        check(run)  # what ``resume=`` runs before Hydra writes anything
    with Store.open(run, readonly=True) as store:
        assert [r["reward"] for r in store.candidates()] == [0.5, 0.7]  # a report still shows the results
        with pytest.raises(StoreError, match=message):
            store.latest_agent_state()
    assert folder_digest(run) == before


# Each as ``python -m blockqnn.search resume=RUN`` meets it: refused by the run folder check before Hydra starts,
# or (a well-formed checkpoint that is no agent state) when the agent is restored.
RESUME_DAMAGE = {
    "config-not-yaml": DAMAGED["config-not-yaml"],
    "column-renamed": DAMAGED["column-renamed"],
    "checkpoint-not-json": (f"UPDATE agent_checkpoints SET state = {BAD_CHECKPOINTS['not-json']}", "not a JSON object"),
    "checkpoint-not-an-agent": (f"UPDATE agent_checkpoints SET state = '{{\"format\": {STATE_FORMAT}}}'",
                                "saved agent state lacks, or has the wrong type of: iteration (int), sampled"),
    "schema-with-older-hashes": ("UPDATE run SET value = '2' WHERE key = 'schema_version'",
                                 f"has history schema version 2, this blockqnn continues version {SCHEMA_VERSION} "),
}


def damaged_search(cfg, run: Path, sql: str) -> bytes:
    """A finished search in ``run``, then damaged; returns the damaged history's bytes."""
    search(cfg, run)
    damage(run, sql)
    return (run / DB_NAME).read_bytes()


@pytest.mark.parametrize("sql, message", RESUME_DAMAGE.values(), ids=RESUME_DAMAGE.keys())
def test_resuming_a_damaged_search_is_bad_input_and_changes_no_result(compose, table_search, tmp_path, sql, message):
    run = tmp_path / "run"
    before = damaged_search(compose(*table_search), run, sql)
    with pytest.raises(Exception) as info:
        search(compose(*table_search, f"resume={run}"), run)
    errors = user_errors(info.value)
    assert errors and message in describe(errors), "reported in one line, not as a bug with its traceback"
    assert (run / DB_NAME).read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize("sql, message", RESUME_DAMAGE.values(), ids=RESUME_DAMAGE.keys())
def test_cli_resume_of_a_damaged_search_is_one_line(compose, table_search, tmp_path, sql, message):
    run = tmp_path / "run"
    before = damaged_search(compose(*table_search), run, sql)
    out = run_cli(f"resume={run}", cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ") and message in lines[0], out.stderr
    assert (run / DB_NAME).read_bytes() == before


def test_a_history_of_an_older_schema_is_refused_in_one_line_by_its_version(tmp_path):
    small_run(tmp_path)
    damage(tmp_path, "ALTER TABLE candidates DROP COLUMN sampled_event; UPDATE run SET value = '1' "
                     "WHERE key = 'schema_version'")  # what the first schema's searches left
    with pytest.raises(StoreError, match=f"schema version 1, this blockqnn continues version {SCHEMA_VERSION}"):
        Store.open(tmp_path)


def test_a_version_4_history_continues_after_adding_its_gpu_memory_column(tmp_path):
    small_run(tmp_path)
    damage(tmp_path, "ALTER TABLE candidates DROP COLUMN gpu_memory; UPDATE run SET value = '4' "
                     "WHERE key = 'schema_version'")  # what a search of version 4 left
    with Store.open(tmp_path, readonly=True) as store:  # read as it is: the column reads as None
        assert [r["gpu_memory"] for r in store.candidates()] == [None, None]
    with Store.open(tmp_path) as store:
        assert store.get("schema_version") == SCHEMA_VERSION
        store.record(row(1, 0, 0.4, gpu_memory=812.5))
        assert [r["gpu_memory"] for r in store.candidates(1)] == [812.5]


def test_a_candidates_peak_gpu_memory_is_measured_around_its_training(monkeypatch):
    """The figure is torch's peak since the candidate started (a stand-in for the CUDA calls: no GPU here)."""
    import torch

    from blockqnn.candidate import Result
    from blockqnn.evaluate import _gpu_peak

    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: calls.append("peak") or 300 * 2**20)
    on_gpu, on_cpu = Result(status="failed"), Result(status="failed")
    with _gpu_peak(on_gpu, True):
        calls.append("training")
    with _gpu_peak(on_cpu, False):
        pass
    assert calls == ["reset", "training", "peak"] and on_gpu.gpu_memory == 300 and on_cpu.gpu_memory is None

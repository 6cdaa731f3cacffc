"""The SQLite history: round trips, atomic checkpoints, concurrent readers, and broken folders left untouched."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from blockqnn.store import CANDIDATE_COLUMNS, DB_NAME, Store, StoreError, check, is_run


def row(iteration: int, position: int, reward: float | None, **extra) -> dict:
    base = dict(iteration=iteration, position=position, arch=f"a{iteration}.{position}", hash=f"h{position}",
                status="ok" if reward is not None else "failed", reward=reward, accuracy=reward, cached=0)
    return base | extra


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_create_and_reopen_round_trip(tmp_path):
    with Store.create(tmp_path, {"seed": 3, "space": {"max_index": "${seed}"}}) as store:
        store.record(row(0, 1, 0.5, flops=1e6, params=10, error=None, started_at=1.0, finished_at=2.0))
        store.record(row(0, 0, 0.7))
        store.record(row(1, 0, None, error="NaN loss"))
        store.checkpoint(0, {"q": [0.5, 0.6], "rng": {"state": 12345678901234567890}})
    assert is_run(tmp_path)
    with Store.open(tmp_path) as store:
        assert store.config().space.max_index == 3  # stored resolved
        assert store.get("schema_version") == "1" and float(store.get("created_at")) > 0
        rows = store.candidates()
        assert [(r["iteration"], r["position"]) for r in rows] == [(0, 0), (0, 1), (1, 0)]
        assert set(rows[0]) == set(CANDIDATE_COLUMNS)
        assert rows[1]["flops"] == 1e6 and rows[1]["params"] == 10 and rows[1]["started_at"] == 1.0
        assert rows[2]["status"] == "failed" and rows[2]["error"] == "NaN loss"
        assert [r["position"] for r in store.candidates(iteration=0)] == [0, 1]
        assert store.latest_agent_state() == (0, {"q": [0.5, 0.6], "rng": {"state": 12345678901234567890}})


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

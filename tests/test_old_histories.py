"""Histories of the schema versions this project wrote before today's: the report reads them, never writing to
them; a search refuses to continue them (version 3 it upgrades). A newer version, or another program's SQLite
file, is refused in one line: tests/test_report.py, with the damaged histories.

The fixtures are the histories those versions wrote, made with raw sqlite3 from each version's own CREATE TABLE
text (copied from blockqnn/store.py at that version), in WAL mode as their store opened them.
"""

import hashlib
import re
import sqlite3
from contextlib import closing

import pytest

from blockqnn.store import DB_NAME, SCHEMA_VERSION, Store, StoreError, check
from tests.helpers import report_cli

# blockqnn/store.py's _SCHEMA at version 1 (95ef8e3), and of the exact-hashes branch's version 2 (f9bfd3a).
SCHEMA_1 = """
CREATE TABLE run (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE candidates (
    iteration INTEGER, position INTEGER, arch TEXT, hash TEXT, status TEXT, accuracy REAL, reward REAL,
    flops REAL, params INTEGER, density REAL, epsilon REAL, epochs INTEGER, wall_time REAL, error TEXT,
    cached INTEGER, started_at REAL, finished_at REAL, PRIMARY KEY (iteration, position));
CREATE INDEX candidates_hash ON candidates (hash);
CREATE TABLE agent_checkpoints (iteration INTEGER PRIMARY KEY, state TEXT);
"""
# blockqnn/store.py's _SCHEMA at version 2 of asynchronous search (27e185c), and at version 3 (1969ee6).
SCHEMA_2 = """
CREATE TABLE run (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE candidates (
    iteration INTEGER, position INTEGER, arch TEXT, hash TEXT, status TEXT, accuracy REAL, reward REAL,
    flops REAL, params INTEGER, density REAL, epsilon REAL, epochs INTEGER, wall_time REAL, error TEXT,
    cached INTEGER, started_at REAL, finished_at REAL, dispatched_at REAL, sampled_event INTEGER,
    incorporated_event INTEGER, PRIMARY KEY (iteration, position));
CREATE INDEX candidates_hash ON candidates (hash);
CREATE TABLE agent_checkpoints (iteration INTEGER PRIMARY KEY, state TEXT);
"""
VERSIONS = {"1": SCHEMA_1, "2-exact-hashes": SCHEMA_1, "2-async": SCHEMA_2, "3": SCHEMA_2}
# What such a search stored as its config: the agent's target before agents/ became a package, no stopping section.
CONFIG = """seed: 0
dataset:
  name: digits
agent:
  _target_: blockqnn.agent.QLearningAgent
  alpha: 0.1
  epsilon_override: null
  batch_size: 3
trainer:
  max_epochs: 2
"""
BLOCKS = ["[(1,1,3,0,0),(2,7,0,0,0)]", "[(1,1,1,0,0),(2,1,3,1,0),(3,7,0,0,0)]", "[(1,4,0,0,0),(2,7,0,0,0)]",
          "[(1,1,5,0,0),(2,7,0,0,0)]", "[(1,2,3,0,0),(2,1,1,1,0),(3,7,0,0,0)]"]


def candidates() -> list[dict]:
    """Two iterations of three candidates, in version 1's columns: one failed, the last a cached repeat."""
    rows = []
    for i, block in enumerate([0, 1, 2, 3, 4, 2]):
        rows.append(dict(iteration=i // 3, position=i % 3, arch=BLOCKS[block], hash=f"h{block}", status="ok",
                         accuracy=0.5 + 0.03 * i, reward=0.49 + 0.03 * i, flops=1e6, params=1000, density=1.0,
                         epsilon=1.0, epochs=2, wall_time=3.0, error=None, cached=0, started_at=10.0 * i,
                         finished_at=10.0 * i + 3.0))
    rows[1].update(status="failed", accuracy=None, reward=None, error="NaN loss")
    rows[5].update({k: rows[2][k] for k in ("status", "accuracy", "reward")}, cached=1, wall_time=0.0)
    return rows


def old_history(run, version: str, schema: str):
    """The history a search of ``version`` left: its config, ``candidates()`` and an agent checkpoint."""
    run.mkdir()
    rows = candidates()
    with closing(sqlite3.connect(run / DB_NAME)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript("BEGIN;" + schema + "COMMIT;")
        db.executemany("INSERT INTO run VALUES (?, ?)", [("config", CONFIG), ("schema_version", version[0]),
                                                          ("created_at", "1764500000.0")])
        db.executemany(f"INSERT INTO candidates ({', '.join(rows[0])}) VALUES ({', '.join('?' * len(rows[0]))})",
                       [tuple(row.values()) for row in rows])
        db.execute("INSERT INTO agent_checkpoints VALUES (1, '{\"iteration\": 2}')")
        db.commit()
    return run


def digest(run) -> str:
    return hashlib.sha256((run / DB_NAME).read_bytes()).hexdigest()


@pytest.mark.parametrize("version", VERSIONS)
def test_the_report_reads_an_older_history_and_leaves_its_bytes_as_they_were(tmp_path, capsys, monkeypatch, version):
    run = old_history(tmp_path / "run", version, VERSIONS[version])
    before = digest(run)
    code, err = report_cli([str(run), "--top-k", "2"], capsys, monkeypatch)
    assert code == 0, err
    assert all((run / name).is_file() for name in ("reward.png", "best_so_far.png", "timeline.png", "top1.png",
                                                   "top2.png", "summary.md"))
    assert not (run / "curves.png").exists()  # no version before 4 kept learning curves
    summary = (run / "summary.md").read_text()
    table = [line.split("`")[1] for line in summary.splitlines() if re.match(r"\| \d+ \| `", line)]
    ranked = sorted((r for r in candidates() if r["status"] == "ok" and not r["cached"]), key=lambda r: -r["reward"])
    assert table == [r["arch"] for r in ranked[:2]]
    assert "- candidates: 6 sampled over 2 iterations: 1 cached, 1 failed, 4 ok" in summary
    assert "Stopping" not in summary
    assert digest(run) == before


@pytest.mark.parametrize("version", VERSIONS)
def test_an_older_history_reads_its_missing_columns_as_none(tmp_path, version):
    run = old_history(tmp_path / "run", version, VERSIONS[version])
    with Store.open(run, readonly=True) as store:
        rows = store.candidates()
    assert len(rows) == 6 and all(row["curve"] is None and row["sampled_event"] is None for row in rows)
    assert [row["status"] for row in rows] == ["ok", "failed", "ok", "ok", "ok", "ok"]


@pytest.mark.parametrize("version", ["1", "2-exact-hashes", "2-async"])
def test_a_search_refuses_to_continue_an_older_history_and_writes_nothing(tmp_path, version):
    run = old_history(tmp_path / "run", version, VERSIONS[version])
    before = digest(run)
    message = f"has history schema version {version[0]}, this blockqnn continues version {SCHEMA_VERSION}"
    for opening in (check, Store.open):
        with pytest.raises(StoreError, match=message):
            opening(run)
    assert digest(run) == before


def test_a_search_continues_a_version_3_history_after_adding_its_curve_column(tmp_path):
    run = old_history(tmp_path / "run", "3", SCHEMA_2)
    check(run)
    with Store.open(run) as store:
        assert store.get("schema_version") == SCHEMA_VERSION
        assert [r["arch"] for r in store.candidates()] == [r["arch"] for r in candidates()]
        store.record(candidates()[0] | {"iteration": 2, "curve": [0.3, 0.5]})
    with Store.open(run, readonly=True) as store:
        assert [r["curve"] for r in store.candidates(2)] == [[0.3, 0.5]]

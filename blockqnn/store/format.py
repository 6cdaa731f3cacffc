"""A history file's format: its tables and columns, how a ``Candidate`` maps onto a row and back, the schema
versions this code reads and continues, and the checks that refuse, before anything reads or writes it, a file the
code could not use (``blockqnn.store``).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from blockqnn.candidate import Candidate, Result, Status
from blockqnn.config import current_config
from blockqnn.errors import StoreError

# 2: the event log of asynchronous search (running candidates, numbered events). 3: exact canonical hashes, and the
# NSC space's add/concat take two different inputs in order, so an older history gives the same block other hashes
# and its agent state names actions the space no longer has. 4: learning curves (curve) and the status stopped; a
# version-3 history is upgraded in place when a search opens it for writing (the column added, nothing rewritten).
# 5: each candidate's peak GPU memory (gpu_memory); a version-3 or 4 history is upgraded in place likewise.
SCHEMA_VERSION = "5"
EVENT_COLUMNS = ("dispatched_at", "sampled_event", "incorporated_event")
# Every version this project wrote -> the candidate columns a history of it may lack; a reader gets None for each.
# Version 2 was written with the event log's columns (asynchronous search) and without them (exact hashes, on a
# branch merged into 3). Statuses were only ever added (running in 2, stopped in 4), never renamed.
READABLE = {"1": (*EVENT_COLUMNS, "curve", "gpu_memory"), "2": (*EVENT_COLUMNS, "curve", "gpu_memory"),
            "3": ("curve", "gpu_memory"), "4": ("gpu_memory",), SCHEMA_VERSION: ()}
UPGRADABLE = {"3", "4"}  # what a search continues after adding the columns it lacks

CANDIDATE_COLUMNS = (
    "iteration", "position", "arch", "hash", "status", "accuracy", "reward", "flops", "params", "density",
    "epsilon", "epochs", "wall_time", "error", "cached", "started_at", "finished_at", "dispatched_at",
    "sampled_event", "incorporated_event", "curve", "gpu_memory",
)
TABLES = """
CREATE TABLE run (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE candidates (
    iteration INTEGER, position INTEGER, arch TEXT, hash TEXT, status TEXT, accuracy REAL, reward REAL,
    flops REAL, params INTEGER, density REAL, epsilon REAL, epochs INTEGER, wall_time REAL, error TEXT,
    cached INTEGER, started_at REAL, finished_at REAL, dispatched_at REAL, sampled_event INTEGER,
    incorporated_event INTEGER, curve TEXT, gpu_memory REAL, PRIMARY KEY (iteration, position));
CREATE INDEX candidates_hash ON candidates (hash);
CREATE TABLE agent_checkpoints (iteration INTEGER PRIMARY KEY, state TEXT);
"""
# What the code reads and writes, checked on every open; extra tables and columns are harmless.
COLUMNS = {"run": ("key", "value"), "candidates": CANDIDATE_COLUMNS, "agent_checkpoints": ("iteration", "state")}
# A row's columns are a Candidate's own fields and its Result's (status: RUNNING while there is none).
SAMPLED_FIELDS = tuple(f.name for f in dataclasses.fields(Candidate) if f.name != "result")
RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(Result))
assert sorted((*SAMPLED_FIELDS, *RESULT_FIELDS)) == sorted(CANDIDATE_COLUMNS), "a Candidate is one history row"


def row_of(candidate: Candidate) -> dict[str, Any]:
    """The history row of ``candidate``, by column (the curve still a list)."""
    row = {name: getattr(candidate, name) for name in SAMPLED_FIELDS} | {"cached": int(candidate.cached)}
    return row | (dataclasses.asdict(candidate.result) if candidate.result else {"status": Status.RUNNING})


def candidate_of(row: Mapping[str, Any]) -> Candidate:
    """A stored row as the search loop carries it (a resumed search); columns an older version lacks are None."""
    sampled = {name: row[name] for name in SAMPLED_FIELDS} | {"cached": bool(row["cached"])}
    if row["status"] == Status.RUNNING:
        return Candidate(**sampled)
    result = Result(**{name: row[name] for name in RESULT_FIELDS} | {
        "status": Status(row["status"]), "epochs": row["epochs"] or 0, "wall_time": row["wall_time"] or 0.0})
    return Candidate(**sampled, result=result)


def corrupt(path: Path, detail: str) -> StoreError:
    return StoreError(f"{path} is corrupt or not a search history ({detail})")


def validate(conn: sqlite3.Connection, path: Path) -> str:
    """The file's schema version, after refusing, before anything reads or writes it, a file the code could not
    use: another database (other tables or columns), damaged pages, an unknown schema version, a config that is
    not YAML."""
    try:
        version = check_version(conn, path)
        lacking = missing_parts(conn, READABLE.get(version, ()))
        if lacking:
            raise corrupt(path, f"missing {lacking}")
        ok = conn.execute("PRAGMA quick_check").fetchone()[0]
        config = conn.execute("SELECT value FROM run WHERE key = 'config'").fetchone()
    except sqlite3.DatabaseError as e:
        raise corrupt(path, str(e)) from None
    if ok != "ok":
        raise corrupt(path, f"integrity check: {ok}")
    parse_config(None if config is None else config[0], path)
    return version


def check_version(conn: sqlite3.Connection, path: Path) -> str | None:
    """The version of a history; one written by a newer blockqnn (columns or statuses this one does not know) is
    refused by it first. None for a file that is no history at all (reported by the table check)."""
    if missing_parts(conn).startswith("tables"):
        return None
    row = conn.execute("SELECT value FROM run WHERE key = 'schema_version'").fetchone()
    version = None if row is None else row[0]
    if version not in READABLE:
        raise StoreError(f"{path} has history schema version {version}, unknown to this blockqnn (it reads versions "
                         f"{', '.join(READABLE)}): read it with the blockqnn that wrote it")
    return version


def continuable(version: str | None, path: Path) -> None:
    """A search continues only a history of its own version, or one it can upgrade in place: an older one gives
    the same block other hashes, and its agent state names actions the space no longer has."""
    if version != SCHEMA_VERSION and version not in UPGRADABLE:
        raise StoreError(f"{path} has history schema version {version}, this blockqnn continues version "
                         f"{SCHEMA_VERSION} (and reports on older ones): continue it with the blockqnn that wrote it, "
                         "or start a new search")


def missing_parts(conn: sqlite3.Connection, lacking: tuple[str, ...] = ()) -> str:
    """The tables the file lacks, else the columns (as ``table.column``); empty when it has all ``COLUMNS`` but
    the candidate columns ``lacking`` (those its version did not have yet)."""
    found = set(conn.execute("SELECT m.name, p.name FROM sqlite_master AS m, pragma_table_info(m.name) AS p "
                             "WHERE m.type = 'table'"))
    found |= {("candidates", c) for c in lacking}
    tables = [t for t in COLUMNS if t not in {table for table, _ in found}]
    if tables:
        return f"tables: {', '.join(tables)}"
    columns = [f"{t}.{c}" for t, names in COLUMNS.items() for c in names if (t, c) not in found]
    return f"columns: {', '.join(columns)}" if columns else ""


def parse_config(text: str | None, path: Path) -> DictConfig:
    """The stored config; a history without a readable one cannot be resumed or reported."""
    if text is None:
        raise corrupt(path, "no stored config")
    try:
        config = OmegaConf.create(text)
    except yaml.YAMLError as e:
        raise corrupt(path, f"the stored config is not valid YAML: {getattr(e, 'problem', None) or e}") from None
    except (AssertionError, OmegaConfBaseException):  # a YAML scalar: OmegaConf asserts on what is no container
        config = None
    if not isinstance(config, DictConfig):
        raise corrupt(path, "the stored config is not a YAML mapping")
    return current_config(config)


def decode_state(text: Any, iteration: int, path: Path) -> dict[str, Any]:
    """A stored agent state: a JSON object, or the history is corrupt (the search could not resume from it)."""
    try:
        state = json.loads(text)
    except (TypeError, ValueError):  # JSONDecodeError is a ValueError; TypeError: a NULL or a number, not text
        state = None
    if not isinstance(state, dict):
        raise corrupt(path, f"the agent checkpoint of iteration {iteration} is not a JSON object")
    return state

"""A search's history in one SQLite file, ``RUN_DIR/history.sqlite``: config, every candidate, agent checkpoints.

Why SQLite: each write is its own transaction in WAL mode, so a search killed at any moment (SIGKILL included)
leaves every finished candidate on disk and nothing half-written; readers (``blockqnn.report``, a notebook) can
open the file while the search is still writing. ``synchronous=NORMAL`` survives a killed process; only a power
loss may drop the last few commits, never corrupt the file.

Tables (``blockqnn.report`` reads them by these names):

* ``run(key, value)``: ``config`` (the resolved config as YAML), ``schema_version``, ``created_at``, and
  ``wandb_run_id`` once tracking has started;
* ``candidates``: one row per sampled block (a ``blockqnn.candidate.Candidate``: its own fields and its
  ``Result``'s, ``store.format.row_of``), keyed by ``(iteration, position)`` in the agent's batch (in
  asynchronous mode, the block's sampling order ``iteration * B + position``); ``cached = 1`` marks a block whose
  canonical hash was already evaluated in this run (metrics copied, not trained). Status ``running``: dispatched
  (asynchronous mode), with its epsilon and ``dispatched_at``, not finished yet; status ``stopped``: stopped at a
  rung (``blockqnn.stopping``), a finished outcome; ``curve`` is the validation accuracy after each epoch trained
  (JSON, a list in the rows read); ``sampled_event`` and ``incorporated_event`` number the agent's asynchronous
  events (see ``blockqnn.search.asynchronous``); ``gpu_memory`` is the most GPU memory the candidate's training
  allocated, in MiB (None on a CPU);
* ``agent_checkpoints(iteration, state)``: the agent's JSON state after ``iteration`` finished (asynchronous mode:
  after event number ``iteration``). Writing it is what marks the iteration done; only the latest one is kept
  (states grow with the replay memory).

A history of any schema version this project wrote reads read-only (the report of an old search; columns added
since read as None); a search continues only today's version, and versions 3 and 4 after adding the columns they
lack.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from blockqnn.candidate import Candidate, Status
from blockqnn.errors import RunFolderUnwritable, StoreError
from blockqnn.executors.lifetime import private_file, release_file
from blockqnn.store.format import (
    CANDIDATE_COLUMNS,
    READABLE,
    SCHEMA_VERSION,
    TABLES,
    candidate_of,
    continuable,
    decode_state,
    parse_config,
    row_of,
    validate,
)

DB_NAME = "history.sqlite"
Row = Mapping[str, Any]  # a history row as SQL gives it (by column), what the readers of a history analyse


def db_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / DB_NAME


def is_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a history (valid or not): the search resumes there instead of starting anew."""
    return db_path(run_dir).is_file()


def check_run_folder(run_dir: str | Path) -> None:
    """Raise ``StoreError`` unless ``run_dir`` is a folder holding a history file (its files only, nothing read)."""
    if not Path(run_dir).is_dir():
        raise StoreError(f"{run_dir} is not a folder")
    if not db_path(run_dir).is_file():
        raise StoreError(f"{run_dir} is not a search run (no {DB_NAME} in it)")


def check(run_dir: str | Path) -> None:
    """Raise ``StoreError`` unless ``run_dir`` holds a history a search can resume (readable, its agent checkpoint
    too), before anything is written into the folder. Opens read-only: changes nothing."""
    with Store.open(run_dir, readonly=True) as store:
        continuable(store.get("schema_version"), store.path)
        store.latest_agent_state()


class Store:
    """One run's history. Create with ``Store.create`` or ``Store.open``; use as a context manager to close."""

    def __init__(self, conn: sqlite3.Connection, path: Path, writing: bool = False) -> None:
        self.conn = conn
        self.path = path
        self._inode = os.stat(path).st_ino if writing else None  # the file this store writes, to notice its removal
        if writing:
            private_file(path)  # a forked worker drops its copies of the history's descriptors

    # ---- opening ------------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, run_dir: str | Path, config: DictConfig | Mapping[str, Any]) -> Store:
        """A new history for ``config`` (stored resolved) in ``run_dir``; refuses to overwrite an existing one."""
        path = db_path(run_dir)
        if path.exists():
            raise StoreError(f"{run_dir} already holds a search history; resume it or choose another folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        store = cls(_connect(path), path, writing=True)
        with store._writing():
            store.conn.executescript("BEGIN;" + TABLES + "COMMIT;")
        store.set("config", OmegaConf.to_yaml(OmegaConf.create(config), resolve=True))
        store.set("schema_version", SCHEMA_VERSION)
        store.set("created_at", str(time.time()))
        return store

    @classmethod
    def open(cls, run_dir: str | Path, readonly: bool = False) -> Store:
        """An existing history. Checked read-only first, so a folder that is not a run is never modified. Read-only,
        any version this project wrote (the report of an old search); for writing, only one a search continues."""
        check_run_folder(run_dir)
        path = db_path(run_dir)
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            version = validate(conn, path)
            if not readonly:
                continuable(version, path)
        except Exception:
            conn.close()
            raise
        if readonly:
            return cls(conn, path)
        conn.close()
        store = cls(_connect(path), path, writing=True)
        store._upgrade(version)
        return store

    def _upgrade(self, version: str) -> None:
        """An older history this blockqnn can continue gets the columns it lacks, in one transaction."""
        with self._writing():
            for column in READABLE[version]:
                self.conn.execute(f"ALTER TABLE candidates ADD COLUMN {column}")
            if version != SCHEMA_VERSION:
                self.conn.execute("UPDATE run SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))

    def close(self) -> None:
        if self._inode is not None:
            release_file(self.path)
        self.conn.close()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One transaction (``with conn``: committed at the end, rolled back on an error). A run folder that stops
        taking writes (a full disk, made read-only, removed) raises ``RunFolderUnwritable``, saying what to do,
        instead of SQLite's error: every write before this one is stored."""
        try:
            with self.conn:
                yield
        except sqlite3.OperationalError as e:
            if self._inode is None:  # a reader asked to write: a bug, not the folder's state
                raise
            raise self._gone() or _unwritable(self.path.parent, e) from None
        gone = self._gone()
        if gone:
            raise gone

    def _gone(self) -> RunFolderUnwritable | None:
        """Whether the history file was removed (its folder with it) under this open store; if so, the history it
        still holds is written back where it was, so that nothing is lost."""
        try:
            if self._inode is None or os.stat(self.path).st_ino == self._inode:
                return None
        except FileNotFoundError:
            pass
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.snapshot(self.path)
        except (OSError, sqlite3.Error) as e:
            return RunFolderUnwritable(f"run folder {folder} was removed while the search ran, and its history "
                                       f"could not be written back ({e}): it is lost", resumable=False)
        return RunFolderUnwritable(f"run folder {folder} was removed while the search ran: its history (every "
                                   f"candidate stored so far) was written back to {self.path}")

    def snapshot(self, path: str | Path) -> Path:
        """A consistent copy of the history at ``path`` (SQLite's online backup: every commit so far, the WAL's
        included), to hand on while the search may go on writing."""
        copy = sqlite3.connect(path)
        try:
            self.conn.backup(copy)
        finally:
            copy.close()
        return Path(path)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- run metadata -------------------------------------------------------------------------------------------
    def get(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM run WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set(self, key: str, value: str) -> None:
        with self._writing():
            self.conn.execute("INSERT OR REPLACE INTO run (key, value) VALUES (?, ?)", (key, value))

    def config(self) -> DictConfig:
        """The resolved config the run was started with."""
        return parse_config(self.get("config"), self.path)

    # ---- candidates ---------------------------------------------------------------------------------------------
    def record(self, candidate: Candidate | Row) -> None:
        """Store one finished (or cached) candidate; a row's missing columns are NULL (a history written by hand)."""
        with self._writing():
            self.conn.execute(_INSERT, _values(candidate))

    def write(self, candidates: Sequence[Candidate | Row], checkpoint: tuple[int, Mapping[str, Any]] | None = None
              ) -> None:
        """Store (or replace: a running candidate by its result) ``candidates`` and, when given, the agent
        checkpoint ``(key, state)``, in one transaction: the asynchronous loop's unit of progress."""
        with self._writing():
            self.conn.executemany(_UPSERT, [_values(candidate) for candidate in candidates])
            if checkpoint is not None:
                self._checkpoint(*checkpoint)

    def candidates(self, iteration: int | None = None) -> list[dict[str, Any]]:
        """Finished (and cached) rows ordered by (iteration, position); one iteration's only when given."""
        where, args = "WHERE status != ?", (Status.RUNNING,)
        if iteration is not None:
            where, args = where + " AND iteration = ?", (*args, iteration)
        return self._rows(f"SELECT * FROM candidates {where} ORDER BY iteration, position", args)

    def running(self) -> list[dict[str, Any]]:
        """Rows dispatched but not finished when the search stopped, in sampling order."""
        return self._rows("SELECT * FROM candidates WHERE status = ? ORDER BY iteration, position",
                          (Status.RUNNING,))

    def finished(self, iteration: int | None = None) -> list[Candidate]:
        """``candidates(iteration)`` as the search loop carries them: what a resumed search counts and reuses."""
        return [candidate_of(row) for row in self.candidates(iteration)]

    def dispatched(self) -> list[Candidate]:
        """``running()`` as the search loop carries them: what a resumed asynchronous search sends out again."""
        return [candidate_of(row) for row in self.running()]

    def best(self, k: int = 1) -> list[dict[str, Any]]:
        """The ``k`` distinct blocks with the highest reward (cached copies and failures left out)."""
        sql = "SELECT * FROM candidates WHERE status = ? AND cached = 0 ORDER BY reward DESC, iteration, position"
        return self._rows(sql + " LIMIT ?", (Status.OK, k))

    def _rows(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        cursor = self.conn.execute(sql, args)
        names = [d[0] for d in cursor.description]
        rows = [dict.fromkeys(CANDIDATE_COLUMNS) | dict(zip(names, row)) for row in cursor]  # an older one's: None
        for row in rows:
            if isinstance(row.get("curve"), str):
                row["curve"] = json.loads(row["curve"])
        return rows

    # ---- agent checkpoints --------------------------------------------------------------------------------------
    def checkpoint(self, iteration: int, state: Mapping[str, Any]) -> None:
        """Mark ``iteration`` done with the agent's state after it, in one transaction (older states dropped)."""
        with self._writing():
            self._checkpoint(iteration, state)

    def _checkpoint(self, key: int, state: Mapping[str, Any]) -> None:
        text = json.dumps(state, separators=(",", ":"))
        self.conn.execute("INSERT OR REPLACE INTO agent_checkpoints VALUES (?, ?)", (key, text))
        self.conn.execute("DELETE FROM agent_checkpoints WHERE iteration < ?", (key,))

    def latest_agent_state(self) -> tuple[int, dict[str, Any]] | None:
        """``(iteration, state)`` of the last finished iteration, or None before the first one finished."""
        row = self.conn.execute("SELECT iteration, state FROM agent_checkpoints ORDER BY iteration DESC").fetchone()
        return None if row is None else (row[0], decode_state(row[1], row[0], self.path))


def _values(candidate: Candidate | Row) -> list[Any]:
    """A candidate's column values; its curve as JSON text."""
    row = row_of(candidate) if isinstance(candidate, Candidate) else candidate
    values = [row.get(c) for c in CANDIDATE_COLUMNS]
    curve = CANDIDATE_COLUMNS.index("curve")
    if isinstance(values[curve], list):
        values[curve] = json.dumps(values[curve])
    return values


_INSERT = f"INSERT INTO candidates ({', '.join(CANDIDATE_COLUMNS)}) VALUES ({', '.join('?' * len(CANDIDATE_COLUMNS))})"
_UPSERT = _INSERT.replace("INSERT", "INSERT OR REPLACE", 1)


def _connect(path: Path) -> sqlite3.Connection:
    # sqlite3 opens a transaction before the first INSERT/DELETE of a ``with conn:`` block and commits (or rolls
    # back) at its end, so every ``with`` block below is one atomic write.
    conn = sqlite3.connect(path, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _unwritable(folder: Path, error: sqlite3.OperationalError) -> RunFolderUnwritable:
    """What SQLite's refusal to write means for the run folder, and what to do about it."""
    kind = getattr(error, "sqlite_errorname", "")
    if kind == "SQLITE_FULL":
        return RunFolderUnwritable(f"the disk holding run folder {folder} is full ({error}): free space on it")
    if kind.startswith("SQLITE_READONLY"):
        return RunFolderUnwritable(f"run folder {folder} became read-only ({error}): make it writable")
    return RunFolderUnwritable(f"run folder {folder} cannot be written ({error}): check its disk")

"""Helpers shared by the test modules: running the CLIs, reading offline W&B runs, fingerprinting folders, and
writing or damaging search histories as a search (or a hand edit) would.

The W&B reader parses the offline ``.wandb`` transaction log itself, with W&B's own protobuf ``Record``: W&B has
no public reader for offline runs (its ``DataStore`` is internal and changes between releases).
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import sys
from contextlib import closing
from pathlib import Path
from types import FunctionType

import numpy as np
from omegaconf import DictConfig

from blockqnn.candidate import Status
from blockqnn.codes import Block
from blockqnn.executors.base import EvaluatorFactory, bound, factory
from blockqnn.spaces import NSCSpace
from blockqnn.store import DB_NAME, SCHEMA_VERSION, Store
from tests.blocks import random_block

REPO = Path(__file__).resolve().parent.parent


# ---- the command line ---------------------------------------------------------------------------------------------
def run_cli(*args: str, cwd: Path | str = REPO, env: dict | None = None, timeout: float = 300, module="search"):
    """``python -m blockqnn.<module> ARGS`` in a subprocess; returns the CompletedProcess (text)."""
    import subprocess

    return subprocess.run([sys.executable, "-m", f"blockqnn.{module}", *args], cwd=cwd, env=cli_env(env),
                          capture_output=True, text=True, timeout=timeout)


def cli_env(extra: dict | None = None) -> dict:
    """The environment a command-line test runs in: this checkout's package, one-line errors."""
    inherited = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return inherited | {"PYTHONPATH": str(REPO)} | (extra or {})


def report_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """``python -m blockqnn.report ARGS`` in-process (W&B left out): exit status and stderr."""
    from blockqnn.report.__main__ import main

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    try:
        code = main([*args, "--no-wandb"])
    except SystemExit as e:  # a refusal: one line and exit status 1
        code = e.code
    return code, capsys.readouterr().err


# ---- processes ------------------------------------------------------------------------------------------------------
def process_tree(root: int) -> dict[int, str]:
    """The live descendants of process ``root`` (zombies left out), pid -> command line, read from ``/proc``."""
    parents = {}
    for entry in os.listdir("/proc"):
        try:
            text = Path(f"/proc/{entry}/stat").read_text() if entry.isdigit() else ""
        except OSError:
            continue
        if text:
            state, ppid = text[text.rindex(")") + 2:].split()[:2]
            if state != "Z":
                parents[int(entry)] = int(ppid)
    found, frontier = {}, {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier and pid not in found}
        for pid in frontier:
            try:
                found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                found[pid] = "?"
    return {pid: command for pid, command in found.items() if Path(f"/proc/{pid}").exists()}


# ---- offline W&B runs ---------------------------------------------------------------------------------------------
def read_wandb_file(path: Path) -> list:
    """The records of an offline ``.wandb`` file, parsed with wandb's own protobuf ``Record``.

    The file is W&B's transaction log: a 7-byte header (``:W&B``, magic, version), then LevelDB-log style
    32 KiB blocks of chunks (crc32, length, type FULL/FIRST/MIDDLE/LAST) holding serialised records.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    block, pos, records, chunk = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            chunk = payload
        else:
            chunk += payload
        if kind in (1, 4):
            records.append(pb.Record.FromString(chunk))
    return records


def read_wandb_run(run_dir: Path) -> dict:
    """Every offline W&B run under ``run_dir/wandb``: id, project, group, config, history, summary and tables."""
    runs = []
    for folder in sorted((Path(run_dir) / "wandb").glob("offline-run-*")):
        run = {"folder": folder, "history": [], "summary": {}, "config": {}}
        for record in read_wandb_file(next(folder.glob("*.wandb"))):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.update(id=record.run.run_id, group=record.run.run_group, project=record.run.project)
                run["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "history":
                run["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                       for i in record.history.item})
            elif kind == "summary":
                run["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                       for i in record.summary.update})
        tables = folder.glob("files/media/table/*.table.json")  # named <key>_<step>_<hash>.table.json
        run["tables"] = [json.loads(p.read_text()) for p in sorted(tables, key=lambda p: int(p.name.split("_")[-2]))]
        runs.append(run)
    return runs


# ---- run folders ----------------------------------------------------------------------------------------------------
def folder_digest(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` with a hash of its bytes (``<dir>`` for folders): equal digests mean nothing
    was added, removed or changed. Left out: what SQLite adds beside a WAL database whenever it is read (the
    shared-memory index and an empty WAL), which a read-only open of a healthy run does too and holds no data."""
    import hashlib

    def ignored(p: Path) -> bool:
        return p.name.endswith("-shm") or (p.name.endswith("-wal") and p.stat().st_size == 0)

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
            for p in sorted(folder.rglob("*")) if not ignored(p)}


# ---- searches -------------------------------------------------------------------------------------------------------
TIMES = ("wall_time", "started_at", "finished_at")


def history(run_dir: Path) -> tuple[list[dict], dict]:
    """Candidates without their timings, and the last agent checkpoint."""
    with Store.open(run_dir, readonly=True) as store:
        rows = [{k: v for k, v in row.items() if k not in TIMES} for row in store.candidates()]
        return rows, store.latest_agent_state()


def stored_count(run_dir: Path) -> int:
    """Candidates a (possibly running) search has stored so far; 0 before its history exists."""
    try:
        with Store.open(run_dir, readonly=True) as store:
            return store.conn.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]
    except Exception:  # not created yet
        return 0


def finished_count(run_dir: Path) -> int:
    """Candidates a (possibly running) search has finished so far (dispatched ones not counted)."""
    try:
        with Store.open(run_dir, readonly=True) as store:
            return len(store.candidates())
    except Exception:  # not created yet
        return 0


# ---- stand-in evaluators ------------------------------------------------------------------------------------------
_STAND_INS: list = []  # evaluators given to ``scored_by`` that no worker could import by name, in this process


def scored_by(cfg: DictConfig, evaluate) -> DictConfig:
    """``cfg`` whose candidates ``evaluate`` scores (the config's ``evaluator``), as a user plugs in a surrogate: a
    module-level function ``evaluate(arch, cfg)`` by its dotted path (worker processes and Ray import it); an
    evaluator class (built with ``cfg`` in each worker) or a closure over a test's state by its place in this
    process's ``_STAND_INS`` (for the search's own process and the workers forked from it)."""
    name = f"{evaluate.__module__}.{evaluate.__qualname__}"
    if isinstance(evaluate, FunctionType) and "<" not in name:  # neither a lambda nor a closure
        node = {"_target_": "blockqnn.search.function_evaluator", "_partial_": True, "fn": name}
    else:
        _STAND_INS.append(evaluate)
        node = {"_target_": "tests.helpers.stand_in", "_partial_": True, "number": len(_STAND_INS) - 1}
    cfg = cfg.copy()
    cfg.evaluator = node
    return cfg


def stand_in(cfg: DictConfig, space, number: int) -> EvaluatorFactory:
    """The ``evaluator`` ``scored_by`` names by number: what each worker builds."""
    evaluate = _STAND_INS[number]
    return factory(evaluate, cfg) if isinstance(evaluate, type) else bound(evaluate, cfg)


def dying_after(n: int):
    """An evaluator that is interrupted (as by Ctrl-C) when asked for its (n+1)-th candidate."""
    from blockqnn.evaluate import evaluate_candidate

    calls = []

    def evaluate(arch, cfg):
        calls.append(arch)
        if len(calls) > n:
            raise KeyboardInterrupt
        return evaluate_candidate(arch, cfg)

    return evaluate


# ---- histories written by hand ------------------------------------------------------------------------------------
def row(iteration: int, position: int, reward: float | None, **extra) -> dict:
    base = dict(iteration=iteration, position=position, arch=f"a{iteration}.{position}", hash=f"h{position}",
                status="ok" if reward is not None else "failed", reward=reward, accuracy=reward, cached=0)
    return base | extra


def small_run(run_dir: Path) -> Path:
    """A history as a search leaves it: config, candidates and the agent's checkpoint."""
    with Store.create(run_dir, {"seed": 1, "agent": {"alpha": 0.1}}) as store:
        store.record(row(0, 0, 0.5))
        store.record(row(0, 1, 0.7))
        store.checkpoint(0, {"format": 1, "iteration": 1})
    return run_dir


def damage(run_dir: Path, sql: str) -> None:
    """Change a history behind the store's back, as another program or a hand edit would."""
    with closing(sqlite3.connect(run_dir / DB_NAME)) as db:
        db.executescript(sql)


# Damage that makes a history unusable, and what the refusal says. Tests of the report reuse these.
DAMAGED = {
    "config-not-yaml": ("UPDATE run SET value = 'seed: [1' WHERE key = 'config'", "config is not valid YAML"),
    "config-a-list": ("UPDATE run SET value = '- 1' WHERE key = 'config'", "config is not a YAML mapping"),
    "config-gone": ("DELETE FROM run WHERE key = 'config'", "no stored config"),
    "column-renamed": ("ALTER TABLE candidates RENAME COLUMN reward TO score", "missing columns: candidates.reward"),
    "column-dropped": ("ALTER TABLE candidates DROP COLUMN flops", "missing columns: candidates.flops"),
    "foreign-candidates": ("DROP TABLE candidates; CREATE TABLE candidates (id INTEGER, name TEXT)",
                           "missing columns: candidates.iteration, candidates.position"),
    "checkpoint-column": ("ALTER TABLE agent_checkpoints RENAME COLUMN state TO blob",
                          "missing columns: agent_checkpoints.state"),
}


# Histories refused for what they are, not for damage: a newer blockqnn's, another program's SQLite file.
NEWER = str(int(SCHEMA_VERSION) + 1)
FOREIGN = {
    "newer-version": (f"UPDATE run SET value = '{NEWER}' WHERE key = 'schema_version'",
                      f"has history schema version {NEWER}, unknown to this blockqnn (it reads versions 1, 2, 3, "
                      f"4, {SCHEMA_VERSION})"),
    "other-tables": ("DROP TABLE run; DROP TABLE candidates; DROP TABLE agent_checkpoints; CREATE TABLE n (t TEXT)",
                     "is corrupt or not a search history (missing tables: run, candidates, agent_checkpoints)"),
}


def fake_reward(block: Block, rng: np.random.Generator) -> float:
    """A landscape that favours adds and convs, so the top-k differ visibly from the population."""
    types = [layer.type for layer in block.body]
    return 0.5 + 0.05 * types.count(5) + 0.02 * types.count(1) + rng.normal(0, 0.01)


# The agent sections of the three agents' stored configs, as far as the report reads them.
AGENT_CONFIGS = {
    "q-learning": {"_target_": "blockqnn.agents.qlearning.QLearningAgent", "alpha": 0.1, "epsilon_override": None},
    "random": {"_target_": "blockqnn.agents.qlearning.QLearningAgent", "alpha": 0.1, "epsilon_override": 1.0},
    "evolution": {"_target_": "blockqnn.agents.evolution.RegularizedEvolution", "population_size": 10},
}


def make_run(run_dir, agent="q-learning", seed=0, iterations=4, batch=6, epsilons=(1.0, 1.0, 0.5, 0.1), wandb_id=None,
             max_epochs=None, rungs=()):
    """A finished search history as the search loop writes it: some cached repeats and one failure. With
    ``max_epochs``, trained candidates keep learning curves and, with ``rungs`` too, some are stopped at them
    (``learning``) under a stored ``stopping=asha`` and that training budget."""
    rng = np.random.default_rng(seed)
    space = NSCSpace(max_index=6)
    config = {
        "seed": seed,
        "dataset": {"name": "digits"},
        "agent": AGENT_CONFIGS[agent] | {"batch_size": batch},
        "logger": {"project": "blockqnn-test", "mode": "offline"},
    }
    if max_epochs:
        config |= {"trainer": {"max_epochs": max_epochs},
                   "stopping": {"_target_": "blockqnn.stopping.ASHA", "rungs": list(rungs), "max_epochs": max_epochs}}
    store = Store.create(run_dir, config)
    seen = {}
    for it in range(iterations):
        for pos in range(batch):
            block = random_block(space, rng)
            h = block.canonical_hash()
            row = {"iteration": it, "position": pos, "arch": str(block), "hash": h, "epsilon": epsilons[it],
                   "cached": int(h in seen), "density": block.density(), "flops": 1e6 * len(block.layers),
                   "params": 1000 * len(block.layers), "epochs": 1, "wall_time": 0.5}
            if h in seen:
                row.update(seen[h], cached=1)
            elif it == 1 and pos == 0:
                row.update(status="failed", error="NaN loss")
            else:
                reward = fake_reward(block, rng) + (0.05 if agent == "q-learning" and it > 1 else 0.0)
                row.update(status="ok", reward=reward, accuracy=reward + 0.01)
                if max_epochs:
                    row.update(learning(row["accuracy"], pos, max_epochs, rungs))
                seen[h] = {k: row[k] for k in ("status", "reward", "accuracy", "epochs", "curve") if k in row}
            store.record(row)
    if wandb_id:
        store.set("wandb_run_id", wandb_id)
    store.close()
    return run_dir


def learning(accuracy: float, position: int, max_epochs: int, rungs: tuple[int, ...]) -> dict:
    """A rising curve to ``accuracy``; the candidates at positions 1, 2 (mod 3) stopped at the first and the last
    rung, so a run holds stops at each rung and full-budget candidates beside them."""
    stop = rungs[min(position % 3, len(rungs)) - 1] if rungs and position % 3 else None
    epochs = stop or max_epochs
    curve = [accuracy * (epoch / max_epochs) ** 0.5 for epoch in range(1, epochs + 1)]
    return {"status": Status.STOPPED if stop else Status.OK, "epochs": epochs, "curve": curve, "accuracy": curve[-1]}

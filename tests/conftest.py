"""Shared fixtures: composed configs, a small generated NAS-Bench-201 table, and an offline W&B run reader.

W&B never touches the network in tests: runs are forced offline here, before anything imports wandb.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import pytest

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.pop("WANDB_API_KEY", None)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Two OpenMP threads per pytest worker oversubscribe a 2-core machine and can slow training tenfold."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def compose():
    """``compose(*overrides)``: the search config ``python -m blockqnn.search OVERRIDES`` would run with."""
    from blockqnn.config import compose as compose_config

    return lambda *overrides, config_name="search": compose_config(config_name, overrides)


@pytest.fixture(scope="session")
def nb201_table(tmp_path_factory) -> Path:
    """A structured synthetic NAS-Bench-201 table (all 15,625 cells, accuracy in percent)."""
    from blockqnn.nasbench201 import write_synthetic_table

    return write_synthetic_table(tmp_path_factory.mktemp("nb201") / "table.csv", seed=0)


@pytest.fixture
def table_search(nb201_table):
    """Overrides for a fast, deterministic search on the table space (no training, no tracking, silent)."""
    return [
        "space=nasbench201", f"space.table={nb201_table}", "reward=accuracy", "logger=none", "progress.mode=off",
        "agent.batch_size=8", "agent.schedule_scale=0.05", "agent.alpha=0.2",
    ]


def run_cli(*args: str, cwd: Path | str = REPO, env: dict | None = None, timeout: float = 300, module="search"):
    """``python -m blockqnn.<module> ARGS`` in a subprocess; returns the CompletedProcess (text)."""
    import subprocess

    inherited = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env = inherited | {"PYTHONPATH": str(REPO)} | (env or {})
    return subprocess.run([sys.executable, "-m", f"blockqnn.{module}", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


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


def folder_digest(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` with a hash of its bytes (``<dir>`` for folders): equal digests mean nothing
    was added, removed or changed. Left out: what SQLite adds beside a WAL database whenever it is read (the
    shared-memory index and an empty WAL), which a read-only open of a healthy run does too and holds no data."""
    import hashlib

    def ignored(p: Path) -> bool:
        return p.name.endswith("-shm") or (p.name.endswith("-wal") and p.stat().st_size == 0)

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
            for p in sorted(folder.rglob("*")) if not ignored(p)}

"""Shared fixtures: composed configs, a small generated NAS-Bench-201 table, generated CIFAR-10 files, one torch
thread per test; and the guard that no test leaves a process behind.

W&B never touches the network in tests: runs are forced offline here, before anything imports wandb, and stage
their artifacts in a temporary folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.pop("WANDB_API_KEY", None)
# Where W&B stages the artifacts an offline run logs until `wandb sync` (by default under the user's home).
os.environ.setdefault("WANDB_DATA_DIR", tempfile.mkdtemp(prefix="blockqnn-tests-wandb-"))

REPO = Path(__file__).resolve().parent.parent


LEFTOVER_GRACE_S = 15  # how long a process that is on its way out (a killed search's worker) may take to go
# Ray's own worker processes (``ray::IDLE``) leave once they notice their raylet is gone (after ray.shutdown, or
# a node a test killed), on Ray's timetable: seen taking over 15 s on a loaded 2-core machine.
RAY_GRACE_S = 90


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_tests():
    """Fail the session if any process a test started is still alive at its end, so that a worker outliving its
    search (issue 27) cannot come back unseen.

    Orphans count: this process adopts its descendants' orphans (``PR_SET_CHILD_SUBREAPER``), so the workers of a
    search subprocess a test SIGKILLed stay descendants of the session instead of slipping away to init. The rule
    for what a test may leave running for a while: only what a library keeps for this process itself (Ray's
    daemons while this process has Ray initialised, W&B's service, joblib's loky pool, multiprocessing's resource
    tracker); at the end these are closed through their own libraries, and then every descendant must be gone
    within ``LEFTOVER_GRACE_S``. Checked once per session (per xdist worker): a module-scoped Ray instance
    legitimately outlives single tests. What is left is named (pid and command line) and killed."""
    from blockqnn.executors.lifetime import adopt_orphans
    from tests.helpers import process_tree

    adopt_orphans()
    yield
    close_library_daemons()
    start = time.monotonic()
    while (left := process_tree(os.getpid())) and time.monotonic() - start < grace(left):
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if left:
        pytest.fail(f"{len(left)} process(es) outlived the tests: " + "; ".join(
            f"pid {pid}: {command}" for pid, command in left.items()), pytrace=False)


def grace(left: dict[int, str]) -> float:
    """Seconds the processes ``left`` may take to end: longer while only Ray's own workers are among them."""
    return RAY_GRACE_S if all(command.startswith("ray::") for command in left.values()) else LEFTOVER_GRACE_S


def close_library_daemons() -> None:
    """Stop, through their libraries, the helper processes libraries keep for this process (those it loaded)."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
    loky = sys.modules.get("joblib.externals.loky.reusable_executor")
    if loky is not None and loky._executor is not None:
        loky._executor.shutdown(wait=True, kill_workers=True)
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    if tracker is not None and tracker._resource_tracker._pid is not None:
        tracker._resource_tracker._stop()


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
    from blockqnn.spaces.nasbench201 import write_synthetic_table

    return write_synthetic_table(tmp_path_factory.mktemp("nb201") / "table.csv", seed=0)


@pytest.fixture
def table_search(nb201_table):
    """Overrides for a fast, deterministic search on the table space (no training, no tracking, silent), in the
    test's process (so its stand-in evaluators need not be picklable) unless a test names its workers."""
    return [
        "space=nasbench201", f"space.table={nb201_table}", "reward=accuracy", "logger=none", "progress.mode=off",
        "agent.batch_size=8", "agent.schedule_scale=0.05", "agent.alpha=0.2", "executor.workers=0",
    ]


def write_cifar10(root, n_train_batch, n_test, rng):
    """The official python layout: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}

    def dump(name, obj):
        (folder / name).write_bytes(pickle.dumps(obj))
        return [name, hashlib.md5((folder / name).read_bytes()).hexdigest()]

    def batch(name, n):
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        written[name] = (data, labels)
        return dump(name, {"batch_label": name, "data": data, "labels": labels})

    train_list = [batch(f"data_batch_{i}", n_train_batch) for i in range(1, 6)]
    test_list = [batch("test_batch", n_test)]
    meta = dump("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    return train_list, test_list, {"filename": meta[0], "key": "label_names", "md5": meta[1]}, written


@pytest.fixture
def cifar_files(tmp_path, monkeypatch):
    """Generated CIFAR-10 files, with torchvision's checksums set to theirs so its real integrity check passes;
    any download attempt fails the test."""
    from torchvision import datasets

    train_list, test_list, meta, written = write_cifar10(tmp_path, 8, 6, np.random.default_rng(0))
    monkeypatch.setattr(datasets.CIFAR10, "train_list", train_list)
    monkeypatch.setattr(datasets.CIFAR10, "test_list", test_list)
    monkeypatch.setattr(datasets.CIFAR10, "meta", meta)
    monkeypatch.setattr(datasets.cifar, "download_and_extract_archive", no_download)
    return tmp_path, written


def no_download(*args, **kwargs):
    raise AssertionError("tests must not download")

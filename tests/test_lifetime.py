"""Workers never outlive their search: the search process alone SIGKILLed (as the out-of-memory killer does, which
picks the largest process) while its workers train, forked or spawned, synchronous or asynchronous, on the command
line: 5 s later none of its workers is alive (``blockqnn.executors.lifetime``); likewise the DDP ranks of a
training whose rank 0 is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, cli_env, finished_count, process_tree
from tests.timed import SLOWDOWN_ENV

pytestmark = pytest.mark.slow
TINY_SEARCH = ["dataset=synthetic", "template=tiny", "trainer=smoke", "trainer.limit_train_batches=8",
               "trainer.max_epochs=3", "agent.batch_size=4", "agent.budget=400", "progress.mode=off", "logger=none"]
TINY_TRAINING = ["dataset=synthetic", "template=tiny", "trainer=smoke", "trainer.limit_train_batches=4",
                 "trainer.max_epochs=400", "logger=none", "onnx=null", "program=null"]


def proc_stat(pid: int) -> list[str] | None:
    """``[state, ppid, ...]`` of a process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def alive(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def killed_alone(command: list[str], env: dict, err: Path, ready) -> list[int]:
    """Start ``command``, SIGKILL it alone (not its group) once ``ready(pid)``; the pids of its descendants at that
    moment still alive 5 s later (killed then: the test fails, and leaves nothing behind)."""
    with err.open("w") as stderr:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_until(lambda: ready(proc.pid) or proc.poll() is not None, 300, "the processes at work")
        assert proc.poll() is None, err.read_text()[-3000:]
        pids = set(process_tree(proc.pid))
    finally:
        proc.kill()
        proc.wait()
    time.sleep(5)
    left = [pid for pid in pids if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


def kill_search_alone(command: list[str], run: Path, env: dict, workers: int = 2) -> list[int]:
    """``killed_alone`` for a search, once ``workers`` workers run and it has stored a candidate."""
    return killed_alone(command, env, run.parent / "search.err",
                        lambda pid: len(process_tree(pid)) >= workers and finished_count(run) >= 1)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_forked_workers_die_with_a_sigkilled_search(table_search, tmp_path, mode):
    """The table space's candidates through ``tests.timed`` (no torch: a second to start), each 2-16 s."""
    command = [sys.executable, "-m", "tests.timed", str(tmp_path / "run"), *table_search, "executor.workers=2",
               f"search.mode={mode}"]
    assert kill_search_alone(command, tmp_path / "run", cli_env({SLOWDOWN_ENV: "400"})) == []


def test_spawned_workers_die_with_a_sigkilled_search(table_search, tmp_path):
    """Two visible GPUs as far as the executor can tell: its workers spawn (CUDA does not survive a fork)."""
    command = [sys.executable, "-m", "tests.timed", str(tmp_path / "run"), *table_search, "executor.workers=2"]
    env = cli_env({SLOWDOWN_ENV: "400", "CUDA_VISIBLE_DEVICES": "0,1"})
    assert kill_search_alone(command, tmp_path / "run", env) == []


def test_training_workers_die_with_a_sigkilled_command_line_search(tmp_path):
    """``python -m blockqnn.search`` as a user runs it, real training on two forked CPU workers."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "blockqnn.search", *TINY_SEARCH, "executor.workers=2", f"hydra.run.dir={run}"]
    assert kill_search_alone(command, run, cli_env()) == []


def test_ddp_ranks_die_with_a_sigkilled_rank_0(tmp_path):
    """``python -m blockqnn.train`` with DDP on two CPU processes: Lightning starts rank 1 from rank 0; rank 0
    SIGKILLed must not leave rank 1 waiting in a collective."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "blockqnn.train", "block=[[1,1,3,0,0],[2,7,0,0,0]]", *TINY_TRAINING,
               "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", f"hydra.run.dir={out}"]
    left = killed_alone(command, cli_env(), tmp_path / "train.err",
                        lambda pid: process_tree(pid) and (out / "metrics.csv").is_file())  # rank 1 trains
    assert left == []

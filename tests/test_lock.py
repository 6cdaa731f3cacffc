"""One writer per run folder (``blockqnn.lock``): a second search or training on a folder in use is refused in one
line before it touches anything; a killed holder frees the folder at once; readers are never blocked."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blockqnn.errors import FolderInUse
from blockqnn.lock import LOCK_FILE, exclusive
from blockqnn.train import METRICS_FILE
from tests.helpers import REPO, cli_env, finished_count, folder_digest, process_tree, read_wandb_run, run_cli

IN_USE = "run folder {folder} is in use by pid {pid} on {host} since "
WAY_OUT = ": wait for it, or stop it; a killed run releases the folder by itself"
TINY_SEARCH = ["dataset=synthetic", "template=tiny", "trainer=smoke", "agent.batch_size=2", "agent.budget=400",
               "progress.mode=off"]
TINY_TRAINING = ["block=[[1,1,1,0,0],[2,7,0,0,0]]", "dataset=synthetic", "template=tiny", "trainer=smoke",
                 "trainer.limit_train_batches=4", "trainer.max_epochs=400", "logger=none", "onnx=null", "program=null"]


def holder_of(folder: Path) -> dict:
    text = (folder / LOCK_FILE).read_text() if (folder / LOCK_FILE).is_file() else ""
    return json.loads(text) if text else {}


def refusal(folder: Path, pid: int) -> str:
    return IN_USE.format(folder=folder, pid=pid, host=socket.gethostname())


def test_a_held_folder_is_refused_at_once_naming_its_holder(tmp_path):
    with exclusive(tmp_path):
        assert holder_of(tmp_path)["pid"] == os.getpid()
        with pytest.raises(FolderInUse) as refused, exclusive(tmp_path):
            pass
        assert str(refused.value).startswith(refusal(tmp_path, os.getpid()))
        assert str(refused.value).endswith(WAY_OUT)
    assert holder_of(tmp_path) == {}  # free again, and usable
    with exclusive(tmp_path):
        pass


def hold_in_a_child(folder: Path) -> subprocess.Popen:
    """A process that holds ``folder`` until it is killed; returns once it holds it."""
    code = ("import sys; from blockqnn.lock import exclusive\n"
            f"with exclusive({str(folder)!r}):\n    print('held', flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=cli_env(), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "held\n"
    return child


def test_a_sigkilled_holder_releases_the_folder_at_once(tmp_path):
    child = hold_in_a_child(tmp_path)
    with pytest.raises(FolderInUse, match=f"by pid {child.pid} on "), exclusive(tmp_path):
        pass
    child.kill()
    assert child.wait() == -signal.SIGKILL
    with exclusive(tmp_path):  # no stale lock to delete
        assert holder_of(tmp_path)["pid"] == os.getpid()


def test_a_forked_worker_does_not_hold_the_folder_of_a_killed_search(tmp_path):
    """CPU workers fork from the search (blockqnn.executors.local.start_method): a worker still training when the
    search is SIGKILLed must not keep the folder locked through the lock file it inherited."""
    code = ("import multiprocessing as mp, os, sys, time; from blockqnn.lock import exclusive\n"
            "def train():\n"
            "    print(os.getpid(), flush=True); time.sleep(120)\n"
            f"with exclusive({str(tmp_path)!r}):\n"
            "    mp.get_context('fork').Process(target=train).start(); sys.stdin.read()")
    search = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=cli_env(), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    worker = int(search.stdout.readline())  # printed by the worker itself: it runs (its fork hooks have run)
    try:
        search.kill()
        assert search.wait() == -signal.SIGKILL
        os.kill(worker, 0)  # the worker lives on
        with exclusive(tmp_path):
            assert holder_of(tmp_path)["pid"] == os.getpid()
    finally:
        os.kill(worker, signal.SIGKILL)


def start(module: str, folder: Path, *args: str) -> subprocess.Popen:
    """``python -m blockqnn.MODULE ARGS`` writing ``folder``, in the background; its stderr in ``folder.err``."""
    with folder.with_suffix(".err").open("w") as errors:
        return subprocess.Popen([sys.executable, "-m", f"blockqnn.{module}", *args, f"hydra.run.dir={folder}"],
                                cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=errors,
                                start_new_session=True)  # its own process group: workers and W&B's service


def paused_once(proc: subprocess.Popen, folder: Path, ready) -> None:
    """Wait until ``proc`` holds ``folder`` and ``ready()``, then stop it and every process under it so that the
    folder stands still: its group (SIGSTOP), then the rest, which W&B's service is (it starts its own session)."""
    deadline = time.monotonic() + 300
    while not (holder_of(folder).get("pid") == proc.pid and ready()):
        assert proc.poll() is None and time.monotonic() < deadline, folder.with_suffix('.err').read_text()[-2000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGSTOP)
    for pid in process_tree(proc.pid):
        os.kill(pid, signal.SIGSTOP)


def the_first_run_ends(proc: subprocess.Popen) -> None:
    for pid in process_tree(proc.pid):
        os.kill(pid, signal.SIGCONT)
    os.killpg(proc.pid, signal.SIGCONT)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)


def one_line(out: subprocess.CompletedProcess, folder: Path, pid: int) -> None:
    assert out.returncode == 1, out.stderr[-2000:]
    assert out.stderr.startswith(f"error: {refusal(folder, pid)}") and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.rstrip().endswith(WAY_OUT)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2], ids=["sync", "async"])
def test_a_second_search_on_a_running_folder_is_refused_and_touches_nothing(tmp_path, workers):
    run = tmp_path / "run"
    first = start("search", run, *TINY_SEARCH, f"executor.workers={workers}")
    try:
        paused_once(first, run, lambda: finished_count(run) >= 2)
        before = folder_digest(run)
        for second in ([f"resume={run}"], [*TINY_SEARCH, f"hydra.run.dir={run}"]):
            one_line(run_cli(*second), run, first.pid)
        assert folder_digest(run) == before  # history, W&B run, Hydra's record: nothing written
        assert len(read_wandb_run(run)) == 1
        reading = run_cli(str(run), "--no-wandb", module="report")  # readers are never blocked
        assert reading.returncode == 0, reading.stderr
        assert (run / "summary.md").is_file()
    finally:
        the_first_run_ends(first)
    assert first.returncode == 128 + signal.SIGTERM  # it ran on undisturbed until told to stop
    with exclusive(run):
        pass


@pytest.mark.slow
def test_a_second_training_on_a_running_folder_is_refused_and_a_killed_one_frees_it(tmp_path):
    folder = tmp_path / "train"
    epochs = folder / METRICS_FILE  # a row per epoch: it is training
    first = start("train", folder, *TINY_TRAINING)
    try:
        paused_once(first, folder, epochs.is_file)
        before = folder_digest(folder)
        one_line(run_cli(f"resume={folder}", module="train"), folder, first.pid)
        one_line(run_cli(*TINY_TRAINING, f"hydra.run.dir={folder}", module="train"), folder, first.pid)
        assert folder_digest(folder) == before
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    with exclusive(folder):  # at once: the kernel dropped the killed holder's lock
        pass

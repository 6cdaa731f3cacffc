"""A hung candidate never stalls a search (``executor.candidate_timeout``): past the limit it is recorded failed
("timed out after N s"), its worker killed and replaced, and the search goes on to its end with every other
candidate trained; a resume does not train it again."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from blockqnn.candidate import Result
from blockqnn.executors.base import TIMED_OUT, TimeLimit
from blockqnn.search import search
from blockqnn.store import Store
from blockqnn.tracking import Progress
from tests.helpers import report_cli, scored_by
from tests.timed import timed_evaluate

HUNG_ENV = "BLOCKQNN_TEST_HUNG"  # the file the first evaluation creates, naming its block and process, then hangs


def first_of_the_run(arch: str) -> bool:
    """Whether this is the run's first evaluation, in any process; the first one names its block and process in
    the file ``HUNG_ENV`` names."""
    try:
        fd = os.open(os.environ[HUNG_ENV], os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return False
    os.write(fd, f"{arch}\t{os.getpid()}".encode())
    os.close(fd)
    return True


def hangs_first(arch: str, cfg) -> object:
    """The first evaluation of the run stops its own process, as a deadlocked data loader or a stuck collective
    leaves a worker: alive, silent; every other one is scored by the table."""
    if first_of_the_run(arch):
        os.kill(os.getpid(), signal.SIGSTOP)  # killed while stopped: never goes on
    return timed_evaluate(arch, cfg)


def never_returns(arch: str, cfg) -> object:
    """The first evaluation of the run sleeps for ever (a Ray task that never returns)."""
    if first_of_the_run(arch):
        threading.Event().wait()
    return timed_evaluate(arch, cfg)


def check_one_timed_out(run: Path, hung: Path, limit: int) -> None:
    """The search ended, every block it sampled stored, with the hung one failed for its time limit and every other
    one trained."""
    arch, pid = hung.read_text().split("\t")
    with Store.open(run, readonly=True) as store:
        rows, running, config = store.candidates(), store.running(), store.config()
        (_, state) = store.latest_agent_state()
    grid = [divmod(i, config.agent.batch_size) for i in range(state["num_iterations"] * config.agent.batch_size)]
    assert not running and [(r["iteration"], r["position"]) for r in rows] == grid
    failed = [r for r in rows if r["status"] == "failed"]
    assert [(r["arch"], r["error"]) for r in failed if not r["cached"]] == [(arch, f"{TIMED_OUT} {limit} s")]
    assert all(r["arch"] == arch for r in failed) and {r["status"] for r in rows} == {"ok", "failed"}
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_stopped_worker_is_given_up_and_the_search_goes_on(compose, table_search, tmp_path, monkeypatch, caplog,
                                                            capsys, mode):
    hung, run = tmp_path / "hung", tmp_path / "run"
    monkeypatch.setenv(HUNG_ENV, str(hung))
    # 10 s: the spawned replacement reads the table at its first candidate, a few seconds on a busy machine
    cfg = compose(*table_search, "executor.workers=2", f"search.mode={mode}", "executor.candidate_timeout=10")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="blockqnn.search.loop"):
        search(scored_by(cfg, hangs_first), run)
    assert time.monotonic() - started < 120
    check_one_timed_out(run, hung, 10)
    arch = hung.read_text().split("\t")[0]
    assert f"candidate {arch} {TIMED_OUT} 10 s (executor.candidate_timeout)" in caplog.text
    assert report_cli([str(run)], capsys, monkeypatch)[0] == 0
    assert f"- timed out (executor.candidate_timeout), recorded failed: 1\n  - `{arch}` (iteration " in (
        run / "summary.md").read_text()
    evaluated = []  # a resume trains nothing again, the timed-out candidate included
    search(scored_by(compose(*table_search, f"resume={run}"), lambda arch, cfg: evaluated.append(arch)), run)
    assert evaluated == []


@pytest.mark.slow
def test_a_ray_task_that_never_returns_is_cancelled_and_the_search_goes_on(compose, table_search, tmp_path,
                                                                           monkeypatch):
    pytest.importorskip("ray")
    hung, run = tmp_path / "hung", tmp_path / "run"
    monkeypatch.setenv(HUNG_ENV, str(hung))
    on_ray = [*(o for o in table_search if not o.startswith("executor.")), "executor=ray", "executor.init.num_cpus=2",
              "executor.candidate_timeout=20"]
    search(scored_by(compose(*on_ray), never_returns), run)
    check_one_timed_out(run, hung, 20)


def test_auto_is_a_multiple_of_the_slowest_finished_candidate_with_a_floor():
    limit = TimeLimit("auto", multiple=4, floor=10)
    assert limit.seconds() == 10  # nothing finished yet: the floor
    limit.observe(Result(status="ok", wall_time=2.0))
    assert limit.seconds() == 10
    limit.observe(Result(status="stopped", wall_time=4.0))
    limit.observe(Result(status="failed", wall_time=100.0))  # a failure says nothing about how long training takes
    assert limit.seconds() == 16
    assert TimeLimit(None, 4, 10).seconds() is None and TimeLimit(5, 4, 10).seconds() == 5
    since = time.monotonic() - 20
    assert limit.expired(since) and limit.left([since, time.monotonic()]) == 0
    given_up = limit.given_up(since)
    assert (given_up.status, given_up.error) == ("failed", f"{TIMED_OUT} 16 s") and given_up.wall_time >= 20


def test_the_progress_line_counts_timed_out_candidates_once_there_are_any():
    progress = Progress(mode="off")
    counts = dict(iteration=0, iterations=2, epsilon=1.0, done=3, total=16, cached=0, failed=2, best=0.5)
    progress.update(**counts)
    assert "(cached 0, failed 2, in flight 0)" in progress.text
    progress.update(**counts, timed_out=1)
    assert "(cached 0, failed 2 (1 timed out), in flight 0)" in progress.text

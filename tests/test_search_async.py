"""The asynchronous loop (``search.mode=async``): each block sampled when a worker frees up and learnt from as it
finishes, every block recorded once, none trained twice, the mode kept on resume, and nothing lost to a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from blockqnn.errors import UserError
from blockqnn.search import search
from blockqnn.store import Store
from tests.helpers import REPO, dying_after, history, scored_by, stored_count


def check_async_history(run_dir: Path, evaluated: list[str] | None = None) -> list[dict]:
    """Every sampled block once, in sampling order; no hash trained twice (and, given the blocks the evaluator was
    asked for, each of those once); every result incorporated once."""
    with Store.open(run_dir, readonly=True) as store:
        rows, running, (_, state) = store.candidates(), store.running(), store.latest_agent_state()
        assert store.get("mode") == "async"
    batch = state["sampled"] // state["num_iterations"]
    assert not running and len(rows) == state["sampled"] == batch * state["num_iterations"]
    assert [(r["iteration"], r["position"]) for r in rows] == [divmod(i, batch) for i in range(len(rows))]
    trained = [r["hash"] for r in rows if not r["cached"]]
    assert len(trained) == len(set(trained))
    assert evaluated is None or sorted(evaluated) == sorted(r["arch"] for r in rows if not r["cached"])
    assert Counter(text for text, _ in state["memory"]) == Counter(r["arch"] for r in rows)
    events = sorted([r["sampled_event"] for r in rows] + [r["incorporated_event"] for r in rows])
    assert events == list(range(1, 2 * len(rows) + 1))
    for row in rows:
        assert row["sampled_event"] < row["incorporated_event"]
        if row["cached"]:
            original = next(r for r in rows if r["hash"] == row["hash"] and not r["cached"])
            assert (row["reward"], row["status"]) == (original["reward"], original["status"])
    return rows


def test_async_search_with_workers_records_each_block_once_and_trains_none_twice(
        compose, table_search, tmp_path, monkeypatch):
    from tests.timed import LOG_ENV, evaluations, timed_evaluate

    log = tmp_path / "evaluations.log"
    monkeypatch.setenv(LOG_ENV, str(log))
    # 64 cells and 8 blocks in flight (2 workers, 6 queued): blocks often meet their twin still in flight
    cfg = compose(*table_search, "space.ops=[none,skip_connect]", "executor.workers=2", "search.prefetch=6")
    best = search(scored_by(cfg, timed_evaluate), tmp_path / "run")
    rows = check_async_history(tmp_path / "run", evaluations(log))
    waited = [r for r in rows if r["cached"] and any(
        o["hash"] == r["hash"] and not o["cached"] and o["finished_at"] > r["dispatched_at"] for o in rows)]
    assert waited, "no block waited for its twin in flight: that path went untested"
    assert best["reward"] == max(r["reward"] for r in rows)
    assert {r["epsilon"] for r in rows if r["iteration"] == 0} == {1.0}


def test_async_mode_is_kept_on_resume_and_a_wrong_mode_is_refused(compose, table_search, tmp_path):
    search(compose(*table_search, "search.mode=async"), tmp_path)
    with pytest.raises(UserError, match="searched in async mode"):
        search(compose(*table_search, "search.mode=sync", f"resume={tmp_path}"), tmp_path)
    rows = check_async_history(tmp_path)
    search(compose(*table_search, f"resume={tmp_path}"), tmp_path)  # finished: nothing more to do
    assert len(history(tmp_path)[0]) == len(rows)


def test_async_evolution_interrupted_resumes_to_the_uninterrupted_history(compose, table_search, tmp_path):
    """Regularized evolution takes one block at a time too; killed and resumed, it ends as if never stopped."""
    args = [a for a in table_search if not a.startswith("agent.")] + [
        "agent=evolution", "agent.batch_size=4", "agent.budget=60", "search.mode=async"]
    search(compose(*args), tmp_path / "reference")
    with pytest.raises(KeyboardInterrupt):
        search(scored_by(compose(*args), dying_after(23)), tmp_path / "killed")
    search(compose(*args, f"resume={tmp_path / 'killed'}"), tmp_path / "killed")
    def untimed(run):
        rows, state = history(run)
        return [{k: v for k, v in row.items() if k != "dispatched_at"} for row in rows], state

    assert untimed(tmp_path / "killed") == untimed(tmp_path / "reference")
    with Store.open(tmp_path / "killed", readonly=True) as store:
        rows, (_, state) = store.candidates(), store.latest_agent_state()
        assert store.get("mode") == "async" and len(rows) == state["sampled"] == 60
    assert [text for text, _ in state["population"]] == [r["arch"] for r in rows][-10:]  # the last 10 to return


@pytest.mark.slow
def test_ray_search_matches_the_local_one_and_runs_async(compose, table_search, tmp_path):
    local, ray = tmp_path / "local", tmp_path / "ray"
    search(compose(*table_search), local)
    on_ray = [*(o for o in table_search if not o.startswith("executor.")), "executor=ray", "executor.init.num_cpus=2"]
    search(compose(*on_ray), tmp_path / "async")  # two CPUs: two candidates at once, so asynchronous (ray.wait)
    check_async_history(tmp_path / "async")
    search(compose(*on_ray, "search.mode=sync"), ray)
    assert history(ray) == history(local)


@pytest.mark.slow
def test_async_search_sigkilled_at_random_moments_loses_nothing_and_retrains_nothing(table_search, tmp_path):
    """Worker processes running: kill the search at random moments, and again right after a resume has sent the
    running blocks out; in the end every block is stored once and nothing finished ran twice."""
    from tests.timed import LOG_ENV, evaluations

    run, log, err = tmp_path / "run", tmp_path / "evaluations.log", tmp_path / "stderr"
    args = [*table_search, "executor.workers=2"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env |= {"PYTHONPATH": str(REPO), LOG_ENV: str(log)}

    def start() -> subprocess.Popen:
        with err.open("w") as stderr:
            return subprocess.Popen([sys.executable, "-m", "tests.timed", str(run), *args], cwd=REPO, env=env,
                                    stdout=subprocess.DEVNULL, stderr=stderr)

    def kill_when(ready) -> bool:
        """Start the search, SIGKILL it once ``ready()``; False when it finished first."""
        proc = start()
        while not ready() and proc.poll() is None:
            time.sleep(0.005)
        if proc.poll() is not None:
            assert proc.wait() == 0, err.read_text()
            return False
        proc.send_signal(signal.SIGKILL)
        return proc.wait() == -signal.SIGKILL

    def stored_at_least(n: int) -> bool:
        return stored_count(run) >= n

    def sent_again(running: set[str], before: int) -> bool:
        return running <= set(evaluations(log)[before:])

    rng, kills = np.random.default_rng(7), 0
    while kill_when(partial(stored_at_least, stored_count(run) + int(rng.integers(10, 40)))):
        kills += 1
        with Store.open(run, readonly=True) as store:
            finished = {r["arch"] for r in store.candidates() if not r["cached"] and r["status"] == "ok"}
            running = {r["arch"] for r in store.running() if not r["cached"]}
        before = len(evaluations(log))  # a worker of the killed search may still log the block it was just sent
        kill_when(partial(sent_again, running, before))
        again = evaluations(log)[before:]
        assert running <= set(again), "a block running at the kill was not sent out again"
        assert not set(again) & finished, "a finished block ran again"
    assert kills >= 2
    check_async_history(run)

"""Stopping weak candidates at rungs (stopping=asha): the rule, the Lightning callback on a real training, and the
loop's promises (stopped rows are finished outcomes, reused by twins, never retrained, left out of the top-k, and
a killed sync search still resumes bit-identical)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from blockqnn.candidate import Candidate, Result, Status
from blockqnn.errors import ConfigError
from blockqnn.search import search
from blockqnn.stopping import ASHA, Rungs, geometric_rungs
from blockqnn.store import Store
from tests.helpers import REPO, scored_by
from tests.timed import CurveEvaluator

STOPPED = Status.STOPPED  # the status a candidate stopped at a rung has

TIMES = ("wall_time", "started_at", "finished_at", "dispatched_at")


# ---- the rule -------------------------------------------------------------------------------------------------
def test_rungs_grow_by_eta_below_the_last_epoch():
    assert geometric_rungs(1, 3, 8) == (1, 3)
    assert geometric_rungs(2, 2, 12) == (2, 4, 8)
    assert ASHA(eta=3, max_epochs=8, rungs=[4, 2]).rungs == (2, 4)


def test_a_cutoff_keeps_the_top_one_over_eta_once_eta_candidates_reached_the_rung():
    rule = ASHA(eta=3, min_epoch=1, max_epochs=4)  # rungs 1 and 3
    assert rule.cutoffs({1: [0.9, 0.1], 3: []}) is None  # fewer than eta seen: everyone goes on
    assert rule.cutoffs({1: [0.1, 0.5, 0.3], 3: []}) == {1: 0.5}
    assert rule.cutoffs({1: [0.6, 0.1, 0.5, 0.3, 0.2, 0.4], 3: [0.7, 0.8, 0.9]}) == {1: 0.5, 3: 0.9}


def finished(iteration: int, status: Status, cached: bool, curve: list[float]) -> Candidate:
    """A finished candidate as the loop hands it to ``Rungs``."""
    return Candidate(iteration=iteration, position=0, arch="a", hash="h", epsilon=1.0, cached=cached,
                     result=Result(status=status, curve=curve))


def test_rungs_count_trained_candidates_by_iteration():
    rungs = Rungs((1, 2))
    rungs.observe(finished(0, Status.OK, False, [0.2, 0.4, 0.6]))
    rungs.observe(finished(1, Status.STOPPED, False, [0.1]))
    rungs.observe(finished(1, Status.OK, True, [0.9, 0.9, 0.9]))  # a copy
    rungs.observe(finished(1, Status.FAILED, False, [0.05]))
    assert rungs.before(1) == {1: [0.2], 2: [0.4]}
    assert {rung: sorted(values) for rung, values in rungs.before().items()} == {1: [0.1, 0.2], 2: [0.4]}


@pytest.mark.parametrize("override, message", [
    ("stopping.eta=1", "stopping.eta=1: expected an integer >= 2"),
    ("stopping.min_epoch=8", "stopping.min_epoch=8: no rung below trainer.max_epochs (8)"),
    ("stopping.rungs=[2,8]", "stopping.rungs=[2, 8]: expected epochs from 1 to below trainer.max_epochs (8)"),
])
def test_bad_stopping_values_are_refused_at_composition(compose, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        compose("experiment=quickstart", "stopping=asha", "stopping.rungs=null", override)  # the preset lists rungs


# ---- the callback, on a real training -------------------------------------------------------------------------
SMOKE = ["dataset=digits", "template=tiny", "trainer.max_epochs=3", "trainer.batch_size=128", "logger=none"]
RESIDUAL = "(1,4,0,0,0),(2,1,3,1,0),(3,1,3,2,0),(4,5,0,1,3),(5,7,0,0,0)"


def test_the_callback_stops_a_real_training_at_its_rung(compose):
    from blockqnn.candidate import Job
    from blockqnn.evaluate import build_evaluator

    evaluator = build_evaluator(compose(*SMOKE))
    stopped = evaluator(Job(RESIDUAL, "residual", 0, {2: 1.01}))  # no block reaches 101% at epoch 2
    assert (stopped.status, stopped.epochs, len(stopped.curve)) == (STOPPED, 2, 2)
    assert stopped.accuracy == stopped.curve[-1] and stopped.reward is not None
    full = evaluator(Job(RESIDUAL, "residual", 0, {2: 0.0}))
    assert (full.status, full.epochs, len(full.curve)) == ("ok", 3, 3)
    assert full.curve[:2] == stopped.curve  # the same candidate seed: the same first epochs


# ---- the loop -------------------------------------------------------------------------------------------------
def asha_search(table_search, *extra):
    return [*table_search, "stopping=asha", "trainer.max_epochs=4", "stopping.eta=2", "stopping.rungs=[1,2]",
            "space.ops=[none,skip_connect,nor_conv_3x3]", *extra]  # 729 cells: repeats


def curve_search(compose, args, run_dir, **kwargs):
    cfg = compose(*args)
    return search(scored_by(cfg, CurveEvaluator), run_dir, **kwargs)


def rows_of(run_dir) -> list[dict]:
    with Store.open(run_dir, readonly=True) as store:
        return [{k: v for k, v in r.items() if k not in TIMES} for r in store.candidates()]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_stopped_candidates_are_finished_outcomes_reused_by_their_twins(compose, table_search, tmp_path, mode):
    run = tmp_path / "run"
    best = curve_search(compose, asha_search(table_search, f"search.mode={mode}"), run)
    rows = rows_of(run)
    stopped = [r for r in rows if r["status"] == STOPPED and not r["cached"]]
    full = [r for r in rows if r["status"] == "ok" and not r["cached"]]
    assert stopped and full and all(r["epochs"] in (1, 2) and len(r["curve"]) == r["epochs"] for r in stopped)
    assert all(r["epochs"] == 4 and len(r["curve"]) == 4 for r in full)
    twins = [r for r in rows if r["cached"] and r["hash"] in {s["hash"] for s in stopped}]
    assert twins and all(t["status"] == STOPPED and t["curve"] == next(s["curve"] for s in stopped
                                                                        if s["hash"] == t["hash"]) for t in twins)
    with Store.open(run, readonly=True) as store:
        top = store.best(len(rows))
    assert {r["hash"] for r in top} == {r["hash"] for r in full} and best["status"] == "ok"
    assert best["reward"] == max(r["reward"] for r in full)


def test_a_resumed_search_never_retrains_a_stopped_candidate(compose, table_search, tmp_path):
    run, seen = tmp_path / "run", []

    class Counting(CurveEvaluator):
        """Records what it trains; the first search is interrupted at its 40th candidate."""

        def __call__(self, job):
            if len(seen) == 40:
                seen.append(None)
                raise KeyboardInterrupt
            seen.append(job.arch)
            return super().__call__(job)

    cfg = compose(*asha_search(table_search))
    with pytest.raises(KeyboardInterrupt):
        search(scored_by(cfg, Counting), run)
    before = rows_of(run)
    stopped, first = {r["arch"] for r in before if r["status"] == STOPPED}, len(seen)
    search(scored_by(cfg, Counting), run)
    assert stopped and not stopped & set(seen[first:])
    assert all(row in rows_of(run) for row in before)


@pytest.mark.slow
def test_a_sigkilled_sync_search_with_stopping_resumes_bit_identical(compose, table_search, tmp_path):
    args = asha_search([a for a in table_search if not a.startswith("agent.schedule")], "search.mode=sync",
                       "agent.batch_size=16", "agent.budget=480")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    curve_search(compose, args, reference)
    total = len(rows_of(reference))
    assert sum(r["status"] == STOPPED for r in rows_of(reference)) > total // 4
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "tests.timed", "--curves", str(killed), *args]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while count(killed) < total // 3 and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and count(killed) < total
    resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert rows_of(killed) == rows_of(reference)


def count(run_dir) -> int:
    try:
        with Store.open(run_dir, readonly=True) as store:
            return len(store.candidates())
    except Exception:  # not created yet
        return 0

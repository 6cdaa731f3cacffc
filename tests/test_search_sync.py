"""``search()`` and its synchronous loop on the NAS-Bench-201 table space (rewards without training): every sampled
block recorded, none evaluated twice, failed candidates, worker processes, the mode chosen, and what a search refuses
before it starts."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from blockqnn.agents.qlearning import QLearningAgent
from blockqnn.cli import user_errors
from blockqnn.errors import UserError
from blockqnn.evaluate import evaluate_candidate
from blockqnn.search import search
from blockqnn.store import DB_NAME, Store
from tests.helpers import history, scored_by


def test_every_sampled_block_is_recorded_and_no_block_is_evaluated_twice(compose, table_search, tmp_path):
    cfg = compose(*table_search, "space.ops=[none,skip_connect,nor_conv_3x3]")  # 729 cells: many repeats
    evaluated = []

    def counting(arch, cfg):
        evaluated.append(arch)
        return evaluate_candidate(arch, cfg)

    best = search(scored_by(cfg, counting), tmp_path)
    rows, (last, state) = history(tmp_path)
    iterations, batch = len(set(r["iteration"] for r in rows)), cfg.agent.batch_size
    assert [(r["iteration"], r["position"]) for r in rows] == [(i, p) for i in range(iterations) for p in range(batch)]
    assert last == iterations - 1 and state["iteration"] == iterations == state["num_iterations"]
    first = {}
    for row in rows:
        if row["cached"]:
            original = first[row["hash"]]  # a cached copy always follows the block's evaluation
            assert {k: row[k] for k in ("status", "reward", "accuracy")} == {
                k: original[k] for k in ("status", "reward", "accuracy")}
        else:
            assert row["hash"] not in first
            first[row["hash"]] = row
    assert len(evaluated) == len(first) == len(set(evaluated))
    assert sum(r["cached"] for r in rows) > 0
    within_batch = Counter((r["iteration"], r["hash"]) for r in rows)
    assert max(within_batch.values()) > 1, "no repeat inside one batch: that path went untested"
    assert best["reward"] == max(r["reward"] for r in rows)
    assert {r["epsilon"] for r in rows if r["iteration"] == 0} == {1.0}


def test_failed_candidates_are_recorded_and_rewarded_failed_reward(compose, table_search, tmp_path, monkeypatch):
    from blockqnn.candidate import Result

    def flaky(arch, cfg):
        if int(hashlib.sha256(arch.encode()).hexdigest(), 16) % 3 == 0:
            return Result(status="failed", error="RuntimeError: CUDA out of memory (injected)")
        return evaluate_candidate(arch, cfg)

    seen_rewards = []
    update = QLearningAgent.update
    monkeypatch.setattr(QLearningAgent, "update", lambda self, t, r: (seen_rewards.extend(r), update(self, t, r))[1])
    search(scored_by(compose(*table_search, "failed_reward=-0.25"), flaky), tmp_path)
    rows, _ = history(tmp_path)
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed and all("out of memory" in r["error"] and r["reward"] is None for r in failed)
    assert seen_rewards == [-0.25 if r["status"] == "failed" else r["reward"] for r in rows]


@pytest.mark.slow
def test_local_worker_processes_match_in_process(compose, table_search, tmp_path):
    search(compose(*table_search), tmp_path / "in-process")
    search(compose(*table_search, "executor.workers=2", "search.mode=sync"), tmp_path / "workers")
    assert history(tmp_path / "workers") == history(tmp_path / "in-process")


def test_an_agent_that_learns_by_iterations_only_searches_in_sync_mode(compose, table_search, tmp_path, monkeypatch):
    monkeypatch.setattr(QLearningAgent, "sample_one", None)  # as an agent without the one-block protocol
    with pytest.raises(UserError, match="learns by iterations only"):
        search(compose(*table_search, "search.mode=async"), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    search(compose(*table_search, "executor.workers=2"), tmp_path / "auto")
    with Store.open(tmp_path / "auto", readonly=True) as store:
        assert store.get("mode") == "sync" and store.candidates()


# ---- refused before the search ------------------------------------------------------------------------------


def test_a_search_refuses_several_devices_per_candidate(compose, table_search, tmp_path):
    with pytest.raises(UserError, match="one device"):
        search(compose(*table_search, "trainer.devices=2"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# A short trained search (a case that is wrongly not refused ends soon, failing the test instead of hanging it).
TRAINED_SEARCH = ["dataset=synthetic", "template=tiny", "trainer=early_stop", "trainer.max_epochs=1", "logger=none",
                  "progress.mode=off", "agent.batch_size=2", "agent.schedule_scale=0.01"]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (["progress.mode=loud"], "progress.mode"),
        (["executor.workers=-1"], "executor.workers"),
        (["failed_reward=abc"], "failed_reward=abc: Value 'abc' of type 'str' could not be converted to Float"),
        (["seed=x"], "seed=x: Value 'x' of type 'str' could not be converted to Integer"),
        (["space.types=[7]"], "at least one layer type"),
        (["space.terminal_weight=-1"], "space.terminal_weight=-1: expected a number > 0"),
        (["dataset.val_size=100000"], "dataset.val_size=100000 must be in"),
        (["trainer.precision=bogus"], "trainer.precision=bogus: expected one of 16-mixed"),
        (["+trainer.extra.bogus=1"], "cannot train even the smallest block: .*unexpected keyword argument 'bogus'"),
        (["trainer.scheduler_interval=bogus"], "trainer.scheduler_interval=bogus: expected one of epoch, step"),
        (["trainer.limit_val_batches=0"], "trainer.limit_val_batches=0: expected"),
        (["trainer.strategy=bogus"], "cannot train even the smallest block: .*bogus"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_bad_values_stop_before_a_history_is_created(compose, tmp_path, bad, message):
    """Values only a candidate's training (or failure) would use are tried first: a typo must not fail every
    candidate of a long search one by one."""
    with pytest.raises(Exception, match=message) as info:
        search(compose(*TRAINED_SEARCH, *bad), tmp_path / "run")
    assert user_errors(info.value), "reported as bad input (one line), not as a bug"
    assert not (tmp_path / "run" / DB_NAME).exists()


def test_a_table_space_refuses_a_reward_it_cannot_compute(compose, table_search, tmp_path):
    with pytest.raises(UserError, match="a table space rewards the table's accuracy alone .* use reward=accuracy"):
        search(compose(*table_search, "reward=paper"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_incomplete_table_is_refused_before_the_search(compose, table_search, nb201_table, tmp_path):
    partial = tmp_path / "partial.csv"
    partial.write_text("".join((nb201_table.read_text().splitlines(True))[:100]))
    with pytest.raises(UserError, match="lacks 15526 of the 15625 architectures"):
        search(compose(*table_search, f"space.table={partial}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()

"""What both search loops share (``Search``): the parts, recording a candidate, counting, the progress line.

Each sampled block is looked up in the history first: a block already evaluated in this run (same canonical hash) is
recorded as a *cached* copy instead of being trained again. B counts sampled blocks, cached ones included; failed
candidates are rewarded ``failed_reward``; candidates stopped at a rung (``stopping``) their rung reward. The two
loops, ``sync`` and ``asynchronous``, differ in when blocks are sampled and when the agent learns.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from typing import Any

from blockqnn.agents import BatchAgent, StreamAgent
from blockqnn.candidate import Job, candidate_seed
from blockqnn.executors.base import TIMED_OUT, Executor
from blockqnn.spaces import SearchSpace
from blockqnn.stopping import STOPPED, Cutoffs, NoStopping, Rungs
from blockqnn.store import Store
from blockqnn.tracking import Progress, Tracker

log = logging.getLogger(__name__)

# ---- the loop -------------------------------------------------------------------------------------------------
@dataclasses.dataclass(kw_only=True)
class Search:
    """The state of one running search, shared by both modes: recording, counting, progress. ``run`` is the loop.
    The executor already serves the candidate evaluator; the loop hands it blocks."""

    agent: StreamAgent | BatchAgent
    space: SearchSpace
    store: Store
    executor: Executor
    tracker: Tracker
    progress: Progress
    failed_reward: float  # what the agent learns from a failed candidate
    seed: int  # the run's: each candidate trains with a seed drawn from it and its block
    stopping: Any = dataclasses.field(default_factory=NoStopping)  # blockqnn.stopping: the cutoffs at rungs
    seen: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # hash -> first evaluation
    counts: dict[str, int] = dataclasses.field(default_factory=lambda: defaultdict(int))
    best: dict[str, Any] | None = None
    busy: float = 0.0  # seconds of training this session: the workers' busy time
    started: float = dataclasses.field(default_factory=time.monotonic)
    capacity: int = 1  # candidates the executor runs at once, read when the loop starts

    def __post_init__(self) -> None:
        self.rungs = Rungs(self.stopping.rungs)

    def cutoffs(self, iteration: int | None = None) -> Cutoffs | None:
        """The rung cutoffs from this run's candidates (of the iterations before ``iteration`` when given)."""
        return self.stopping.cutoffs(self.rungs.before(iteration))

    def job(self, arch: str, block_hash: str, cutoffs: Cutoffs | None) -> Job:
        """What a worker needs to evaluate ``arch`` (whose canonical hash is ``block_hash``)."""
        return Job(arch, block_hash, candidate_seed(self.seed, block_hash), cutoffs)

    def run(self) -> None:
        for row in self.store.candidates():
            self._count(row)
        self.started, self.capacity = time.monotonic(), self.executor.capacity
        self.loop()
        self._show_progress(final=True)

    def loop(self) -> None:
        raise NotImplementedError

    def _record(self, row: dict[str, Any]) -> dict[str, Any]:
        self.store.record(self._finished(row))
        self._announce(row)
        return row

    def _finished(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` with its training times; a trained one adds to the workers' busy time."""
        if not row["cached"]:
            row["finished_at"] = time.time()
            row["started_at"] = row["finished_at"] - row["wall_time"]
            self.busy += row["wall_time"] or 0.0
        return row

    def _announce(self, row: dict[str, Any]) -> None:
        if timed_out(row):
            log.warning("candidate %s %s (executor.candidate_timeout): recorded failed, its worker replaced",
                        row["arch"], row["error"])
        self._count(row)
        self.tracker.log_candidate(row, self.counts["done"], self.best, self.utilization)
        self._show_progress(new=1)

    def _count(self, row: dict[str, Any]) -> None:
        self.counts["done"] += 1
        self.counts["cached"] += row["cached"]
        self.counts["failed"] += row["status"] == "failed"
        self.counts["timed_out"] += timed_out(row)
        if not row["cached"] and row["status"] != "failed":  # a failure may be transient (OOM, lost worker): retry
            self.seen.setdefault(row["hash"], row)
        if not row["cached"] and row["status"] == STOPPED:
            self.counts["stopped"] += 1
            self.counts["epochs_saved"] += max(0, self.stopping.max_epochs - row["epochs"])
        self.rungs.observe(row)
        if row["status"] == "ok" and (self.best is None or row["reward"] > self.best["reward"]):
            self.best = row

    def _reward(self, row: dict[str, Any]) -> float:
        return float(self.failed_reward) if row["status"] == "failed" else row["reward"]

    @property
    def utilization(self) -> float:
        """Busy time over the executor's capacity x this session's elapsed time."""
        elapsed = time.monotonic() - self.started
        return self.busy / (self.capacity * elapsed) if elapsed > 0 else 0.0

    def _show_progress(self, new: int = 0, final: bool = False) -> None:
        self.progress.update(
            iteration=self.agent.iteration, iterations=self.agent.num_iterations, epsilon=self.agent.epsilon,
            done=self.counts["done"], total=self.agent.total_samples, cached=self.counts["cached"],
            failed=self.counts["failed"], best=None if self.best is None else self.best["reward"], new=new,
            final=final, in_flight=self.executor.pending, utilization=self.utilization,
            stopped=(self.counts["stopped"], self.counts["epochs_saved"]) if self.stopping.rungs else None,
            timed_out=self.counts["timed_out"],
        )


def timed_out(row: dict[str, Any]) -> bool:
    """A trained candidate given up at the time limit (``executor.candidate_timeout``)."""
    return not row["cached"] and row["status"] == "failed" and (row["error"] or "").startswith(TIMED_OUT)


def cached_copy(first: dict[str, Any], sampled: dict[str, Any]) -> dict[str, Any]:
    """A block sampled again (``sampled``: its own row) recorded with the result of its first evaluation."""
    now = time.time()
    own = {k: sampled.get(k) for k in ("iteration", "position", "arch", "epsilon", "dispatched_at", "sampled_event")}
    return first | own | dict(cached=1, wall_time=0.0, started_at=now, finished_at=now, incorporated_event=None)

"""What both search loops share (``Search``): the parts, recording a candidate, counting, the progress line.

Each sampled block becomes one ``Candidate`` (``sampled``: its code and canonical hash from one parse), carried
from the executor to the store, the tracker and the agent. It is looked up in the history first: a block already
evaluated in this run (same canonical hash) is recorded as a *cached* copy instead of being trained again. B counts
sampled blocks, cached ones included; failed candidates are rewarded ``failed_reward``; candidates stopped at a
rung (``stopping``) their rung reward. The two loops, ``sync`` and ``asynchronous``, differ in when blocks are
sampled and when the agent learns.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from typing import Any

from blockqnn.agents import BatchAgent, StreamAgent
from blockqnn.candidate import Candidate, Job, Result, Status, candidate_seed
from blockqnn.executors.base import TIMED_OUT, Executor
from blockqnn.spaces import Action, SearchSpace
from blockqnn.stopping import Cutoffs, NoStopping, Rungs
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
    seen: dict[str, Candidate] = dataclasses.field(default_factory=dict)  # hash -> first evaluation
    counts: dict[str, int] = dataclasses.field(default_factory=lambda: defaultdict(int))
    best: Candidate | None = None
    busy: float = 0.0  # seconds of training this session: the workers' busy time
    started: float = dataclasses.field(default_factory=time.monotonic)
    capacity: int = 1  # candidates the executor runs at once, read when the loop starts

    def __post_init__(self) -> None:
        self.rungs = Rungs(self.stopping.rungs)

    def cutoffs(self, iteration: int | None = None) -> Cutoffs | None:
        """The rung cutoffs from this run's candidates (of the iterations before ``iteration`` when given)."""
        return self.stopping.cutoffs(self.rungs.before(iteration))

    def sampled(self, trajectory: list[Action], iteration: int, position: int, epsilon: float, **events: Any
                ) -> Candidate:
        """The candidate a sampled block becomes: its code and canonical hash from one parse of ``trajectory``."""
        arch, block_hash = self.space.decode_hashed(trajectory)
        return Candidate(iteration=iteration, position=position, arch=arch, hash=block_hash, epsilon=epsilon, **events)

    def job(self, candidate: Candidate, cutoffs: Cutoffs | None) -> Job:
        """What a worker needs to evaluate ``candidate``."""
        return Job(candidate.arch, candidate.hash, candidate_seed(self.seed, candidate.hash), cutoffs)

    def run(self) -> None:
        for candidate in self.store.finished():
            self._count(candidate)
        self.started, self.capacity = time.monotonic(), self.executor.capacity
        self.loop()
        self._show_progress(final=True)

    def loop(self) -> None:
        raise NotImplementedError

    def _trained(self, candidate: Candidate, returned: Any) -> Candidate:
        """``candidate`` with the result its evaluator returned (``Result.of``); its training adds to the workers'
        busy time."""
        result = Result.of(returned)
        self.busy += result.wall_time
        return candidate.finish(result)

    def _record(self, candidate: Candidate) -> Candidate:
        self.store.record(candidate)
        self._announce(candidate)
        return candidate

    def _announce(self, candidate: Candidate) -> None:
        if timed_out(candidate):
            log.warning("candidate %s %s (executor.candidate_timeout): recorded failed, its worker replaced",
                        candidate.arch, candidate.result.error)
        self._count(candidate)
        self.tracker.log_candidate(candidate, self.counts["done"], self.best, self.utilization)
        self._show_progress(new=1)

    def _count(self, candidate: Candidate) -> None:
        status, own = candidate.status, not candidate.cached
        self.counts["done"] += 1
        self.counts["cached"] += candidate.cached
        self.counts["failed"] += status == Status.FAILED
        self.counts["timed_out"] += timed_out(candidate)
        if own and status != Status.FAILED:  # a failure may be transient (OOM, lost worker): retried
            self.seen.setdefault(candidate.hash, candidate)
        if own and status == Status.STOPPED:
            self.counts["stopped"] += 1
            self.counts["epochs_saved"] += max(0, self.stopping.max_epochs - candidate.result.epochs)
        self.rungs.observe(candidate)
        if status == Status.OK and (self.best is None or candidate.result.reward > self.best.result.reward):
            self.best = candidate

    def _reward(self, candidate: Candidate) -> float:
        return learnt_reward(candidate, self.failed_reward)

    @property
    def utilization(self) -> float:
        """Busy time over the executor's capacity x this session's elapsed time."""
        elapsed = time.monotonic() - self.started
        return self.busy / (self.capacity * elapsed) if elapsed > 0 else 0.0

    def _show_progress(self, new: int = 0, final: bool = False) -> None:
        self.progress.update(
            iteration=self.agent.iteration, iterations=self.agent.num_iterations, epsilon=self.agent.epsilon,
            done=self.counts["done"], total=self.agent.total_samples, cached=self.counts["cached"],
            failed=self.counts["failed"], best=None if self.best is None else self.best.result.reward, new=new,
            final=final, in_flight=self.executor.pending, utilization=self.utilization,
            stopped=(self.counts["stopped"], self.counts["epochs_saved"]) if self.stopping.rungs else None,
            timed_out=self.counts["timed_out"],
        )


def learnt_reward(candidate: Candidate, failed_reward: float) -> float:
    """What the agent learns from a finished candidate: ``failed_reward`` for a failure, else its reward."""
    return float(failed_reward) if candidate.status == Status.FAILED else candidate.result.reward


def timed_out(candidate: Candidate) -> bool:
    """A trained candidate given up at the time limit (``executor.candidate_timeout``)."""
    return (not candidate.cached and candidate.status == Status.FAILED
            and (candidate.result.error or "").startswith(TIMED_OUT))

"""The synchronous search loop (``search.mode=sync``), and what both loops share (``Search``).

Each iteration the agent samples B blocks; each block is looked up in the history first (a block already
evaluated in this run, by canonical hash, is recorded as a *cached* copy instead of being trained again), the
rest go to the executor and are recorded one by one as they finish. When all B are in, the agent learns from
them and its state is checkpointed in the same transaction that marks the iteration done. B counts sampled
blocks, cached ones included; failed candidates are rewarded ``failed_reward``.

Resume restores the agent after its last finished iteration and samples the next one again from the restored
random state, which gives the same blocks: those already stored are reused, the rest run. A resumed synchronous
search writes exactly the history of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from blockqnn.errors import StoreError
from blockqnn.store import Store
from blockqnn.tracking import Progress


# ---- the loop -------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Search:
    """The state of one running search, shared by both modes: recording, counting, progress. ``run`` is the loop."""

    cfg: DictConfig
    agent: Any
    space: Any
    store: Store
    executor: Any
    tracker: Any
    progress: Progress
    evaluate: Callable[[str, DictConfig], Any]  # blockqnn.evaluate.evaluate_candidate, or a stand-in in tests
    seen: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # hash -> first evaluation
    counts: dict[str, int] = dataclasses.field(default_factory=lambda: defaultdict(int))
    best: dict[str, Any] | None = None
    busy: float = 0.0  # seconds of training this session: the workers' busy time
    started: float = dataclasses.field(default_factory=time.monotonic)
    capacity: int = 1  # candidates the executor runs at once, read when the loop starts

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
        self._count(row)
        self.tracker.log_candidate(row, self.counts["done"], self.best, self.utilization)
        self._show_progress(new=1)

    def _count(self, row: dict[str, Any]) -> None:
        self.counts["done"] += 1
        self.counts["cached"] += row["cached"]
        self.counts["failed"] += row["status"] != "ok"
        if not row["cached"] and row["status"] == "ok":  # a failure may be transient (OOM, lost worker): retry it
            self.seen.setdefault(row["hash"], row)
        if row["status"] == "ok" and (self.best is None or row["reward"] > self.best["reward"]):
            self.best = row

    def _reward(self, row: dict[str, Any]) -> float:
        return row["reward"] if row["status"] == "ok" else float(self.cfg.failed_reward)

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
        )


def cached_copy(first: dict[str, Any], sampled: dict[str, Any]) -> dict[str, Any]:
    """A block sampled again (``sampled``: its own row) recorded with the result of its first evaluation."""
    now = time.time()
    own = {k: sampled.get(k) for k in ("iteration", "position", "arch", "epsilon", "dispatched_at", "sampled_event")}
    return first | own | dict(cached=1, wall_time=0.0, started_at=now, finished_at=now, incorporated_event=None)


class SyncSearch(Search):
    """Iterations of B blocks: sample B, evaluate them, learn from all B at once (``search.mode=sync``)."""

    def loop(self) -> None:
        while not self.agent.done:
            self.iteration()

    def iteration(self) -> None:
        it, epsilon = self.agent.iteration, self.agent.epsilon
        trajectories = self.agent.sample()
        archs = [self.space.decode(t) for t in trajectories]
        hashes = [self.space.canonical_hash(a) for a in archs]
        rows = self._stored(it, archs)
        todo, repeats = self._new_blocks(it, epsilon, archs, hashes, rows)
        for pos, result in self.executor.map(self.evaluate, todo, self.cfg):
            row = dict(iteration=it, position=pos, arch=archs[pos], hash=hashes[pos], epsilon=epsilon, cached=0)
            rows[pos] = self._record(row | dataclasses.asdict(result))
            for other in repeats.pop(hashes[pos]):
                rows[other] = self._record(cached_copy(rows[pos], dict(iteration=it, position=other,
                                                                        arch=archs[other], epsilon=epsilon)))
        self.agent.update(trajectories, [self._reward(rows[pos]) for pos in range(len(archs))])
        self.store.checkpoint(it, self.agent.state_dict())
        self.tracker.end_iteration(it, self.store)

    def _new_blocks(self, it: int, epsilon: float, archs: list[str], hashes: list[str], rows: dict[int, dict]
                    ) -> tuple[list[tuple[int, str]], dict[str, list[int]]]:
        """Record blocks evaluated before as cached copies; return the ``(position, arch)`` to evaluate and, per
        hash, the later positions of the same block in this batch (recorded as copies once it is evaluated)."""
        todo, repeats = [], {}
        for pos, (arch, h) in enumerate(zip(archs, hashes)):
            if pos in rows:
                continue
            if h in self.seen:
                rows[pos] = self._record(cached_copy(self.seen[h], dict(iteration=it, position=pos, arch=arch,
                                                                         epsilon=epsilon)))
            elif h in repeats:
                repeats[h].append(pos)
            else:
                repeats[h] = []
                todo.append((pos, arch))
        return todo, repeats

    def _stored(self, iteration: int, archs: list[str]) -> dict[int, dict[str, Any]]:
        """This iteration's candidates already in the history (a resumed iteration), checked against the sample."""
        rows = {row["position"]: row for row in self.store.candidates(iteration)}
        for pos, row in rows.items():
            if pos >= len(archs) or row["arch"] != archs[pos]:
                raise StoreError(f"the history of iteration {iteration} does not match the agent's sample at "
                                 f"position {pos}: the run folder was written by a different search")
        return rows

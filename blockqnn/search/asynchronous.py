"""The asynchronous search loop (``search.mode=async``): every worker busy all the time.

The loop keeps the executor's capacity (plus ``search.prefetch``) candidates in flight. The moment one finishes,
its result is incorporated into the agent (``StreamAgent.incorporate``) and a new block is sampled
(``StreamAgent.sample_one``) at the epsilon of the blocks sampled so far, so no worker waits for the slowest
candidate of a batch. Candidates are keyed ``(iteration, position) = divmod(sampled index, B)`` in the history.

Dedupe stays exact: a block already evaluated is recorded as a cached copy at once; a block sampled while the same
block (canonical hash) is in flight waits for that result and is then recorded as a cached copy of it.

Crash safety, by an event log. Everything that changes the agent is an *event*, numbered in the order it happened:
sampling a block (``sampled_event`` of its row) and incorporating a result (``incorporated_event``). Each event is
written in the transaction that records its row: a sampled block is in the history as ``running`` (with its
epsilon and dispatch time) before it reaches a worker, and a result and its incorporation are one write. Every
``2 x B`` events the agent's state is checkpointed in the same transaction. The agent is deterministic given its
state (its randomness comes from its own generator), so the checkpoint plus the events recorded after it give the
agent's state at the last write exactly: a resume restores the checkpoint, replays those events (re-sampling must
give the recorded blocks, else the folder belongs to another search), then re-dispatches the rows still
``running``. Nothing finished is lost or trained again; a block sampled but not yet written is sampled again, and
the same, from the restored generator. Checkpointing the full state at every event would cost the loop a JSON
dump of the Q-table and memory per candidate; the log costs a few integers.

The search is not bit-identical with an uninterrupted one: which candidate finishes first depends on timing.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from blockqnn.errors import StoreError
from blockqnn.search.loop import Search, cached_copy
from blockqnn.store import RUNNING

Flight = tuple[dict[str, Any], list]  # a sampled block's row and its trajectory


@dataclasses.dataclass(kw_only=True)
class AsyncSearch(Search):
    """See the module docstring."""

    prefetch: int = 0
    event: int = 0  # the last event number written
    checkpointed: int = 0  # the event number of the last checkpoint
    flying: dict[str, Flight] = dataclasses.field(default_factory=dict)  # hash -> the block the executor has
    waiting: dict[str, list[Flight]] = dataclasses.field(default_factory=dict)  # hash -> repeats waiting for it

    def loop(self) -> None:
        self._restore()
        target = self.capacity + self.prefetch
        while True:
            while not self.agent.done and self.executor.pending < target:
                self._dispatch()
            if not self.executor.pending:
                break
            key, result = self.executor.next_finished()
            self._finish(key, result)
        self.store.checkpoint(self.event, self.agent.state_dict())
        self.tracker.end_iteration(self.agent.num_iterations - 1, self.store)

    # ---- events -----------------------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Sample one block; record it running and send it to a worker, or wait for its twin, or reuse a result."""
        seq, epsilon = self.agent.sampled, self.agent.epsilon
        trajectory = self.agent.sample_one()
        arch = self.space.decode(trajectory)
        row = dict(iteration=seq // self.agent.batch_size, position=seq % self.agent.batch_size, arch=arch,
                   hash=self.space.canonical_hash(arch), epsilon=epsilon, status=RUNNING, cached=0,
                   dispatched_at=time.time(), sampled_event=self._next_event())
        self._place(row, trajectory)

    def _place(self, row: dict[str, Any], trajectory: list) -> None:
        h = row["hash"]
        if h in self.seen:
            self._commit([self._incorporated(cached_copy(self.seen[h], row), trajectory)])
        elif h in self.flying:
            row["cached"] = 1
            self.waiting[h].append((row, trajectory))
            self._commit([row])
        else:
            self.flying[h], self.waiting[h] = (row, trajectory), []
            self._commit([row])
            self.executor.submit(h, self.job(row["arch"], h, self.cutoffs()))

    def _finish(self, h: str, result: Any) -> None:
        """A result: its row and every repeat waiting for it, each incorporated, in one write."""
        row, trajectory = self.flying.pop(h)
        row = self._finished(row | dataclasses.asdict(result))
        rows = [self._incorporated(row, trajectory)]
        rows += [self._incorporated(cached_copy(row, repeat), t) for repeat, t in self.waiting.pop(h)]
        self._commit(rows)

    def _incorporated(self, row: dict[str, Any], trajectory: list) -> dict[str, Any]:
        self.agent.incorporate(trajectory, self._reward(row))
        row["incorporated_event"] = self._next_event()
        return row

    def _next_event(self) -> int:
        self.event += 1
        return self.event

    def _commit(self, rows: list[dict[str, Any]]) -> None:
        """Write ``rows`` (and a checkpoint every ``2 x B`` events) in one transaction, then report them."""
        checkpoint = None
        if self.event - self.checkpointed >= 2 * self.agent.batch_size:
            checkpoint, self.checkpointed = (self.event, self.agent.state_dict()), self.event
        iteration = self.agent.iteration
        self.store.write(rows, checkpoint)
        for row in rows:
            if row["status"] != RUNNING:
                self._announce(row)
        if checkpoint is not None and iteration > 0:
            self.tracker.end_iteration(iteration - 1, self.store)

    # ---- resuming ---------------------------------------------------------------------------------------------
    def _restore(self) -> None:
        """Replay the events written after the last checkpoint, then send the running blocks out again."""
        restored = self.store.latest_agent_state()
        self.event = self.checkpointed = 0 if restored is None else restored[0]
        running = self.store.running()
        rows = self.store.candidates() + running
        trajectories = self._replay(rows)
        for row in running:
            trajectory = trajectories.get(row["sampled_event"]) or self.space.encode(row["arch"])
            row["cached"] = 0
            self._place(row, trajectory)

    def _replay(self, rows: list[dict[str, Any]]) -> dict[int, list]:
        """Apply the events after the checkpoint in their order; the trajectories re-sampled, by sampled event."""
        events = sorted(((r[column], kind, r) for r in rows
                         for kind, column in enumerate(("sampled_event", "incorporated_event"))
                         if (r[column] or 0) > self.event), key=lambda e: e[0])
        if [e[0] for e in events] != list(range(self.event + 1, self.event + 1 + len(events))):
            raise StoreError(f"{self.store.path}: the search's events after the checkpoint are not consecutive")
        trajectories = {}
        for number, incorporate, row in events:
            if incorporate:
                trajectory = trajectories.get(row["sampled_event"]) or self.space.encode(row["arch"])
                self.agent.incorporate(trajectory, self._reward(row))
            else:
                trajectory = self.agent.sample_one()
                if self.space.decode(trajectory) != row["arch"]:
                    raise StoreError(f"the history's block {row['arch']} (event {number}) is not the agent's sample: "
                                     "the run folder was written by a different search")
                trajectories[number] = trajectory
            self.event = number
        return trajectories

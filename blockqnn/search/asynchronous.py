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
from collections.abc import Iterator
from typing import Any

from blockqnn.agents import StreamAgent
from blockqnn.candidate import Candidate, Status
from blockqnn.errors import StoreError
from blockqnn.search.loop import Search, learnt_reward
from blockqnn.spaces import Action, SearchSpace

Flight = tuple[Candidate, list[Action]]  # a sampled block and its trajectory


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
        iteration, position = divmod(self.agent.sampled, self.agent.batch_size)
        epsilon = self.agent.epsilon
        trajectory = self.agent.sample_one()
        candidate = self.sampled(trajectory, iteration, position, epsilon, dispatched_at=time.time(),
                                 sampled_event=self._next_event())
        self._place(candidate, trajectory)

    def _place(self, candidate: Candidate, trajectory: list[Action]) -> None:
        block_hash = candidate.hash
        if block_hash in self.seen:
            self._commit([self._incorporated(candidate.copy_of(self.seen[block_hash]), trajectory)])
            return
        candidate.cached = block_hash in self.flying  # a twin: recorded running until the block in flight finishes
        self._commit([candidate])
        if candidate.cached:
            self.waiting[block_hash].append((candidate, trajectory))
        else:
            self.flying[block_hash], self.waiting[block_hash] = (candidate, trajectory), []
            self.executor.submit(block_hash, self.job(candidate, self.cutoffs()))

    def _finish(self, block_hash: str, result: Any) -> None:
        """A result: its candidate and every twin waiting for it, each incorporated, in one write."""
        candidate, trajectory = self.flying.pop(block_hash)
        first = self._incorporated(self._trained(candidate, result), trajectory)
        twins = [self._incorporated(twin.copy_of(first), t) for twin, t in self.waiting.pop(block_hash)]
        self._commit([first, *twins])

    def _incorporated(self, candidate: Candidate, trajectory: list[Action]) -> Candidate:
        self.agent.incorporate(trajectory, self._reward(candidate))
        candidate.incorporated_event = self._next_event()
        return candidate

    def _next_event(self) -> int:
        self.event += 1
        return self.event

    def _commit(self, candidates: list[Candidate]) -> None:
        """Write ``candidates`` (and a checkpoint every ``2 x B`` events) in one transaction, then report them."""
        checkpoint = None
        if self.event - self.checkpointed >= 2 * self.agent.batch_size:
            checkpoint, self.checkpointed = (self.event, self.agent.state_dict()), self.event
        iteration = self.agent.iteration
        self.store.write(candidates, checkpoint)
        for candidate in candidates:
            if candidate.status != Status.RUNNING:
                self._announce(candidate)
        if checkpoint is not None and iteration > 0:
            self.tracker.end_iteration(iteration - 1, self.store)

    # ---- resuming ---------------------------------------------------------------------------------------------
    def _restore(self) -> None:
        """Replay the events written after the last checkpoint, then send the running blocks out again."""
        restored = self.store.latest_agent_state()
        self.event = self.checkpointed = 0 if restored is None else restored[0]
        running = self.store.dispatched()
        trajectories = self._replay(self.store.finished() + running)
        for candidate in running:
            self._place(candidate, trajectories.get(candidate.sampled_event) or self.space.encode(candidate.arch))

    def _replay(self, candidates: list[Candidate]) -> dict[int, list[Action]]:
        """Apply the events after the checkpoint in their order; the trajectories re-sampled, by sampled event."""
        trajectories = {}
        try:
            for number, candidate, trajectory in replay(self.agent, self.space, candidates, self.event,
                                                        self.failed_reward):
                trajectories[candidate.sampled_event] = trajectory
                self.event = number
        except StoreError as e:
            raise StoreError(f"{self.store.path}: {e}") from None
        return trajectories


def replay(agent: StreamAgent, space: SearchSpace, candidates: list[Candidate], after: int,
           failed_reward: float) -> Iterator[tuple[int, Candidate, list[Action]]]:
    """The events of ``candidates`` numbered after ``after`` applied to ``agent`` in their order, each yielded (its
    number, candidate and trajectory) once applied: a sampled block sampled again, and checked against the stored
    one; a result learnt (``learnt_reward``). Resuming relies on it; so does charging an agent its own time
    (experiments/claim_agents_real_images.py times each step)."""
    events = sorted(((number, incorporate, c) for c in candidates
                     for incorporate, number in enumerate((c.sampled_event, c.incorporated_event))
                     if (number or 0) > after), key=lambda e: e[0])
    if [e[0] for e in events] != list(range(after + 1, after + 1 + len(events))):
        raise StoreError("the search's events after the checkpoint are not consecutive")
    sampled = {}
    for number, incorporate, candidate in events:
        if incorporate:
            trajectory = sampled.get(candidate.sampled_event) or space.encode(candidate.arch)
            agent.incorporate(trajectory, learnt_reward(candidate, failed_reward))
        else:
            trajectory = sampled[number] = agent.sample_one()
            if space.decode(trajectory) != candidate.arch:
                raise StoreError(f"the history's block {candidate.arch} (event {number}) is not the agent's "
                                 "sample: the run folder was written by a different search")
        yield number, candidate, trajectory

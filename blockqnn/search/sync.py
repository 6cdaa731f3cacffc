"""The synchronous search loop (``search.mode=sync``): iterations of B blocks.

Each iteration the agent samples B blocks; those not cached go to the executor and are recorded one by one as they
finish. When all B are in, the agent learns from them and its state is checkpointed in the same transaction that
marks the iteration done.

Resume restores the agent after its last finished iteration and samples the next one again from the restored
random state, which gives the same blocks: those already stored are reused, the rest run. A resumed synchronous
search writes exactly the history of an uninterrupted one.
"""

from __future__ import annotations

from blockqnn.candidate import Candidate
from blockqnn.errors import StoreError
from blockqnn.search.loop import Search


class SyncSearch(Search):
    """Iterations of B blocks: sample B, evaluate them, learn from all B at once (``search.mode=sync``)."""

    def loop(self) -> None:
        while not self.agent.done:
            self.iteration()

    def iteration(self) -> None:
        it, epsilon = self.agent.iteration, self.agent.epsilon
        trajectories = self.agent.sample()
        candidates = [self.sampled(t, it, position, epsilon) for position, t in enumerate(trajectories)]
        done = self._stored(it, candidates)
        todo, repeats = self._new_blocks(candidates, done)
        cutoffs = self.cutoffs(it)
        for position, result in self.executor.map([(pos, self.job(candidates[pos], cutoffs)) for pos in todo]):
            first = done[position] = self._record(self._trained(candidates[position], result))
            for other in repeats.pop(first.hash):
                done[other] = self._record(candidates[other].copy_of(first))
        self.agent.update(trajectories, [self._reward(done[position]) for position in range(len(candidates))])
        self.store.checkpoint(it, self.agent.state_dict())
        self.tracker.end_iteration(it, self.store)

    def _new_blocks(self, candidates: list[Candidate], done: dict[int, Candidate]
                    ) -> tuple[list[int], dict[str, list[int]]]:
        """Record blocks evaluated before as cached copies (into ``done``); return the positions to evaluate and,
        per hash, the later positions of the same block in this batch (recorded as copies once it is evaluated)."""
        todo, repeats = [], {}
        for candidate in candidates:
            position, block_hash = candidate.position, candidate.hash
            if position in done:
                continue
            if block_hash in self.seen:
                done[position] = self._record(candidate.copy_of(self.seen[block_hash]))
            elif block_hash in repeats:
                repeats[block_hash].append(position)
            else:
                repeats[block_hash] = []
                todo.append(position)
        return todo, repeats

    def _stored(self, iteration: int, candidates: list[Candidate]) -> dict[int, Candidate]:
        """This iteration's candidates already in the history (a resumed iteration), checked against the sample."""
        stored = {candidate.position: candidate for candidate in self.store.finished(iteration)}
        for position, candidate in stored.items():
            if position >= len(candidates) or candidate.arch != candidates[position].arch:
                raise StoreError(f"the history of iteration {iteration} does not match the agent's sample at "
                                 f"position {position}: the run folder was written by a different search")
        return stored

"""The synchronous search loop (``search.mode=sync``): iterations of B blocks.

Each iteration the agent samples B blocks; those not cached go to the executor and are recorded one by one as they
finish. When all B are in, the agent learns from them and its state is checkpointed in the same transaction that
marks the iteration done.

Resume restores the agent after its last finished iteration and samples the next one again from the restored
random state, which gives the same blocks: those already stored are reused, the rest run. A resumed synchronous
search writes exactly the history of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from blockqnn.errors import StoreError
from blockqnn.search.loop import Search, cached_copy


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
        cutoffs = self.cutoffs(it)
        jobs = [(pos, self.job(archs[pos], hashes[pos], cutoffs)) for pos in todo]
        for pos, result in self.executor.map(jobs):
            row = dict(iteration=it, position=pos, arch=archs[pos], hash=hashes[pos], epsilon=epsilon, cached=0)
            rows[pos] = self._record(row | dataclasses.asdict(result))
            for other in repeats.pop(hashes[pos]):
                rows[other] = self._record(cached_copy(rows[pos], dict(iteration=it, position=other,
                                                                        arch=archs[other], epsilon=epsilon)))
        self.agent.update(trajectories, [self._reward(rows[pos]) for pos in range(len(archs))])
        self.store.checkpoint(it, self.agent.state_dict())
        self.tracker.end_iteration(it, self.store)

    def _new_blocks(self, it: int, epsilon: float, archs: list[str], hashes: list[str], rows: dict[int, dict]
                    ) -> tuple[list[int], dict[str, list[int]]]:
        """Record blocks evaluated before as cached copies; return the positions to evaluate and, per
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
                todo.append(pos)
        return todo, repeats

    def _stored(self, iteration: int, archs: list[str]) -> dict[int, dict[str, Any]]:
        """This iteration's candidates already in the history (a resumed iteration), checked against the sample."""
        rows = {row["position"]: row for row in self.store.candidates(iteration)}
        for pos, row in rows.items():
            if pos >= len(archs) or row["arch"] != archs[pos]:
                raise StoreError(f"the history of iteration {iteration} does not match the agent's sample at "
                                 f"position {pos}: the run folder was written by a different search")
        return rows

"""Local search, as NASLib implements it (White et al. 2020, *Local search is state of the art for NAS
benchmarks*): at a few hundred queries the simplest exploiter of the incumbent, and the baseline to beat there.

The walk starts from the best of ``num_init`` random architectures (the space's exploration distribution, what
random search samples). It evaluates the incumbent's neighbours (``space.neighbours``: every architecture one
legal change away) in a random order; once they are all drawn it moves to the best architecture of the walk if
that one beats the incumbent, and otherwise, at a local optimum, restarts from one random architecture, whose
neighbours come next. With ``skip_known`` a neighbour already sampled (the same canonical hash) is not queried
again: its known reward counts for the walk as if it were (NASLib queries it again; a repeat costs no training
here, but it counts as a query).

Batches and asynchronous search: the walk needs results to move, so while its neighbours are all drawn and some
of their results are still out, the move is made as soon as a better architecture is known, and otherwise the
free slots are filled with random architectures, which join the walk like the first ``num_init``. With one
architecture at a time (B = 1) this is NASLib's algorithm exactly.

The agent speaks both of the search loop's protocols (``blockqnn.agents.base``), like ``RegularizedEvolution``;
``budget`` sizes the search the same way. Its state (the walk, the neighbours left, the architectures sampled,
the counters and the random generator) is plain JSON data and restores to continue identically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from blockqnn.agents.base import STATE_FORMAT, BudgetSettings, Iterations, budget_sizes, checked_reward
from blockqnn.agents.state import check_state, checked_rng_state, memory_entries
from blockqnn.errors import AgentStateError
from blockqnn.schema import POSITIVE, declared, member, setting
from blockqnn.spaces import Action, SearchSpace, checked_trajectory, explore

_STATE_TYPES = {"iteration": int, "sampled": int, "num_iterations": int, "rng": dict, "to_init": int,
                "pending": int, "walk": list, "queue": list, "known": dict}

Scored = tuple[str, float]  # an architecture's text and reward


@member
class LocalSearchSettings(BudgetSettings):
    """``agent=local`` (conf/agent/local.yaml), and ``LocalSearch``'s arguments."""

    num_init: int = setting(**POSITIVE)
    skip_known: bool = setting()


@declared("agent", LocalSearchSettings, member="local")
class LocalSearch(Iterations):
    """Local search over a ``SearchSpace`` (see the module docstring); defaults: conf/agent/local.yaml."""

    def __init__(
        self, space: SearchSpace, *, num_init: int, skip_known: bool, batch_size: int, budget: int | None,
        seed: int = 0,
    ) -> None:
        self.space, self.num_init, self.skip_known, self.batch_size = space, num_init, skip_known, batch_size
        self.sizes = budget_sizes(budget, batch_size)
        self.iteration = 0
        self.sampled = 0
        self.rng = np.random.default_rng(seed)
        self.to_init = num_init  # random architectures still to draw before the walk starts
        self.pending = 0  # architectures sampled whose result has not come back
        self.best: Scored | None = None  # the best result of the walk so far
        self.incumbent: Scored | None = None  # the architecture whose neighbours are being drawn
        self.queue: list[str] = []  # its neighbours still to draw, next first
        self.known: dict[str, float | None] = {}  # with skip_known: hash -> reward (None: out) of all sampled

    # ---- the loop's view --------------------------------------------------------------------------------------
    @property
    def epsilon(self) -> float:
        """1.0 when the next architecture is a random one (the first ``num_init``, a restart or a filler), 0.0
        when it is a neighbour of the incumbent. Stands where Q-learning's epsilon does in the history and the
        progress line."""
        if self.queue:
            return 0.0
        if self.to_init or not self._improved():
            return 1.0
        return 0.0 if self._neighbours(self.best[0])[0] else 1.0  # the move to come has a neighbour to query

    # ---- acting -----------------------------------------------------------------------------------------------
    def _draw(self) -> list[Action]:
        """The next neighbour of the incumbent, or a random architecture: one of the first ``num_init``, a restart
        (every neighbour's result in, none better), or a filler while results are out."""
        self._settle(early=True)
        if self.queue:
            actions = self.space.encode(self.queue.pop(0))
        else:
            if self.to_init:
                self.to_init -= 1
            elif not self.pending:  # a local optimum: a new walk from a random architecture
                self.best = self.incumbent = None
            actions = explore(self.space, self.rng)
        self.pending += 1
        if self.skip_known:
            self.known[self.space.canonical_hash(self.space.decode(actions))] = None
        self._settle()
        return actions

    def _settle(self, early: bool = False) -> None:
        """Drop queued neighbours sampled since; once the queue is empty, the random start drawn and every result
        back (or ``early``: a block is wanted now), move to the walk's best if it beats the incumbent, queueing
        its neighbours in a random order."""
        while self.queue and self._known(self.queue[0]):
            self.queue.pop(0)
        while not self.queue and not self.to_init and (early or not self.pending) and self._improved():
            self.incumbent = self.best
            texts, known = self._neighbours(self.best[0])
            self.queue = [texts[i] for i in self.rng.permutation(len(texts))]
            for result in known:
                self._compare(result)

    def _improved(self) -> bool:
        return self.best is not None and (self.incumbent is None or self.best[1] > self.incumbent[1])

    def _neighbours(self, text: str) -> tuple[list[str], list[Scored]]:
        """The neighbours of ``text`` to query, and (with ``skip_known``) those sampled before whose reward is
        known; the first of equal blocks (canonical hash) only."""
        texts = [self.space.decode(n) for n in self.space.neighbours(self.space.encode(text))]
        if not self.skip_known:
            return texts, []
        seen, new, known = set(), [], []
        for t in texts:
            h = self.space.canonical_hash(t)
            if h in self.known and self.known[h] is not None:
                known.append((t, self.known[h]))
            elif h not in self.known and h not in seen:
                new.append(t)
            seen.add(h)
        return new, known

    def _known(self, text: str) -> bool:
        return self.skip_known and self.space.canonical_hash(text) in self.known

    # ---- learning ---------------------------------------------------------------------------------------------
    def update(self, trajectories: Sequence[Sequence[Action]], rewards: Sequence[float]) -> None:
        """Learn from one iteration's results (as one at a time, in order) and move to the next iteration."""
        self._check_running(trajectories, rewards)
        results = [self._result(actions, reward) for actions, reward in zip(trajectories, rewards)]  # checks all
        for result in results:
            self._learn(result)
        self.iteration += 1

    def incorporate(self, trajectory: Sequence[Action], reward: float) -> None:
        """Learn from one finished architecture (asynchronous search)."""
        self._learn(self._result(trajectory, reward))

    def _result(self, actions: Sequence[Action], reward: float) -> Scored:
        reward = checked_reward(reward)
        return checked_trajectory(self.space, actions), reward

    def _learn(self, result: Scored) -> None:
        self.pending = max(0, self.pending - 1)
        if self.skip_known:
            self.known[self.space.canonical_hash(result[0])] = result[1]
        self._compare(result)
        self._settle()

    def _compare(self, result: Scored) -> None:
        """The walk's best becomes ``result`` if it beats it (the first among equals stays)."""
        if self.best is None or result[1] > self.best[1]:
            self.best = result

    # ---- persistence ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain JSON data: the walk (its best and incumbent as architecture text and reward, each or neither),
        the neighbours still to draw, the hashes sampled, the counters and the generator state."""
        return {
            "format": STATE_FORMAT,
            "iteration": self.iteration,
            "sampled": self.sampled,
            "num_iterations": self.num_iterations,
            "to_init": self.to_init,
            "pending": self.pending,
            "walk": [list(s) if s else None for s in (self.best, self.incumbent)],
            "queue": list(self.queue),
            "known": dict(self.known),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict`` saved with the same space and budget; any other state raises
        ``AgentStateError`` and leaves the agent as it was."""
        check_state(state, STATE_FORMAT, _STATE_TYPES, self.num_iterations)
        rng_state = checked_rng_state(state["rng"], self.rng)
        if not 0 <= state["to_init"] <= self.num_init or not 0 <= state["pending"] <= state["sampled"]:
            raise AgentStateError(f"saved agent state has to_init {state['to_init']} and pending "
                                  f"{state['pending']}: expected 0 - {self.num_init} and 0 - {state['sampled']}")
        if len(state["walk"]) != 2:
            raise AgentStateError("saved agent state has no [best, incumbent] walk")
        best, incumbent = (self._restored(s) for s in state["walk"])
        queue = [self._checked_text(text) for text in state["queue"]]
        known = {h: None if r is None else self._checked(checked_reward, r) for h, r in state["known"].items()}
        self.best, self.incumbent, self.queue, self.known = best, incumbent, queue, known
        self.to_init, self.pending, self.sampled, self.iteration = (
            state["to_init"], state["pending"], state["sampled"], state["iteration"])
        self.rng.bit_generator.state = rng_state

    def _restored(self, saved: Any) -> Scored | None:
        if saved is None:
            return None
        [(text, reward)] = memory_entries([saved], "walk architecture")
        return self._checked_text(text), self._checked(checked_reward, reward)

    def _checked_text(self, text: Any) -> str:
        return self._checked(lambda t: checked_trajectory(self.space, self.space.encode(t)), text)

    @staticmethod
    def _checked(check: Any, value: Any) -> Any:
        try:
            return check(value)
        except (TypeError, ValueError, AttributeError) as e:
            raise AgentStateError(f"saved agent state has {value!r:.80} in its walk, queue or known rewards, which "
                                  f"this agent cannot restore: {e}") from None

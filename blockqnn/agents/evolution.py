"""Regularized (aging) evolution, Real et al. 2019: the strongest simple baseline of the NAS-Bench-201 paper.

A population of P architectures is filled with draws from the space's exploration distribution (what random
search samples). From then on each child is the best of a tournament of S distinct members drawn uniformly from
the population (as NAS-Bench-201's implementation draws them), changed by one mutation (``space.mutate``: one edge
op in the table space, one legal change of one layer in the NSC space); the child joins the population and the
oldest member dies.

The agent speaks both of the search loop's protocols (``blockqnn.agents.base``), like ``QLearningAgent``.
Synchronous: each iteration ``sample`` gives B architectures, the loop scores them (blocks already evaluated are
looked up, not retrained), ``update`` incorporates them; the children of one iteration all descend from the
population as it stood when the iteration began. Asynchronous: ``sample_one`` gives the next architecture the
moment a worker frees up and ``incorporate`` adds each result as it arrives, which is Real et al.'s own
asynchronous form; B = 1 is the sequential algorithm in both. The first P architectures sampled are random.
``budget`` sizes the search as for Q-learning; without one it samples the paper's 178 iterations of B. The state
(population, counters, random generator) is plain JSON data and restores to continue identically.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from blockqnn.agents.base import STATE_FORMAT, BudgetSettings, Iterations, budget_sizes, checked_reward
from blockqnn.agents.state import check_state, checked_rng_state, memory_entries
from blockqnn.errors import AgentStateError
from blockqnn.schema import POSITIVE, declared, member, setting
from blockqnn.spaces import Action, SearchSpace, checked_trajectory, explore

_STATE_TYPES = {"iteration": int, "sampled": int, "num_iterations": int, "population": list, "rng": dict}


@member
class EvolutionSettings(BudgetSettings):
    """``agent=evolution`` (conf/agent/evolution.yaml), and ``RegularizedEvolution``'s arguments."""

    population_size: int = setting(**POSITIVE)
    tournament_size: int = setting(**POSITIVE)

    @staticmethod
    def rule(values: Mapping[str, Any]) -> str | None:
        if values.get("tournament_size", 1) > values.get("population_size", 1):
            return (f"tournament_size={values['tournament_size']}: expected at most population_size "
                    f"({values['population_size']})")
        return None


@declared("agent", EvolutionSettings, member="evolution")
class RegularizedEvolution(Iterations):
    """Aging evolution over a ``SearchSpace`` (see the module docstring); defaults: conf/agent/evolution.yaml."""

    def __init__(
        self, space: SearchSpace, *, population_size: int, tournament_size: int, batch_size: int, budget: int | None,
        seed: int = 0,
    ) -> None:
        self.space = space
        self.population_size, self.tournament_size, self.batch_size = population_size, tournament_size, batch_size
        self.sizes = budget_sizes(budget, batch_size)
        self._ends = np.cumsum(self.sizes)  # blocks sampled by the end of each iteration
        self.iteration = 0
        self.sampled = 0
        self.rng = np.random.default_rng(seed)
        self.population: deque[tuple[str, list[Action], float]] = deque()  # oldest first

    # ---- the loop's view --------------------------------------------------------------------------------------
    @property
    def epsilon(self) -> float:
        """The share of random architectures (the population still filling) among those left to sample in this
        iteration: 1.0 at first, then 0.0. Stands where Q-learning's epsilon does in the history and the progress
        line."""
        left = int(self._ends[min(self.iteration, self.num_iterations - 1)]) - self.sampled
        return min(left, max(0, self.population_size - self.sampled)) / left if left > 0 else 0.0

    # ---- acting -----------------------------------------------------------------------------------------------
    def _draw(self) -> list[Action]:
        """Random among the first P architectures of the search (or while none has come back), else a mutated
        tournament winner."""
        if self.sampled < self.population_size or not self.population:
            return explore(self.space, self.rng)
        return self._child()

    def _child(self) -> list[Action]:
        size = min(self.tournament_size, len(self.population))  # B > 1: the population may not be full yet
        picks = self.rng.choice(len(self.population), size=size, replace=False)
        winner = max(picks, key=lambda i: self.population[i][2])  # the first drawn among equals
        return self.space.mutate(self.population[winner][1], self.rng)

    # ---- learning ---------------------------------------------------------------------------------------------
    def update(self, trajectories: Sequence[Sequence[Action]], rewards: Sequence[float]) -> None:
        """Add the scored architectures to the population (the oldest die) and move to the next iteration."""
        self._check_running(trajectories, rewards)
        members = [self._member(actions, reward) for actions, reward in zip(trajectories, rewards)]  # checks all
        for child in members:
            self._join(child)
        self.iteration += 1

    def incorporate(self, trajectory: Sequence[Action], reward: float) -> None:
        """Add one finished architecture to the population (asynchronous search); the oldest dies."""
        self._join(self._member(trajectory, reward))

    def _member(self, actions: Sequence[Action], reward: float) -> tuple[str, list[Action], float]:
        reward = checked_reward(reward)
        return checked_trajectory(self.space, actions), list(actions), reward

    def _join(self, member: tuple[str, list[Action], float]) -> None:
        self.population.append(member)
        if len(self.population) > self.population_size:
            self.population.popleft()

    # ---- persistence ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain JSON data: the population as architecture text and reward (oldest first), the counters and the
        generator state."""
        return {
            "format": STATE_FORMAT,
            "iteration": self.iteration,
            "sampled": self.sampled,
            "num_iterations": self.num_iterations,
            "population": [[text, reward] for text, _, reward in self.population],
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict`` saved with the same space and budget; any other state raises
        ``AgentStateError`` and leaves the agent as it was."""
        check_state(state, STATE_FORMAT, _STATE_TYPES, self.num_iterations)
        rng_state = checked_rng_state(state["rng"], self.rng)
        if len(state["population"]) > self.population_size:
            raise AgentStateError(f"saved agent state has {len(state['population'])} members, more than the "
                                  f"population size {self.population_size}")
        members = memory_entries(state["population"], "population member")
        population = deque(self._restored(text, reward) for text, reward in members)
        self.population, self.sampled, self.iteration = population, state["sampled"], state["iteration"]
        self.rng.bit_generator.state = rng_state

    def _restored(self, text: str, reward: Any) -> tuple[str, list[Action], float]:
        try:
            return self._member(self.space.encode(text), reward)
        except (TypeError, ValueError) as e:
            raise AgentStateError(f"saved agent state has {text} in its population, which this agent cannot "
                                  f"restore: {e}") from None

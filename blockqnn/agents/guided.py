"""Predictor-guided evolution in the manner of BANANAS (White, Neiswanger, Savani, AAAI 2021; NASLib's ``Bananas``
with mutation candidates): spend real training only on the mutation a reward model rates best.

The first ``num_init`` architectures are random (the space's exploration distribution). From then on each one is
chosen among ``num_candidates`` mutations (``space.mutate``) of the ``num_parents`` best architectures scored so far,
leaving out those already sampled: the one with the highest predicted reward plus ``kappa`` times the model's
uncertainty (an upper confidence bound). The model is the project's reward model (``blockqnn.models.RewardModel``,
a random forest on the block's encoding, its trees' spread the uncertainty), refitted on every result so far once
they have grown by ``refit_growth`` since the last fit. BANANAS itself fits an ensemble of MLPs on path encodings
and picks by Thompson sampling; the forest is what ranked unseen blocks best here (docs/method.md).

The agent speaks both of the search loop's protocols (``blockqnn.agents.base``), like ``RegularizedEvolution``:
with B > 1 or asynchronously each architecture is chosen with the results in hand, the ones still out left out of
the candidates. Its state (every result in order, the hashes sampled, how many results the last fit saw, the
counters and the random generator) is plain JSON data; a restored agent refits its model on the same results and
continues identically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from blockqnn.agents.base import STATE_FORMAT, BudgetSettings, Iterations, budget_sizes, checked_reward
from blockqnn.agents.state import check_state, checked_rng_state, memory_entries
from blockqnn.errors import AgentStateError
from blockqnn.models import RewardModel, RewardModelSettings
from blockqnn.schema import POSITIVE, declared, member, setting
from blockqnn.spaces import Action, SearchSpace, checked_trajectory, explore

_STATE_TYPES = {"iteration": int, "sampled": int, "num_iterations": int, "rng": dict, "results": list,
                "known": list, "fitted_on": int}


@member
class GuidedEvolutionSettings(BudgetSettings, RewardModelSettings):
    """``agent=guided_evolution`` (conf/agent/guided_evolution.yaml), and ``GuidedEvolution``'s arguments."""

    num_init: int = setting(**POSITIVE)
    num_parents: int = setting(**POSITIVE)
    num_candidates: int = setting(**POSITIVE)


@declared("agent", GuidedEvolutionSettings, member="guided_evolution")
class GuidedEvolution(Iterations):
    """Predictor-guided evolution over a ``SearchSpace`` (the module docstring); defaults: its yaml's."""

    def __init__(
        self,
        space: SearchSpace,
        *,
        num_init: int,
        num_parents: int,
        num_candidates: int,
        kappa: float,
        refit_growth: float,
        trees: int,
        max_features: float,
        batch_size: int,
        budget: int | None,
        seed: int = 0,
    ) -> None:
        self.space, self.num_init, self.batch_size = space, num_init, batch_size
        self.num_parents, self.num_candidates, self.kappa, self.refit_growth = (
            num_parents, num_candidates, kappa, refit_growth)
        self.sizes = budget_sizes(budget, batch_size)
        self.iteration = 0
        self.sampled = 0
        self.rng = np.random.default_rng(seed)
        self.model = RewardModel(trees, max_features)  # its own fixed seed: a restored agent refits the same
        self.results: list[tuple[str, float]] = []  # every result, in the order it came back
        self.known: set[str] = set()  # canonical hashes of every architecture sampled

    # ---- the loop's view --------------------------------------------------------------------------------------
    @property
    def epsilon(self) -> float:
        """1.0 while architectures are random (the first ``num_init``, or no fitted model yet), then 0.0."""
        return 1.0 if self.sampled < self.num_init or not self.model.ready else 0.0

    # ---- acting -----------------------------------------------------------------------------------------------
    def _draw(self) -> list[Action]:
        """The candidate rated best, or a random architecture: one of the first ``num_init``, one while no model
        is fitted, or (rarely, at epsilon 0.0) one when every candidate was sampled before."""
        candidates = self._candidates() if self.epsilon == 0.0 else []
        if candidates:
            score = self.model.upper_bound([self.space.decode(c) for c in candidates], self.kappa)
            actions = candidates[int(np.argmax(score))]  # the first among equals
        else:
            actions = explore(self.space, self.rng)
        self.known.add(self.space.canonical_hash(self.space.decode(actions)))
        return actions

    def _candidates(self) -> list[list[Action]]:
        """Mutations of the best results, each parent in turn, none sampled before and each once."""
        parents = [self.space.encode(text) for text, _ in
                   sorted(self.results, key=lambda r: -r[1])[:self.num_parents]]  # stable: the first among equals
        seen, out = set(self.known), []
        for i in range(self.num_candidates):
            child = self.space.mutate(parents[i % len(parents)], self.rng)
            h = self.space.canonical_hash(self.space.decode(child))
            if h not in seen:
                seen.add(h)
                out.append(child)
        return out

    # ---- learning ---------------------------------------------------------------------------------------------
    def update(self, trajectories: Sequence[Sequence[Action]], rewards: Sequence[float]) -> None:
        """Learn from one iteration's results and move to the next iteration."""
        self._check_running(trajectories, rewards)
        results = [self._result(actions, reward) for actions, reward in zip(trajectories, rewards)]  # checks all
        self.results.extend(results)
        self._refit()
        self.iteration += 1

    def incorporate(self, trajectory: Sequence[Action], reward: float) -> None:
        """Learn from one finished architecture (asynchronous search)."""
        self.results.append(self._result(trajectory, reward))
        self._refit()

    def _result(self, actions: Sequence[Action], reward: float) -> tuple[str, float]:
        reward = checked_reward(reward)
        return checked_trajectory(self.space, actions), reward

    def _refit(self) -> None:
        """Refit on every result once there are ``num_init`` and they have grown by ``refit_growth``."""
        if self.model.due(len(self.results), self.num_init, self.refit_growth):
            self._fit(len(self.results))

    def _fit(self, n: int) -> None:
        self.model.fit([text for text, _ in self.results[:n]], [reward for _, reward in self.results[:n]])

    # ---- persistence ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain JSON data: every result as architecture text and reward in order, the hashes sampled, how many
        results the model was fitted on, the counters and the generator state."""
        return {
            "format": STATE_FORMAT,
            "iteration": self.iteration,
            "sampled": self.sampled,
            "num_iterations": self.num_iterations,
            "results": [[text, reward] for text, reward in self.results],
            "known": sorted(self.known),
            "fitted_on": self.model.fitted_on,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict`` saved with the same space and budget (refitting the model on the results its
        last fit saw); any other state raises ``AgentStateError`` and leaves the agent as it was."""
        check_state(state, STATE_FORMAT, _STATE_TYPES, self.num_iterations)
        rng_state = checked_rng_state(state["rng"], self.rng)
        results = [self._restored(text, reward) for text, reward in memory_entries(state["results"], "result")]
        if not 0 <= state["fitted_on"] <= len(results) or not all(isinstance(h, str) for h in state["known"]):
            raise AgentStateError(f"saved agent state has a model fitted on {state['fitted_on']} of "
                                  f"{len(results)} results, or hashes that are not text")
        self.results, self.known = results, set(state["known"])
        self.sampled, self.iteration = state["sampled"], state["iteration"]
        self.rng.bit_generator.state = rng_state
        self.model = RewardModel(self.model.trees, self.model.max_features)
        if state["fitted_on"]:
            self._fit(state["fitted_on"])

    def _restored(self, text: str, reward: Any) -> tuple[str, float]:
        try:
            return self._result(self.space.encode(text), reward)
        except (TypeError, ValueError) as e:
            raise AgentStateError(f"saved agent state has {text!r:.80} among its results, which this agent cannot "
                                  f"restore: {e}") from None

"""Planning with a reward model [ours] (``agent.model``; docs/method.md#planning-with-a-reward-model).

A random forest (``blockqnn.models``) is fitted on the Q-learning agent's remembered blocks once ``warmup`` of them
are scored, and again each time the memory has grown by ``refit_growth`` since the last fit. With ``proposals``
K > 1 each trained block is the best of K epsilon-greedy proposals by predicted reward plus ``kappa`` times the
forest's spread (blocks neither scored nor already proposed first); with ``exploit``, with probability 1 - epsilon
it is instead the best by the same measure of the best scored block's unscored neighbours (one legal change away:
local search's moves, ordered by the model); with ``planning`` P > 0 every real result is followed by P simulated
trajectories (Dyna) whose *predicted* rewards update Q, never remembered nor replayed as real.

The model is a deterministic function of the memory, so a restored agent refits it from the saved memory: the
saved record keeps only how many blocks the fit saw, and the simulated blocks that reached a state no real block
did (their Q-values need a place when the Q-table is rebuilt).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from blockqnn.agents.state import model_entries
from blockqnn.models import RewardModel, RewardModelSettings
from blockqnn.schema import COUNT, POSITIVE, check, member, member_defaults, setting
from blockqnn.spaces import SearchSpace


@member
class ModelSettings(RewardModelSettings):
    """``agent.model``: the reward model and how the agent plans with it (``proposals`` 1 and ``planning`` 0: off)."""

    proposals: int = setting(**POSITIVE)
    exploit: bool = setting()
    planning: int = setting(**COUNT)
    warmup: int = setting(**POSITIVE)

    @property
    def active(self) -> bool:
        return self.proposals > 1 or self.exploit or self.planning > 0


def planner(space: SearchSpace, settings: Mapping[str, Any] | None) -> Planner | None:
    """The agent's planner for ``agent.model`` settings, or None when they leave planning off. The settings left
    out (all of them for ``None``) are conf/agent/qlearning.yaml's, where the command line gets them."""
    chosen = ModelSettings(**{**member_defaults("agent", "qlearning")["model"], **(settings or {})})
    check(ModelSettings, "agent.model", vars(chosen))
    return Planner(space, chosen) if chosen.active else None


class Planner:
    """One agent's reward model and what planning with it has to remember: the scored blocks (not proposed again
    while fresh ones exist), the states some trajectory reached, and the simulated blocks that reached new ones."""

    def __init__(self, space: SearchSpace, settings: ModelSettings) -> None:
        self.space, self.settings = space, settings
        self.model = RewardModel(settings.trees, settings.max_features)
        self.scored: set[str] = set()  # canonical hashes of the remembered blocks
        self.pending: set[str] = set()  # proposed by the model, not remembered yet (a sync iteration, or in flight)
        self.visited: set[Hashable] = set()  # states on a remembered or saved simulated trajectory
        self.planned: list[str] = []  # simulated blocks that reached a state no remembered block visits

    @property
    def proposes(self) -> bool:
        """Whether the model chooses the next block (a fitted model, and K > 1 or ``exploit``)."""
        return self.model.ready and (self.settings.proposals > 1 or self.settings.exploit)

    def best(self, texts: Sequence[str], fresh_only: bool = False) -> int | None:
        """Index of the block with the best predicted reward + kappa x spread among those neither scored nor
        pending when there are any, else among all (``fresh_only``: None); the chosen block becomes pending."""
        hashes = [self.space.canonical_hash(t) for t in texts]
        fresh = np.array([h not in self.scored and h not in self.pending for h in hashes])
        if fresh_only and not fresh.any():
            return None
        score = self.model.upper_bound(texts, self.settings.kappa)
        best = int(np.argmax(np.where(fresh, score, -np.inf) if fresh.any() else score))
        self.pending.add(hashes[best])
        return best

    def remembered(self, text: str, states: Iterable[Hashable]) -> None:
        """A real block joined the agent's memory."""
        block_hash = self.space.canonical_hash(text)
        self.scored.add(block_hash)
        self.pending.discard(block_hash)
        self.visited.update(states)

    def simulated(self, text: str, states: Iterable[Hashable]) -> None:
        """A simulated block updated Q: kept (as text) only when it reached a state nothing else did."""
        new = set(states) - self.visited
        if new:
            self.visited |= new
            self.planned.append(text)

    def replanned(self, text: str, states: Iterable[Hashable]) -> None:
        """A saved simulated block, its states rebuilt on restore."""
        self.visited.update(states)
        self.planned.append(text)

    def refit(self, texts: Sequence[str], rewards: Sequence[float]) -> None:
        """Fit on the remembered blocks when ``warmup`` and ``refit_growth`` say it is due."""
        if self.model.due(len(texts), self.settings.warmup, self.settings.refit_growth):
            self.model.fit(texts, rewards)

    def state_dict(self) -> dict[str, Any]:
        return {"fitted_on": self.model.fitted_on, "planned": list(self.planned)}

    def restore(self, saved: Any, texts: Sequence[str], rewards: Sequence[float]) -> list[str]:
        """Refit on the remembered blocks the saved fit saw; the simulated blocks whose states must be rebuilt.
        Called once the memory is restored (``remembered`` for each block)."""
        fitted_on, planned = model_entries(saved, len(texts))
        if fitted_on:
            self.model.fit(texts[:fitted_on], rewards[:fitted_on])
        return planned

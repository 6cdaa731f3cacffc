"""What the search loop asks of an agent, in its two modes (``search.mode``).

*Synchronous* (``BatchAgent``): each iteration the loop asks for B blocks, waits for all of them, and hands every
reward back at once. *Asynchronous* (``StreamAgent``): the loop asks for one block whenever a worker frees up and
hands each reward back the moment it arrives, in finishing order, while other blocks are still training. An agent
counts the blocks it has sampled, so the epsilon schedule (stages of ``i`` iterations = ``i x B`` blocks) and the
budget mean the same in both modes.

Both modes resume from ``state_dict``: the synchronous loop after each iteration; the asynchronous loop from its
last checkpoint plus the events recorded since (``blockqnn.search.asynchronous``), which requires ``sample_one`` and
``incorporate`` to be deterministic given the state (all randomness from the agent's own generator).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from blockqnn.schema import POSITIVE, member, setting
from blockqnn.spaces import Action


class ScheduledAgent(Protocol):
    """An epsilon schedule in iterations of ``batch_size`` blocks and a state that saves to plain JSON data."""

    batch_size: int
    iteration: int  # the iteration the next block belongs to (asynchronous: blocks sampled // B)

    @property
    def num_iterations(self) -> int: ...

    @property
    def total_samples(self) -> int: ...

    @property
    def done(self) -> bool:
        """Every block of the budget has been sampled."""

    @property
    def epsilon(self) -> float:
        """Epsilon of the next block sampled."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@runtime_checkable
class BatchAgent(ScheduledAgent, Protocol):
    def sample(self, n: int | None = None) -> list[list[Action]]:
        """One iteration's blocks (B unless ``n`` is given)."""

    def update(self, trajectories: Sequence[Sequence[Action]], rewards: Sequence[float]) -> None:
        """Learn from one iteration's scored blocks and move to the next iteration."""


@runtime_checkable
class StreamAgent(ScheduledAgent, Protocol):
    sampled: int  # blocks sampled so far

    def sample_one(self) -> list[Action]:
        """The next block, at the epsilon of the blocks sampled so far."""

    def incorporate(self, trajectory: Sequence[Action], reward: float) -> None:
        """Learn from one finished block (Q-learning: its update and a share of replay; REA: a population member)."""


# ---- what every agent shares: the paper's plan, iterations of B blocks, the state format ------------------------

# The paper's schedule as (epsilon, iterations): 178 iterations, 11,392 blocks at B = 64.
PAPER_STAGES: tuple[tuple[float, int], ...] = (
    (1.0, 95), (0.9, 7), (0.8, 7), (0.7, 7), (0.6, 10), (0.5, 10), (0.4, 10), (0.3, 10), (0.2, 10), (0.1, 12),
)
PAPER_ITERATIONS = sum(n for _, n in PAPER_STAGES)
STATE_FORMAT = 2


@member
class BudgetSettings:
    """What every agent's settings share (``agent.batch_size``, ``agent.budget``): a preset sets them once for
    whichever agent runs under it."""

    batch_size: int = setting(**POSITIVE)
    budget: int | None = setting(**POSITIVE)


def iteration_sizes(budget: int | None, batch_size: int, iterations: int) -> list[int]:
    """Blocks sampled per iteration: ``iterations`` of B, or, with a budget, B each and the remainder last."""
    if budget is None:
        return [batch_size] * iterations
    full, rest = divmod(int(budget), batch_size)
    return [batch_size] * full + ([rest] if rest else [])


def budget_sizes(budget: int | None, batch_size: int) -> list[int]:
    """Blocks sampled per iteration by an agent without a schedule of its own: the paper's 178 iterations of B, or
    the budget's."""
    return iteration_sizes(budget, batch_size, PAPER_ITERATIONS)


class Iterations:
    """What every agent tells the search loop about its plan: iterations of ``sizes`` blocks, ``iteration`` of
    them done (synchronous), ``sampled`` blocks drawn (either mode)."""

    sizes: list[int]
    iteration: int
    sampled: int
    batch_size: int

    @property
    def num_iterations(self) -> int:
        return len(self.sizes)

    @property
    def total_samples(self) -> int:
        """Blocks sampled over the whole search (the budget, when one is set)."""
        return sum(self.sizes)

    @property
    def done(self) -> bool:
        return self.iteration >= self.num_iterations

    # ---- acting: both modes draw one architecture at a time, so the two mean the same -------------------------
    def sample(self, n: int | None = None) -> list[list[Action]]:
        """``n`` (default: this iteration's size, B but for a budget's last iteration) architectures of the current
        iteration, each counted in ``sampled`` before the next is drawn."""
        self._check_running()
        batch = []
        for _ in range(self.sizes[self.iteration] if n is None else n):
            batch.append(self._draw())
            self.sampled += 1
        return batch

    def sample_one(self) -> list[Action]:
        """The next architecture (asynchronous search), at the point of the plan the blocks sampled so far reach."""
        self._check_running()
        architecture = self._draw()
        self._count_one()
        return architecture

    def _draw(self) -> list[Action]:
        """The agent's next architecture (``sampled`` counts those drawn before it)."""
        raise NotImplementedError

    def _count_one(self) -> None:
        """One more block sampled (asynchronous search): ``iteration`` is then the one the next block belongs to,
        past the last once the budget is drawn."""
        self.sampled += 1
        self.iteration = self.num_iterations if self.sampled >= self.total_samples else self.sampled // self.batch_size

    def _check_running(self, trajectories: Sequence | None = None, rewards: Sequence | None = None) -> None:
        """Refuse to act after the last iteration, and scores that do not match the trajectories."""
        if self.done:
            raise RuntimeError(f"the search is finished ({self.num_iterations} iterations)")
        if trajectories is not None and rewards is not None and len(trajectories) != len(rewards):
            raise ValueError(f"{len(trajectories)} trajectories but {len(rewards)} rewards")


def checked_reward(reward: float) -> float:
    reward = float(reward)
    if not math.isfinite(reward):
        raise ValueError(f"reward must be a finite number, got {reward} (give failed candidates a fixed reward)")
    return reward


"""What the search loop asks of an agent, in its two modes (``search.mode``).

*Synchronous* (``BatchAgent``): each iteration the loop asks for B blocks, waits for all of them, and hands every
reward back at once. *Asynchronous* (``StreamAgent``): the loop asks for one block whenever a worker frees up and
hands each reward back the moment it arrives, in finishing order, while other blocks are still training. An agent
counts the blocks it has sampled, so the epsilon schedule (stages of ``i`` iterations = ``i x B`` blocks) and the
budget mean the same in both modes.

Both modes resume from ``state_dict``: the synchronous loop after each iteration; the asynchronous loop from its
last checkpoint plus the events recorded since (``blockqnn.search``), which requires ``sample_one`` and
``incorporate`` to be deterministic given the state (all randomness from the agent's own generator).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from blockqnn.space import Action


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

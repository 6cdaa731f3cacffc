"""The epsilon schedule's shapes, stretched or shrunk to a search's size (docs/method.md#the-agent).

With ``agent.budget`` set, a shape is fitted to ``ceil(budget / B)`` iterations (``length``); without, it keeps its
own length times ``schedule_scale``. The settings are checked by ``blockqnn.agents.qlearning.epsilon_schedule``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from blockqnn.agents.base import PAPER_ITERATIONS, PAPER_STAGES

SCHEDULES = ("paper", "linear", "constant")


def _scaled(iterations: int, scale: float) -> int:
    """Round half up (not Python's half-to-even) and keep at least one iteration."""
    return max(1, math.floor(iterations * scale + 0.5))


def shaped_schedule(
    name: str, scale: float = 1.0, *, iterations: int = PAPER_ITERATIONS, start: float = 1.0, end: float = 0.1,
    length: int | None = None,
) -> list[float]:
    """One epsilon per iteration. ``paper``: the paper's stages; ``linear``: ``start`` to ``end`` over
    ``iterations``; ``constant``: ``end`` throughout. ``scale`` shrinks iteration counts (each stage >= 1);
    ``length`` instead fits the shape to exactly that many iterations (paper stages keep their proportions, so
    a stage shorter than one iteration may vanish)."""
    if name == "paper":
        if length is not None:
            return _fitted_stages(PAPER_STAGES, length)
        return [eps for eps, n in PAPER_STAGES for _ in range(_scaled(n, scale))]
    count = _scaled(iterations, scale) if length is None else length
    if name == "linear":
        return [float(e) for e in np.linspace(start, end, count)]
    return [float(end)] * count  # constant


def _fitted_stages(stages: Sequence[tuple[float, int]], length: int) -> list[float]:
    """The stages stretched to ``length`` iterations: stage k ends at its cumulative share of the whole, rounded."""
    total, ends, schedule = sum(n for _, n in stages), np.cumsum([n for _, n in stages]), []
    for (eps, _), end in zip(stages, ends):
        schedule += [eps] * (math.floor(length * end / total + 0.5) - len(schedule))
    return schedule

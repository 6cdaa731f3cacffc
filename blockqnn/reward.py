"""Reward formulas: what a trained candidate is worth to the agent (conf/reward/*.yaml).

Each reward is a callable ``reward(accuracy, flops, density) -> float`` with accuracy a fraction of the validation
split, flops the forward FLOPs per image and density the block DAG's edges / nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from blockqnn.schema import declared, member, setting


@member
class PaperRewardSettings:
    """``reward=paper`` (conf/reward/paper.yaml), and ``PaperReward``'s arguments."""

    mu: float = setting(ge=0)
    rho: float = setting(ge=0)
    flops_unit: float = setting(gt=0)


@member
class AccuracyRewardSettings:
    """``reward=accuracy``: nothing to set."""


@declared("reward", PaperRewardSettings)
@dataclass(frozen=True)
class PaperReward:
    """The paper's corrected reward: early-stop accuracy ranks blocks imperfectly, and its errors correlate with
    cost and connectivity, so both are penalised on a log scale (docs/method.md#the-reward)."""

    mu: float
    rho: float
    flops_unit: float = 1.0

    def __call__(self, accuracy: float, flops: float, density: float) -> float:
        if flops <= 0 or density <= 0:
            raise ValueError(f"reward needs positive flops and density, got flops={flops}, density={density}")
        return accuracy - self.mu * math.log(flops / self.flops_unit) - self.rho * math.log(density)


@declared("reward", AccuracyRewardSettings)
@dataclass(frozen=True)
class AccuracyReward:
    """The plain validation accuracy."""

    def __call__(self, accuracy: float, flops: float | None = None, density: float | None = None) -> float:
        return accuracy

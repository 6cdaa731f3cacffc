"""A reward model: a block's predicted reward, and how unsure the prediction is, learnt from the blocks scored so
far (docs/method.md#a-reward-model).

A random forest (scikit-learn's ``RandomForestRegressor``: each tree on a bootstrap of the blocks, a share
``max_features`` of the inputs tried at each split) on the block's encoding (``blockqnn.models.encoding``): the mean
over trees is the prediction, their spread the uncertainty. On the NAS-Bench-201 table it ranks unseen cells better
than extremely randomised trees (Spearman 0.67 against 0.48 after 100 cells: experiments/README.md). Trees need no
scaling of inputs or rewards, fit a few hundred blocks in milliseconds, and with a fixed seed the fit is a
deterministic function of the blocks and rewards it is given, so an agent that refits it from its own memory gets
the same model back when a search resumes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.ensemble import RandomForestRegressor

from blockqnn.models.encoding import encode_all
from blockqnn.schema import POSITIVE, member, setting


@member
class RewardModelSettings:
    """The forest's settings and how an agent trusts it, wherever an agent plans with one (``agent.model`` of
    Q-learning, ``agent=guided_evolution``); their defaults are written in those members' yaml."""

    kappa: float = setting(ge=0)  # the exploration bonus: predicted reward + kappa x the trees' spread
    refit_growth: float = setting(ge=0)  # refit once the scored blocks have grown by this share since the last fit
    trees: int = setting(**POSITIVE)
    max_features: float = setting(gt=0, le=1)  # share of the encoding's inputs tried at each split


class RewardModel:
    """``fit`` on scored blocks (architecture text), then ``predict`` mean and spread of unseen ones."""

    def __init__(self, trees: int, max_features: float, seed: int = 0) -> None:
        self.trees, self.max_features, self.seed = int(trees), float(max_features), int(seed)
        self._forest: RandomForestRegressor | None = None
        self.fitted_on = 0  # how many blocks the current fit saw

    @property
    def ready(self) -> bool:
        return self._forest is not None

    def fit(self, archs: Sequence[str], rewards: Sequence[float]) -> RewardModel:
        if len(archs) != len(rewards) or not archs:
            raise ValueError(f"fit needs as many rewards as blocks, at least one: {len(archs)} and {len(rewards)}")
        forest = RandomForestRegressor(n_estimators=self.trees, max_features=self.max_features,
                                       random_state=self.seed, n_jobs=1)
        self._forest = forest.fit(encode_all(list(archs)), np.asarray(rewards, dtype=float))
        self.fitted_on = len(archs)
        return self

    def due(self, n: int, warmup: int, growth: float) -> bool:
        """Whether ``n`` scored blocks call for a new fit: at least ``warmup`` of them, and ``growth`` (a share)
        more than the last fit saw. Refitting on growth, not on every block, keeps the fits' cost logarithmic."""
        return n >= warmup and n > self.fitted_on and n >= self.fitted_on * (1 + growth)

    def upper_bound(self, archs: Sequence[str], kappa: float) -> np.ndarray:
        """Predicted reward plus ``kappa`` times its spread: optimism where the model is unsure."""
        mean, spread = self.predict(archs)
        return mean + kappa * spread

    def predict(self, archs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation over the trees of each block's predicted reward."""
        if self._forest is None:
            raise RuntimeError("the reward model is not fitted yet")
        x = encode_all(list(archs)).astype(np.float32)  # the trees' own input type: no checks and copies per tree
        per_tree = np.stack([tree.tree_.predict(x)[:, 0] for tree in self._forest.estimators_])
        return per_tree.mean(axis=0), per_tree.std(axis=0)

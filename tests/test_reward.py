"""Reward formulas against hand-computed values, and the scale of the default penalties."""

import math

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from blockqnn.config import CONF_DIR
from blockqnn.reward import AccuracyReward, PaperReward


def test_paper_reward_matches_hand_computed_value():
    reward = PaperReward(mu=0.01, rho=0.1, flops_unit=1e6)
    # 0.8 - 0.01 * ln(4) - 0.1 * ln(1.5) = 0.8 - 0.0138629 - 0.0405465
    assert reward(0.8, 4e6, 1.5) == pytest.approx(0.7455905, abs=1e-7)


def test_paper_reward_is_accuracy_at_unit_flops_and_density_one():
    assert PaperReward(mu=0.3, rho=0.7, flops_unit=5e5)(0.42, 5e5, 1.0) == pytest.approx(0.42)


def test_paper_reward_prefers_cheaper_and_sparser_blocks_at_equal_accuracy():
    reward = PaperReward(mu=0.005, rho=0.02, flops_unit=1e6)
    assert reward(0.9, 1e7, 1.2) > reward(0.9, 2e7, 1.2) > reward(0.9, 2e7, 1.8)


def test_accuracy_reward_is_plain_accuracy():
    assert AccuracyReward()(0.731, 1e9, 2.0) == 0.731
    assert AccuracyReward()(0.25) == 0.25


@pytest.mark.parametrize("flops, density", [(0.0, 1.0), (1e6, 0.0), (-1.0, 1.0)])
def test_paper_reward_rejects_non_positive_inputs(flops, density):
    with pytest.raises(ValueError, match="positive"):
        PaperReward(mu=0.01, rho=0.01)(0.5, flops, density)


def test_default_penalties_are_on_the_scale_of_accuracy_differences():
    """The documented reasoning of conf/reward/paper.yaml: a 10x FLOPs range and density 1 -> 2 each cost
    between half an accuracy point and a few points, so neither dominates nor vanishes."""
    reward = instantiate(OmegaConf.load(CONF_DIR / "reward" / "paper.yaml"))
    assert isinstance(reward, PaperReward)
    flops_spread = reward(0.5, 1e7, 1.0) - reward(0.5, 1e8, 1.0)
    density_spread = reward(0.5, 1e7, 1.0) - reward(0.5, 1e7, 2.0)
    assert flops_spread == pytest.approx(reward.mu * math.log(10))
    for spread in (flops_spread, density_spread):
        assert 0.005 <= spread <= 0.05


def test_accuracy_config_instantiates():
    assert isinstance(instantiate(OmegaConf.load(CONF_DIR / "reward" / "accuracy.yaml")), AccuracyReward)

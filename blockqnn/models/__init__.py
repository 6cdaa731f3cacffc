"""Reward models fitted on a search's history: encodings of a block (``encoding``) and an ensemble that predicts a
block's reward with its uncertainty (``reward``). An agent plans with one (``blockqnn.agents.qlearning``)."""

from blockqnn.models.encoding import encode, encode_all
from blockqnn.models.reward import RewardModel, RewardModelSettings

__all__ = ["RewardModel", "RewardModelSettings", "encode", "encode_all"]

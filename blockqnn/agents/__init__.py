"""Agents that choose blocks: the protocol the loops speak and what every agent shares (``base``), checks of a
saved state (``state``), BlockQNN's Q-learning (``qlearning``, random search at epsilon 1), regularized
evolution (``evolution``), local search (``local``) and predictor-guided evolution (``guided``)."""

from blockqnn.agents.base import BatchAgent, StreamAgent
from blockqnn.agents.evolution import RegularizedEvolution
from blockqnn.agents.guided import GuidedEvolution
from blockqnn.agents.local import LocalSearch
from blockqnn.agents.qlearning import QLearningAgent

__all__ = ["BatchAgent", "GuidedEvolution", "LocalSearch", "QLearningAgent", "RegularizedEvolution", "StreamAgent"]

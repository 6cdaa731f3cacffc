"""The Q-table of the Q-learning agent: one ``Node`` per state, the backward update along a trajectory, and the
table as plain JSON data (docs/method.md#the-q-learning-update).

Q-values live per state in a list aligned with ``space.actions(state)``, created lazily with ``q_init``, beside
their largest value (kept up to date, so that a replayed step costs a few float operations).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from blockqnn.agents.state import q_entries
from blockqnn.errors import AgentStateError
from blockqnn.spaces import Action, State

Path = list[tuple["Node", int]]  # a trajectory as (state node, action index) pairs


class Node:
    """One state's legal actions, exploration distribution and Q-values (aligned sequences), and the largest Q-value
    (kept up to date by ``backup``, which needs it at every step of every replay)."""

    __slots__ = ("actions", "probs", "cum", "q", "top", "_index")

    def __init__(self, actions: Sequence[Action], probs: np.ndarray, q_init: float) -> None:
        self.actions = actions
        self.probs = np.asarray(probs, dtype=float)
        self.cum = np.cumsum(self.probs)
        self.q = [float(q_init)] * len(actions)  # a list: scalar updates are faster than on a numpy array
        self.top = float(q_init)
        self._index: dict[Action, int] | None = None

    def index(self, action: Action) -> int:
        if self._index is None:
            self._index = {a: i for i, a in enumerate(self.actions)}
        return self._index[action]


def backup(path: Path, reward: float, alpha: float, gamma: float, shaping: bool) -> None:
    """Backward Q-updates along one trajectory: r_T at the end, shaped r_T / T (or 0) before it."""
    step_reward = reward / len(path) if shaping else 0.0
    target = reward
    for node, i in reversed(path):
        q = node.q
        old = q[i]
        new = q[i] = old + alpha * (target - old)
        if new >= node.top:
            node.top = new
        elif old == node.top:  # the largest value went down: another action may hold the maximum now
            node.top = max(q)
        target = step_reward + gamma * node.top


def draw(cum: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn with probabilities given by a cumulative sum (faster than ``rng.choice(p=...)``)."""
    return min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(cum) - 1)


def saved_q(nodes: Mapping[State, Node], q_init: float) -> dict[str, dict[str, float]]:
    """The Q-values that left ``q_init``, keyed by ``repr`` of state and action."""
    q = {}
    for state, node in nodes.items():
        moved = {repr(node.actions[i]): value for i, value in enumerate(node.q) if value != q_init}
        if moved:
            q[repr(state)] = moved
    return q


def restore_q(nodes: Mapping[State, Node], q: dict) -> None:
    """Set saved Q-values (``saved_q``'s form) on nodes already rebuilt; an unknown state or action raises
    ``AgentStateError``."""
    by_name = {repr(s): node for s, node in nodes.items()}
    for key, values in q_entries(q, by_name):
        node = by_name[key]
        index = {repr(a): i for i, a in enumerate(node.actions)}
        for name, value in values.items():
            if name not in index:
                raise AgentStateError(f"saved agent state has action {name} at state {key}, unknown to this space")
            node.q[index[name]] = value
        node.top = max(node.q)

"""The BlockQNN agent: tabular Q-learning over any search space, epsilon-greedy, with shaping and replay.

One search is a fixed list of iterations given by the epsilon schedule. Each iteration the agent samples B
trajectories (``sample``), the search loop scores them, and ``update`` learns from them (docs/method.md#the-agent):

* every scored trajectory goes into the replay memory;
* each new trajectory is replayed backwards (MetaQNN): the last action moves towards the reward ``r_T``, every
  earlier one towards ``r_t + gamma * max_a' Q(s_{t+1}, a')`` with the shaped ``r_t = r_T / T`` (0 unshaped);
* then a uniform sample of ``replay_size`` remembered trajectories (without replacement; all of them while the
  memory is smaller) is replayed the same way. [open] BlockQNN's replay size: MetaQNN's 128 by default.

Budget accounting (decided by the lead): B counts *sampled* blocks per iteration. A block that was already
evaluated is not retrained: the search loop reuses its stored reward and marks it cached, and it still updates Q
and enters the memory like any other sample. Comparisons between agents report evaluated (distinct) blocks too.

Asynchronous search (``blockqnn.agent_protocol.StreamAgent``): ``sample_one`` draws one block at the epsilon of
the blocks sampled so far (stage of ``i`` iterations = ``i x B`` blocks), ``incorporate`` learns from one finished
block as it arrives: its backward update, then a replay of ``replay_size / B`` remembered trajectories (rounded
up), so that B results replay as much as one synchronous iteration does.

Random search (``conf/agent/random.yaml``) is this same class with ``epsilon_override: 1.0``: the same sampler
and schedule length, so both agents spend the same budget.

Q-values live per state in a numpy array aligned with ``space.actions(state)``, created lazily with ``q_init``,
so the greedy choice is one vectorised max. Greedy ties (every untried action shares ``q_init``) are broken at
random with the space's exploration distribution, so a fresh agent behaves like exploration rather than like a
uniform pick that would favour the many add/concat tuples of the NSC space. The whole agent (Q-table, memory,
schedule position, random generator) saves to plain JSON data and restores to continue the identical sequence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from blockqnn.agent_state import check_state, checked_rng_state, memory_entries, q_entries
from blockqnn.errors import AgentStateError
from blockqnn.space import Action, SearchSpace, State

# The paper's schedule as (epsilon, iterations): 178 iterations, 11,392 blocks at B = 64.
PAPER_STAGES: tuple[tuple[float, int], ...] = (
    (1.0, 95), (0.9, 7), (0.8, 7), (0.7, 7), (0.6, 10), (0.5, 10), (0.4, 10), (0.3, 10), (0.2, 10), (0.1, 12),
)
SCHEDULES = ("paper", "linear", "constant")
STATE_FORMAT = 2
_STATE_TYPES = {"iteration": int, "sampled": int, "num_iterations": int, "q": dict, "memory": list, "rng": dict}


def _scaled(iterations: int, scale: float) -> int:
    """Round half up (not Python's half-to-even) and keep at least one iteration."""
    return max(1, math.floor(iterations * scale + 0.5))


def epsilon_schedule(
    name: str, scale: float = 1.0, *, iterations: int = 178, start: float = 1.0, end: float = 0.1
) -> list[float]:
    """One epsilon per iteration. ``paper``: the paper's stages; ``linear``: ``start`` to ``end`` over
    ``iterations``; ``constant``: ``end`` throughout. ``scale`` shrinks iteration counts (each stage >= 1)."""
    if scale <= 0:
        raise ValueError(f"agent.schedule_scale must be positive, got {scale}")
    if name == "paper":
        return [eps for eps, n in PAPER_STAGES for _ in range(_scaled(n, scale))]
    if iterations < 1:
        raise ValueError(f"agent.schedule_iterations must be at least 1, got {iterations}")
    if name == "linear":
        return [float(e) for e in np.linspace(start, end, _scaled(iterations, scale))]
    if name == "constant":
        return [float(end)] * _scaled(iterations, scale)
    raise ValueError(f"unknown agent.epsilon_schedule {name!r} (choose one of {', '.join(SCHEDULES)})")


_schedule = epsilon_schedule  # the agent's constructor argument of the same name shadows the function


class _Node:
    """One state's legal actions, exploration distribution and Q-values (aligned arrays)."""

    __slots__ = ("actions", "probs", "cum", "q", "_index")

    def __init__(self, actions: Sequence[Action], probs: np.ndarray, q_init: float) -> None:
        self.actions = actions
        self.probs = np.asarray(probs, dtype=float)
        self.cum = np.cumsum(self.probs)
        self.q = np.full(len(actions), q_init, dtype=float)
        self._index: dict[Action, int] | None = None

    def index(self, action: Action) -> int:
        if self._index is None:
            self._index = {a: i for i, a in enumerate(self.actions)}
        return self._index[action]


class QLearningAgent:
    """Epsilon-greedy tabular Q-learning over a ``SearchSpace`` (see the module docstring)."""

    def __init__(
        self,
        space: SearchSpace,
        *,
        alpha: float = 0.01,
        gamma: float = 1.0,
        q_init: float = 0.5,
        batch_size: int = 64,
        replay_size: int = 128,
        shaping: bool = True,
        replay: bool = True,
        epsilon_schedule: str = "paper",
        schedule_scale: float = 1.0,
        schedule_iterations: int = 178,
        epsilon_start: float = 1.0,
        epsilon_end: float = 0.1,
        epsilon_override: float | None = None,
        seed: int = 0,
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"agent.alpha must be in (0, 1], got {alpha}")
        if batch_size < 1 or replay_size < 0:
            raise ValueError(f"agent.batch_size must be >= 1, agent.replay_size >= 0: got {batch_size}, {replay_size}")
        self.space = space
        self.alpha, self.gamma, self.q_init = float(alpha), float(gamma), float(q_init)
        self.batch_size, self.replay_size = int(batch_size), int(replay_size)
        self.shaping, self.replay = bool(shaping), bool(replay)
        self.schedule = _schedule(
            epsilon_schedule, schedule_scale, iterations=schedule_iterations, start=epsilon_start, end=epsilon_end
        )
        if epsilon_override is not None:
            if not 0.0 <= epsilon_override <= 1.0:
                raise ValueError(f"agent.epsilon_override must be in [0, 1] or null, got {epsilon_override}")
            self.schedule = [float(epsilon_override)] * len(self.schedule)
        self.iteration = 0
        self.sampled = 0
        self.rng = np.random.default_rng(seed)
        self._nodes: dict[State, _Node] = {}
        self._memory: list[tuple[list[tuple[_Node, int]], float]] = []
        self._memory_text: list[str] = []

    # ---- schedule ---------------------------------------------------------------------------------------------
    @property
    def num_iterations(self) -> int:
        return len(self.schedule)

    @property
    def total_samples(self) -> int:
        """Blocks sampled over the whole schedule at the configured batch size."""
        return self.num_iterations * self.batch_size

    @property
    def done(self) -> bool:
        return self.iteration >= self.num_iterations

    @property
    def epsilon(self) -> float:
        """The current iteration's epsilon (the last one once the schedule is done)."""
        return self.schedule[min(self.iteration, self.num_iterations - 1)]

    # ---- acting -----------------------------------------------------------------------------------------------
    def sample(self, n: int | None = None) -> list[list[Action]]:
        """``n`` (default B) epsilon-greedy trajectories of the current iteration, each ending in a final action."""
        if self.done:
            raise RuntimeError(f"the epsilon schedule is finished ({self.num_iterations} iterations)")
        n = self.batch_size if n is None else n
        self.sampled += n
        return [self._trajectory(self.epsilon) for _ in range(n)]

    def sample_one(self) -> list[Action]:
        """One epsilon-greedy trajectory at the epsilon of the blocks sampled so far (asynchronous search)."""
        if self.done:
            raise RuntimeError(f"the epsilon schedule is finished ({self.total_samples} blocks)")
        trajectory = self._trajectory(self.epsilon)
        self.sampled += 1
        self.iteration = self.sampled // self.batch_size
        return trajectory

    def _trajectory(self, epsilon: float) -> list[Action]:
        state, actions = self.space.start, []
        while True:
            node = self._node(state)
            action = node.actions[self._choose(node, epsilon)]
            actions.append(action)
            if self.space.is_final(action):
                return actions
            state = action

    def _choose(self, node: _Node, epsilon: float) -> int:
        if epsilon >= 1.0 or self.rng.random() < epsilon:
            return _draw(node.cum, self.rng)
        ties = np.flatnonzero(node.q == node.q.max())
        if len(ties) == 1:
            return int(ties[0])
        return int(ties[_draw(np.cumsum(node.probs[ties]), self.rng)])

    def _node(self, state: State) -> _Node:
        node = self._nodes.get(state)
        if node is None:
            node = _Node(self.space.actions(state), self.space.exploration_probs(state), self.q_init)
            self._nodes[state] = node
        return node

    def q_values(self, state: State) -> np.ndarray:
        """A copy of the state's Q-values, aligned with ``space.actions(state)``."""
        return self._node(state).q.copy()

    # ---- learning ---------------------------------------------------------------------------------------------
    def update(self, trajectories: Sequence[Sequence[Action]], rewards: Sequence[float]) -> None:
        """Learn from one iteration's scored trajectories, replay the memory, and move to the next iteration."""
        if self.done:
            raise RuntimeError(f"the epsilon schedule is finished ({self.num_iterations} iterations)")
        if len(trajectories) != len(rewards):
            raise ValueError(f"{len(trajectories)} trajectories but {len(rewards)} rewards")
        entries = [self._entry(actions, reward) for actions, reward in zip(trajectories, rewards)]  # checks all first
        for text, path, reward in entries:
            self._remember(text, path, reward)
            self._learn(path, reward)
        self._replay(self.replay_size)
        self.iteration += 1

    def incorporate(self, trajectory: Sequence[Action], reward: float) -> None:
        """Learn from one finished block (asynchronous search): its update, then its share of the replay."""
        text, path, reward = self._entry(trajectory, reward)
        self._remember(text, path, reward)
        self._learn(path, reward)
        self._replay(-(-self.replay_size // self.batch_size))

    def _replay(self, size: int) -> None:
        """Replay ``size`` remembered trajectories drawn without replacement (all of them while fewer)."""
        if self.replay and self._memory and size:
            for i in self.rng.choice(len(self._memory), size=min(size, len(self._memory)), replace=False):
                self._learn(*self._memory[i])

    def _entry(self, actions: Sequence[Action], reward: float) -> tuple[str, list[tuple[_Node, int]], float]:
        """A checked memory entry: architecture text, the trajectory's (node, action index) path, reward."""
        reward = float(reward)
        if not math.isfinite(reward):
            raise ValueError(f"reward must be a finite number, got {reward} (give failed candidates a fixed reward)")
        text = self.space.decode(actions)
        return text, self._path(actions, text), reward

    def _remember(self, text: str, path: list[tuple[_Node, int]], reward: float) -> None:
        self._memory.append((path, reward))
        self._memory_text.append(text)

    def _path(self, actions: Sequence[Action], text: str) -> list[tuple[_Node, int]]:
        """The (state node, action index) pairs of a trajectory, checked against the space."""
        if not actions or not self.space.is_final(actions[-1]):
            raise ValueError(f"trajectory {text} does not end in a final action")
        path, state = [], self.space.start
        for action in actions:
            node = self._node(state)
            try:
                i = node.index(action)
            except KeyError:
                raise ValueError(f"{action!r} is not a legal action after {state!r} in {text}") from None
            path.append((node, i))
            state = node.actions[i]  # the space's own object: an equal one from encode may differ in repr
        return path

    def _learn(self, path: list[tuple[_Node, int]], reward: float) -> None:
        """Backward Q-updates along one trajectory: r_T at the end, shaped r_T / T (or 0) before it."""
        alpha, gamma = self.alpha, self.gamma
        step_reward = reward / len(path) if self.shaping else 0.0
        target = reward
        for node, i in reversed(path):
            q = node.q
            q[i] += alpha * (target - q[i])
            target = step_reward + gamma * q.max()

    # ---- persistence ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain JSON data: Q-values that left ``q_init`` (keyed by ``repr`` of state and action), the replay
        memory as architecture text and reward, the schedule position and the generator state."""
        q = {}
        for state, node in self._nodes.items():
            moved = np.flatnonzero(node.q != self.q_init)
            if len(moved):
                q[repr(state)] = {repr(node.actions[i]): float(node.q[i]) for i in moved}
        return {
            "format": STATE_FORMAT,
            "iteration": self.iteration,
            "sampled": self.sampled,
            "num_iterations": self.num_iterations,
            "q": q,
            "memory": [[text, reward] for text, (_, reward) in zip(self._memory_text, self._memory)],
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict`` saved by an agent with the same space and schedule; any other state raises
        ``AgentStateError`` and leaves the agent as it was.

        Every Q-value that moved was updated along a remembered trajectory, so re-reading the memory visits
        every saved state; a saved state or action the space does not produce means a different space config.
        """
        check_state(state, STATE_FORMAT, _STATE_TYPES, self.num_iterations)
        rng_state = checked_rng_state(state["rng"], self.rng)
        previous = self._nodes, self._memory, self._memory_text
        self._nodes, self._memory, self._memory_text = {}, [], []
        try:
            self._restore_memory(state["memory"])
            self._restore_q(state["q"])
        except AgentStateError:
            self._nodes, self._memory, self._memory_text = previous
            raise
        self.iteration, self.sampled = state["iteration"], state["sampled"]
        self.rng.bit_generator.state = rng_state

    def _restore_memory(self, memory: list) -> None:
        """Replay the saved memory into fresh nodes: it rebuilds every state the saved Q-values refer to."""
        for text, reward in memory_entries(memory):
            try:
                self._remember(*self._entry(self.space.encode(text), reward))
            except (TypeError, ValueError) as e:
                message = f"saved agent state remembers {text}, which this agent cannot replay: {e}"
                raise AgentStateError(message) from None

    def _restore_q(self, q: dict) -> None:
        """Set the saved Q-values on the nodes the memory rebuilt (keyed by ``repr``, as ``state_dict`` wrote)."""
        nodes = {repr(s): node for s, node in self._nodes.items()}
        for key, values in q_entries(q, nodes):
            node = nodes[key]
            index = {repr(a): i for i, a in enumerate(node.actions)}
            for name, value in values.items():
                if name not in index:
                    raise AgentStateError(f"saved agent state has action {name} at state {key}, unknown to this space")
                node.q[index[name]] = value


def _draw(cum: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn with probabilities given by a cumulative sum (faster than ``rng.choice(p=...)``)."""
    return min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(cum) - 1)


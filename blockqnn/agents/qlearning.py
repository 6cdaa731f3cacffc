"""The BlockQNN agent: tabular Q-learning over any search space, epsilon-greedy, with shaping and replay.

One search is a fixed list of iterations given by the epsilon schedule. Each iteration the agent samples B
trajectories (``sample``), the search loop scores them, and ``update`` learns from them (docs/method.md#the-agent):

* every scored trajectory goes into the replay memory;
* each new trajectory is replayed backwards (MetaQNN): the last action moves towards the reward ``r_T``, every
  earlier one towards ``r_t + gamma * max_a' Q(s_{t+1}, a')`` with the shaped ``r_t = r_T / T`` (0 unshaped);
* experience replay (``replay_every``): ``block`` (default) replays ``replay_size`` remembered trajectories drawn
  uniformly with replacement after *each* incorporated block, as MetaQNN's ``sample_replay_for_update`` does after
  every model; ``iteration`` replays ``replay_size`` of them (without replacement, all while the memory is smaller)
  once per iteration. [open] BlockQNN's replay size: MetaQNN's 128 by default.

Asynchronous search (``blockqnn.agents.base.StreamAgent``): ``sample_one`` draws one block at the epsilon of
the blocks sampled so far (stage of ``i`` iterations = ``i x B`` blocks), ``incorporate`` learns from one finished
block as it arrives: its backward update, then its replay: ``replay_size`` trajectories with ``replay_every: block``
(as in a synchronous search), else ``replay_size / B`` (rounded up), so that B results replay as much as one
synchronous iteration does.

The schedule's shape (``paper`` stages, ``linear``, ``constant``; ``blockqnn.agents.schedule``) is fitted to the
search's size; with ``budget`` set, its iterations sample exactly ``budget`` blocks (the last takes the remainder).

Budget accounting [open]: B counts *sampled* blocks per iteration. A block that was already
evaluated is not retrained: the search loop reuses its stored reward and marks it cached, and it still updates Q
and enters the memory like any other sample. Comparisons between agents report evaluated (distinct) blocks too.

Random search (``conf/agent/random.yaml``) is this same class with ``epsilon_override: 1.0``: the same sampler
and schedule length, so both agents spend the same budget. Regularized evolution (``blockqnn.agents.evolution``) speaks
the same protocol (``Iterations``, ``sample``, ``update``, ``state_dict``).

Planning with a reward model (``model``, off by default; docs/method.md#planning-with-a-reward-model) [ours]: a
random forest (``blockqnn.models``) is fitted on the remembered blocks once ``warmup`` of them are scored, and again
each time the memory has grown by ``refit_growth`` since the last fit. With ``proposals`` K > 1 each trained block
is the best of K epsilon-greedy proposals by predicted reward plus ``kappa`` times the forest's spread (blocks not
yet scored first); with ``planning`` P > 0 every real result is followed by P simulated trajectories (Dyna) whose
*predicted* rewards update Q, never remembered nor replayed as real. The model is a deterministic function of the
memory, so a restored agent refits it from the saved memory (``state_dict`` keeps only how many blocks the fit saw,
and the simulated blocks that reached a state no real block did).

Q-values live per state in a list aligned with ``space.actions(state)``, created lazily with ``q_init``, beside
their largest value (kept up to date, so that a replayed step costs a few float operations). Greedy ties (every
untried action shares ``q_init``) are broken at random with the space's exploration distribution, so a fresh agent
behaves like exploration rather than like a uniform pick that would favour the many add/concat tuples of the NSC
space. The whole agent (Q-table, memory, schedule position, random generator) saves to plain JSON data and restores
to continue the identical sequence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from blockqnn.agents.base import (
    PAPER_ITERATIONS,
    STATE_FORMAT,
    Iterations,
    checked_reward,
    iteration_sizes,
)
from blockqnn.agents.schedule import SCHEDULES, shaped_schedule
from blockqnn.agents.state import check_state, checked_rng_state, memory_entries, model_entries, q_entries
from blockqnn.errors import AgentStateError
from blockqnn.models import RewardModel
from blockqnn.schema import COUNT, FRACTION, POSITIVE, check, declared, member, setting
from blockqnn.spaces import Action, SearchSpace, State

REPLAY_EVERY = ("block", "iteration")
_STATE_TYPES = {"iteration": int, "sampled": int, "num_iterations": int, "q": dict, "memory": list, "rng": dict}


@member
class ModelSettings:
    """``agent.model``: the reward model and how the agent plans with it (``proposals`` 1 and ``planning`` 0: off)."""

    proposals: int = setting(**POSITIVE)
    kappa: float = setting(ge=0)
    planning: int = setting(**COUNT)
    warmup: int = setting(**POSITIVE)
    refit_growth: float = setting(ge=0)
    trees: int = setting(**POSITIVE)
    max_features: float = setting(gt=0, le=1)

    @property
    def active(self) -> bool:
        return self.proposals > 1 or self.planning > 0


MODEL_OFF = {"proposals": 1, "kappa": 0.0, "planning": 0, "warmup": 10, "refit_growth": 0.0, "trees": 50,
             "max_features": 0.5}


@member
class QLearningSettings:
    """``agent=qlearning`` and ``agent=random`` (conf/agent/*.yaml), and ``QLearningAgent``'s arguments."""

    alpha: float = setting(gt=0, le=1)
    gamma: float = setting(**FRACTION)
    q_init: float = setting()
    batch_size: int = setting(**POSITIVE)
    budget: int | None = setting(**POSITIVE)
    replay: bool = setting()
    replay_size: int = setting(**COUNT)
    replay_every: str = setting(choices=REPLAY_EVERY)
    shaping: bool = setting()
    epsilon_schedule: str = setting(choices=SCHEDULES)
    schedule_scale: float = setting(gt=0)
    schedule_iterations: int = setting(**POSITIVE)
    epsilon_start: float = setting(**FRACTION)
    epsilon_end: float = setting(**FRACTION)
    epsilon_override: float | None = setting(**FRACTION)
    model: ModelSettings | None = setting()

    @staticmethod
    def rule(values: Mapping[str, Any]) -> str | None:
        if values.get("budget") is None:
            return None
        for key, default in (("schedule_scale", 1.0), ("schedule_iterations", PAPER_ITERATIONS)):
            if values.get(key, default) != default:
                return (f"{key}={values[key]}: agent.budget sizes the schedule; {key} applies only without one "
                        "(agent.budget=null)")
        return None


def epsilon_schedule(
    name: str, scale: float = 1.0, *, iterations: int = PAPER_ITERATIONS, start: float = 1.0, end: float = 0.1,
    length: int | None = None,
) -> list[float]:
    """``blockqnn.agents.schedule.shaped_schedule`` after checking its settings as ``agent.*`` ones."""
    check(QLearningSettings, "agent", {"epsilon_schedule": name, "schedule_scale": scale,
                                       "schedule_iterations": iterations, "epsilon_start": start, "epsilon_end": end})
    return shaped_schedule(name, scale, iterations=iterations, start=start, end=end, length=length)


_schedule = epsilon_schedule  # the agent's constructor argument of the same name shadows the function


class _Node:
    """One state's legal actions, exploration distribution and Q-values (aligned sequences), and the largest Q-value
    (kept up to date by ``QLearningAgent._learn``, which needs it at every step of every replay)."""

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



@declared("agent", QLearningSettings)
class QLearningAgent(Iterations):
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
        replay_every: str = "block",
        shaping: bool = True,
        replay: bool = True,
        epsilon_schedule: str = "paper",
        schedule_scale: float = 1.0,
        schedule_iterations: int = PAPER_ITERATIONS,
        epsilon_start: float = 1.0,
        epsilon_end: float = 0.1,
        epsilon_override: float | None = None,
        budget: int | None = None,
        model: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        self.space = space
        self.alpha, self.gamma, self.q_init = float(alpha), float(gamma), float(q_init)
        self.batch_size, self.replay_size, self.replay_every = int(batch_size), int(replay_size), replay_every
        self.shaping, self.replay = bool(shaping), bool(replay)
        length = None if budget is None else len(iteration_sizes(budget, self.batch_size, 0))
        self.schedule = _schedule(epsilon_schedule, schedule_scale, iterations=schedule_iterations,
                                  start=epsilon_start, end=epsilon_end, length=length)
        self.sizes = iteration_sizes(budget, self.batch_size, len(self.schedule))
        if epsilon_override is not None:
            self.schedule = [float(epsilon_override)] * len(self.schedule)
        self.iteration = 0
        self.sampled = 0
        self.rng = np.random.default_rng(seed)
        self._nodes: dict[State, _Node] = {}
        self._memory: list[tuple[list[tuple[_Node, int]], float]] = []
        self._memory_text: list[str] = []
        self.planner = ModelSettings(**{**MODEL_OFF, **(model or {})})
        check(ModelSettings, "agent.model", vars(self.planner))
        self.model = RewardModel(self.planner.trees, self.planner.max_features) if self.planner.active else None
        self._scored: set[str] = set()  # canonical hashes of the remembered blocks
        self._visited: set[_Node] = set()  # states on a remembered or saved simulated trajectory
        self._planned: list[str] = []  # simulated blocks that reached a state no remembered block visits

    # ---- schedule ---------------------------------------------------------------------------------------------
    @property
    def epsilon(self) -> float:
        """The current iteration's epsilon (the last one once the schedule is done)."""
        return self.schedule[min(self.iteration, self.num_iterations - 1)]

    # ---- acting -----------------------------------------------------------------------------------------------
    def sample(self, n: int | None = None) -> list[list[Action]]:
        """``n`` (default: this iteration's size, B but for a budget's last iteration) epsilon-greedy trajectories
        of the current iteration, each ending in a final action."""
        self._check_running()
        n = self.sizes[self.iteration] if n is None else n
        self.sampled += n
        chosen: set[str] = set()
        return [self._proposed(self.epsilon, chosen) for _ in range(n)]

    def sample_one(self) -> list[Action]:
        """One epsilon-greedy trajectory at the epsilon of the blocks sampled so far (asynchronous search)."""
        self._check_running()
        trajectory = self._proposed(self.epsilon, set())
        self._count_one()
        return trajectory

    def _proposed(self, epsilon: float, chosen: set[str]) -> list[Action]:
        """One block to train: an epsilon-greedy trajectory, or, planning with a fitted model, the best of
        ``proposals`` of them by predicted reward plus ``kappa`` x spread, among those neither scored nor already
        ``chosen`` this iteration when there are any (the chosen block's hash joins ``chosen``)."""
        if self.model is None or not self.model.ready or self.planner.proposals == 1:
            return self._trajectory(epsilon)
        proposals = [self._trajectory(epsilon) for _ in range(self.planner.proposals)]
        texts = [self.space.decode(t) for t in proposals]
        hashes = [self.space.canonical_hash(t) for t in texts]
        mean, spread = self.model.predict(texts)
        score = mean + self.planner.kappa * spread
        fresh = [h not in self._scored and h not in chosen for h in hashes]
        best = int(np.argmax(np.where(fresh, score, -np.inf))) if any(fresh) else int(np.argmax(score))
        chosen.add(hashes[best])
        return proposals[best]

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
        ties = [i for i, value in enumerate(node.q) if value == node.top]
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
        return np.array(self._node(state).q)

    # ---- learning ---------------------------------------------------------------------------------------------
    def update(self, trajectories: Sequence[Sequence[Action]], rewards: Sequence[float]) -> None:
        """Learn from one iteration's scored trajectories, replay the memory, and move to the next iteration."""
        self._check_running(trajectories, rewards)
        entries = [self._entry(actions, reward) for actions, reward in zip(trajectories, rewards)]  # checks all first
        for entry in entries:
            self._learn_block(*entry)
        if self.replay_every == "iteration":
            self._replay(self.replay_size)
        self._plan(len(entries))
        self.iteration += 1

    def incorporate(self, trajectory: Sequence[Action], reward: float) -> None:
        """Learn from one finished block (asynchronous search): its update, then its replay (``replay_every``)."""
        self._learn_block(*self._entry(trajectory, reward))
        if self.replay_every == "iteration":
            self._replay(-(-self.replay_size // self.batch_size))
        self._plan(1)

    # ---- planning with the reward model ------------------------------------------------------------------------
    def _plan(self, results: int) -> None:
        """After ``results`` new real results: refit the model when due, then ``planning`` simulated trajectories
        per result, each learnt from its predicted reward (Dyna); they are not remembered."""
        if self.model is None:
            return
        if self._refit_due():
            self._refit(len(self._memory))
        if not self.model.ready or not self.planner.planning:
            return
        trajectories = [self._trajectory(self.epsilon) for _ in range(self.planner.planning * results)]
        texts = [self.space.decode(t) for t in trajectories]
        for actions, text, predicted in zip(trajectories, texts, self.model.predict(texts)[0]):
            path = self._path(actions, text)
            self._learn(path, float(predicted))
            new = {node for node, i in path} - self._visited
            if new:
                self._visited |= new
                self._planned.append(text)

    def _refit_due(self) -> bool:
        n, fitted = len(self._memory), self.model.fitted_on
        return n >= self.planner.warmup and n > fitted and n >= fitted * (1 + self.planner.refit_growth)

    def _refit(self, n: int) -> None:
        """Fit the model on the first ``n`` remembered blocks."""
        self.model.fit(self._memory_text[:n], [reward for _, reward in self._memory[:n]])

    def _learn_block(self, text: str, path: list[tuple[_Node, int]], reward: float) -> None:
        """Remember one scored block and learn from it, then replay the memory when replaying after every block."""
        self._remember(text, path, reward)
        self._learn(path, reward)
        if self.replay_every == "block":
            self._replay_with_replacement(self.replay_size)

    def _replay_with_replacement(self, size: int) -> None:
        """Replay ``size`` remembered trajectories drawn uniformly with replacement (MetaQNN, after every block)."""
        if self.replay and size:
            for i in self.rng.integers(len(self._memory), size=size):
                self._learn(*self._memory[i])

    def _replay(self, size: int) -> None:
        """Replay ``size`` remembered trajectories drawn without replacement (all of them while fewer)."""
        if self.replay and self._memory and size:
            for i in self.rng.choice(len(self._memory), size=min(size, len(self._memory)), replace=False):
                self._learn(*self._memory[i])

    def _entry(self, actions: Sequence[Action], reward: float) -> tuple[str, list[tuple[_Node, int]], float]:
        """A checked memory entry: architecture text, the trajectory's (node, action index) path, reward."""
        reward = checked_reward(reward)
        text = self.space.decode(actions)
        return text, self._path(actions, text), reward

    def _remember(self, text: str, path: list[tuple[_Node, int]], reward: float) -> None:
        self._memory.append((path, reward))
        self._memory_text.append(text)
        if self.model is not None:
            self._scored.add(self.space.canonical_hash(text))
            self._visited.update(node for node, _ in path)

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
            old = q[i]
            new = q[i] = old + alpha * (target - old)
            if new >= node.top:
                node.top = new
            elif old == node.top:  # the largest value went down: another action may hold the maximum now
                node.top = max(q)
            target = step_reward + gamma * node.top

    # ---- persistence ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain JSON data: Q-values that left ``q_init`` (keyed by ``repr`` of state and action), the replay
        memory as architecture text and reward, the schedule position and the generator state."""
        q = {}
        for state, node in self._nodes.items():
            moved = {repr(node.actions[i]): value for i, value in enumerate(node.q) if value != self.q_init}
            if moved:
                q[repr(state)] = moved
        return {
            "format": STATE_FORMAT,
            "iteration": self.iteration,
            "sampled": self.sampled,
            "num_iterations": self.num_iterations,
            "q": q,
            "memory": [[text, reward] for text, (_, reward) in zip(self._memory_text, self._memory)],
            "rng": self.rng.bit_generator.state,
            **({} if self.model is None else
               {"model": {"fitted_on": self.model.fitted_on, "planned": list(self._planned)}}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict`` saved by an agent with the same space and schedule; any other state raises
        ``AgentStateError`` and leaves the agent as it was.

        Every Q-value that moved was updated along a remembered trajectory, so re-reading the memory visits
        every saved state; a saved state or action the space does not produce means a different space config.
        """
        check_state(state, STATE_FORMAT, _STATE_TYPES, self.num_iterations)
        rng_state = checked_rng_state(state["rng"], self.rng)
        fitted_on, planned = model_entries(state.get("model"), len(state["memory"]))
        previous = self._nodes, self._memory, self._memory_text, self._scored, self._visited, self._planned
        self._nodes, self._memory, self._memory_text, self._scored, self._visited = {}, [], [], set(), set()
        self._planned = []
        try:
            self._restore_memory(state["memory"])
            self._restore_planned(planned)
            self._restore_q(state["q"])
        except AgentStateError:
            self._nodes, self._memory, self._memory_text, self._scored, self._visited, self._planned = previous
            raise
        if self.model is not None and fitted_on:
            self._refit(fitted_on)
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

    def _restore_planned(self, planned: list[str]) -> None:
        """Rebuild the states that only simulated blocks reached, so that their saved Q-values have a place."""
        for text in planned:
            try:
                path = self._path(self.space.encode(text), text)
            except (TypeError, ValueError) as e:
                message = f"saved agent state planned {text}, which this agent cannot replay: {e}"
                raise AgentStateError(message) from None
            self._visited.update(node for node, _ in path)
            self._planned.append(text)

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
            node.top = max(node.q)


def _draw(cum: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn with probabilities given by a cumulative sum (faster than ``rng.choice(p=...)``)."""
    return min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(cum) - 1)


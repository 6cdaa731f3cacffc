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

Planning with a reward model (``model``, off by default) [ours]: ``blockqnn.agents.planning``.

Q-values live in a table of nodes, one per state (``blockqnn.agents.qtable``). Greedy ties (every
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
    BudgetSettings,
    Iterations,
    checked_reward,
    iteration_sizes,
)
from blockqnn.agents.planning import ModelSettings, planner
from blockqnn.agents.qtable import Node, Path, backup, draw, restore_q, saved_q
from blockqnn.agents.schedule import SCHEDULES, shaped_schedule
from blockqnn.agents.state import check_state, checked_rng_state, memory_entries
from blockqnn.errors import AgentStateError
from blockqnn.models import RewardModel
from blockqnn.schema import COUNT, FRACTION, POSITIVE, check, declared, member, member_defaults, setting
from blockqnn.spaces import Action, SearchSpace, State

REPLAY_EVERY = ("block", "iteration")
_STATE_TYPES = {"iteration": int, "sampled": int, "num_iterations": int, "q": dict, "memory": list, "rng": dict}


@member
class QLearningSettings(BudgetSettings):
    """``agent=qlearning`` and ``agent=random`` (conf/agent/*.yaml), and ``QLearningAgent``'s arguments."""

    alpha: float = setting(gt=0, le=1)
    gamma: float = setting(**FRACTION)
    q_init: float = setting()
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
        written = member_defaults("agent", "qlearning")
        for key in ("schedule_scale", "schedule_iterations"):
            if values.get(key, written[key]) != written[key]:
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


@declared("agent", QLearningSettings, member="qlearning")
class QLearningAgent(Iterations):
    """Epsilon-greedy tabular Q-learning over a ``SearchSpace`` (the module docstring); defaults: its yaml's."""

    def __init__(
        self,
        space: SearchSpace,
        *,
        alpha: float,
        gamma: float,
        q_init: float,
        batch_size: int,
        replay_size: int,
        replay_every: str,
        shaping: bool,
        replay: bool,
        epsilon_schedule: str,
        schedule_scale: float,
        schedule_iterations: int,
        epsilon_start: float,
        epsilon_end: float,
        epsilon_override: float | None,
        budget: int | None,
        model: Mapping[str, Any] | None,
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
        self._nodes: dict[State, Node] = {}
        self._memory: list[tuple[Path, float]] = []
        self._memory_text: list[str] = []
        self.planner = planner(space, model)  # None: the paper's agent, no reward model

    @property
    def model(self) -> RewardModel | None:
        """The reward model the agent plans with (None without one)."""
        return None if self.planner is None else self.planner.model

    # ---- schedule ---------------------------------------------------------------------------------------------
    @property
    def epsilon(self) -> float:
        """The current iteration's epsilon (the last one once the schedule is done)."""
        return self.schedule[min(self.iteration, self.num_iterations - 1)]

    # ---- acting -----------------------------------------------------------------------------------------------
    def _draw(self) -> list[Action]:
        """One block to train at the current iteration's epsilon: an epsilon-greedy trajectory (ending in a final
        action), or the one the planner rates best of ``proposals``; with ``exploit``, with probability 1 - epsilon,
        the one it rates best of the incumbent's fresh neighbours."""
        epsilon = self.epsilon
        if self.planner is None or not self.planner.proposes:
            return self._trajectory(epsilon)
        if self.planner.settings.exploit and self.rng.random() >= epsilon:
            near = self.space.neighbours(self.space.encode(self._incumbent()))
            pick = self.planner.best([self.space.decode(t) for t in near], fresh_only=True)
            if pick is not None:
                return near[pick]
        proposals = [self._trajectory(epsilon) for _ in range(self.planner.settings.proposals)]
        return proposals[self.planner.best([self.space.decode(t) for t in proposals])]

    def _incumbent(self) -> str:
        """The best remembered block (the first of equals)."""
        rewards = [reward for _, reward in self._memory]
        return self._memory_text[rewards.index(max(rewards))]

    def _trajectory(self, epsilon: float) -> list[Action]:
        state, actions = self.space.start, []
        while True:
            node = self._node(state)
            action = node.actions[self._choose(node, epsilon)]
            actions.append(action)
            if self.space.is_final(action):
                return actions
            state = action

    def _choose(self, node: Node, epsilon: float) -> int:
        if epsilon >= 1.0 or self.rng.random() < epsilon:
            return draw(node.cum, self.rng)
        ties = [i for i, value in enumerate(node.q) if value == node.top]
        if len(ties) == 1:
            return int(ties[0])
        return int(ties[draw(np.cumsum(node.probs[ties]), self.rng)])

    def _node(self, state: State) -> Node:
        node = self._nodes.get(state)
        if node is None:
            node = Node(self.space.actions(state), self.space.exploration_probs(state), self.q_init)
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
        if self.planner is None:
            return
        self.planner.refit(self._memory_text, [reward for _, reward in self._memory])
        if not self.planner.model.ready or not self.planner.settings.planning:
            return
        trajectories = [self._trajectory(self.epsilon) for _ in range(self.planner.settings.planning * results)]
        texts = [self.space.decode(t) for t in trajectories]
        for actions, text, predicted in zip(trajectories, texts, self.planner.model.predict(texts)[0]):
            path = self._path(actions, text)
            self._learn(path, float(predicted))
            self.planner.simulated(text, (node for node, _ in path))

    def _learn_block(self, text: str, path: Path, reward: float) -> None:
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

    def _entry(self, actions: Sequence[Action], reward: float) -> tuple[str, Path, float]:
        """A checked memory entry: architecture text, the trajectory's (node, action index) path, reward."""
        reward = checked_reward(reward)
        text = self.space.decode(actions)
        return text, self._path(actions, text), reward

    def _remember(self, text: str, path: Path, reward: float) -> None:
        self._memory.append((path, reward))
        self._memory_text.append(text)
        if self.planner is not None:
            self.planner.remembered(text, (node for node, _ in path))

    def _path(self, actions: Sequence[Action], text: str) -> Path:
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

    def _learn(self, path: Path, reward: float) -> None:
        backup(path, reward, self.alpha, self.gamma, self.shaping)

    # ---- persistence ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain JSON data: Q-values that left ``q_init`` (keyed by ``repr`` of state and action), the replay
        memory as architecture text and reward, the schedule position and the generator state."""
        return {
            "format": STATE_FORMAT,
            "iteration": self.iteration,
            "sampled": self.sampled,
            "num_iterations": self.num_iterations,
            "q": saved_q(self._nodes, self.q_init),
            "memory": [[text, reward] for text, (_, reward) in zip(self._memory_text, self._memory)],
            "rng": self.rng.bit_generator.state,
            **({} if self.planner is None else {"model": self.planner.state_dict()}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict`` saved by an agent with the same space and schedule; any other state raises
        ``AgentStateError`` and leaves the agent as it was.

        Every Q-value that moved was updated along a remembered trajectory, so re-reading the memory visits
        every saved state; a saved state or action the space does not produce means a different space config.
        """
        check_state(state, STATE_FORMAT, _STATE_TYPES, self.num_iterations)
        rng_state = checked_rng_state(state["rng"], self.rng)
        previous = self._nodes, self._memory, self._memory_text, self.planner
        self._nodes, self._memory, self._memory_text = {}, [], []
        self.planner = planner(self.space, self.planner and vars(self.planner.settings))
        try:
            self._restore_memory(state["memory"])
            self._restore_planned(state.get("model"))
            restore_q(self._nodes, state["q"])
        except AgentStateError:
            self._nodes, self._memory, self._memory_text, self.planner = previous
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

    def _restore_planned(self, saved: Any) -> None:
        """Refit the planner's model as saved and rebuild the states that only simulated blocks reached, so that
        their saved Q-values have a place."""
        if self.planner is None:
            return
        for text in self.planner.restore(saved, self._memory_text, [reward for _, reward in self._memory]):
            try:
                path = self._path(self.space.encode(text), text)
            except (TypeError, ValueError) as e:
                message = f"saved agent state planned {text}, which this agent cannot replay: {e}"
                raise AgentStateError(message) from None
            self.planner.replanned(text, (node for node, _ in path))

"""The agents: Q-learning's schedules, budget, update rule, replay and shaping, beating random search; and for
every agent (Q-learning, random search, regularized evolution) determinism and persistence."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from blockqnn.agents.base import PAPER_STAGES
from blockqnn.agents.evolution import RegularizedEvolution
from blockqnn.agents.qlearning import STATE_FORMAT, AgentStateError, QLearningAgent, epsilon_schedule
from blockqnn.codes import LayerType
from blockqnn.spaces import NSCSpace
from blockqnn.store import StoreError

ROOT = Path(__file__).resolve().parents[1]


class ChainSpace:
    """A toy space: one of 5 options at each of 6 positions; the state is the last (position, option)."""

    start = (-1, -1)

    def __init__(self, positions: int = 6, options: int = 5) -> None:
        self._actions = [tuple((p, o) for o in range(options)) for p in range(positions)]
        self._probs = np.full(options, 1 / options)

    def actions(self, state):
        return self._actions[state[0] + 1]

    def exploration_probs(self, state):
        return self._probs

    def is_final(self, action):
        return action[0] == len(self._actions) - 1

    def decode(self, actions):
        return ",".join(str(o) for _, o in actions)

    def encode(self, text):
        return list(enumerate(map(int, text.split(","))))

    def canonical_hash(self, text):
        return text

    def mutate(self, actions, rng):
        position, option = actions[int(rng.integers(len(actions)))]
        others = [o for o, _ in enumerate(self._probs) if o != option]
        return [(p, others[int(rng.integers(len(others)))] if p == position else o) for p, o in actions]


# A landscape with a known optimum: per-position preferences plus a bonus for one pair of adjacent options
# that neither position prefers on its own.
PREFS = np.random.default_rng(0).uniform(0.0, 0.05, size=(6, 5))
PAIR = int(np.argmin(PREFS[2]))


def chain_reward(options) -> float:
    bonus = 0.1 if options[2] == options[3] == PAIR else 0.0
    return 0.4 + float(PREFS[np.arange(6), list(options)].sum()) + bonus


CHAIN_OPTIMUM = max(itertools.product(range(5), repeat=6), key=chain_reward)


def options(trajectory) -> tuple[int, ...]:
    return tuple(o for _, o in trajectory)


def depth_reward(trajectory) -> float:
    """Rewards depth, above q_init: the setting in which Terminal's Q can run away."""
    return 0.5 + 0.03 * (len(trajectory) - 1)


def run(agent: QLearningAgent, reward, iterations: int | None = None) -> list[list]:
    """Sample and update for some iterations (default: to the schedule's end); returns every sampled trajectory."""
    sampled = []
    for _ in range(agent.num_iterations - agent.iteration if iterations is None else iterations):
        batch = agent.sample()
        agent.update(batch, [reward(t) for t in batch])
        sampled.extend(batch)
    return sampled


# ---- schedules --------------------------------------------------------------------------------------------------
def test_paper_schedule_is_178_iterations_and_11392_blocks():
    schedule = epsilon_schedule("paper")
    assert len(schedule) == sum(n for _, n in PAPER_STAGES) == 178
    assert schedule[:95] == [1.0] * 95 and schedule[-12:] == [0.1] * 12
    assert schedule == sorted(schedule, reverse=True)
    agent = QLearningAgent(ChainSpace())
    assert agent.num_iterations == 178 and agent.total_samples == 11_392 and agent.batch_size == 64


@pytest.mark.parametrize("scale", [0.5, 0.1, 0.01])
def test_scaled_paper_schedule_keeps_every_stage(scale):
    schedule = epsilon_schedule("paper", scale)
    assert [eps for eps, _ in itertools.groupby(schedule)] == [eps for eps, _ in PAPER_STAGES]
    for eps, n in PAPER_STAGES:
        assert schedule.count(eps) == max(1, int(n * scale + 0.5))
    assert len(schedule) < 178


def test_linear_and_constant_schedules():
    linear = epsilon_schedule("linear", 0.5, iterations=40, start=1.0, end=0.2)
    assert len(linear) == 20 and linear[0] == 1.0 and linear[-1] == pytest.approx(0.2)
    assert np.all(np.diff(linear) < 0)
    assert epsilon_schedule("constant", iterations=7, end=0.3) == [0.3] * 7


@pytest.mark.parametrize(("name", "scale"), [("cosine", 1.0), ("paper", 0.0), ("linear", -1.0)])
def test_bad_schedules_are_clear_errors(name, scale):
    with pytest.raises(ValueError, match="agent\\."):
        epsilon_schedule(name, scale)


def test_agent_configs_compose_and_random_keeps_the_budget():
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        qcfg = compose(overrides=["+agent=qlearning", "agent.schedule_scale=0.1"]).agent
        rcfg = compose(overrides=["+agent=random", "agent.schedule_scale=0.1", "agent.epsilon_schedule=paper"]).agent
        linear = compose(overrides=["+agent=random", "agent.epsilon_schedule=linear"]).agent
    q, r = instantiate(qcfg, space=ChainSpace(), seed=3), instantiate(rcfg, space=ChainSpace(), seed=3)
    assert q.schedule == epsilon_schedule("paper", 0.1) and q.alpha == 0.01 and q.replay_size == 128
    assert r.num_iterations == q.num_iterations and r.total_samples == q.total_samples
    assert set(r.schedule) == {1.0}
    assert instantiate(linear, space=ChainSpace()).num_iterations == 178


@pytest.mark.parametrize(("name", "first", "last"), [("paper", 1.0, 0.1), ("linear", 1.0, 0.1), ("constant", 0.1, 0.1)])
@pytest.mark.parametrize(("budget", "batch"), [(50, 16), (500, 1), (11_392, 64)])
def test_a_budget_sizes_any_schedule(name, first, last, budget, batch):
    agent = QLearningAgent(ChainSpace(), epsilon_schedule=name, budget=budget, batch_size=batch)
    assert agent.total_samples == budget and agent.num_iterations == -(-budget // batch)
    assert agent.sizes[:-1] == [batch] * (agent.num_iterations - 1) and 1 <= agent.sizes[-1] <= batch
    if name != "paper" or agent.num_iterations >= len(PAPER_STAGES):  # else the shortest stages vanish
        assert (agent.schedule[0], agent.schedule[-1]) == (first, pytest.approx(last))
    assert agent.schedule == sorted(agent.schedule, reverse=True)
    sampled = run(agent, chain_score)
    assert len(sampled) == budget and agent.done
    if name == "paper":  # the stages keep their share of the budget: 95 of 178 iterations at epsilon 1
        assert agent.schedule.count(1.0) / agent.num_iterations == pytest.approx(95 / 178, abs=1 / agent.num_iterations)
    if name == "paper" and budget == 11_392:
        assert agent.schedule == epsilon_schedule("paper")  # the paper's own schedule, exactly


def test_a_bad_budget_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^agent\.budget=0: expected an integer >= 1 or null$"):
        QLearningAgent(ChainSpace(), budget=0)
    with pytest.raises(ValueError, match=r"^agent\.schedule_scale=0\.5: agent\.budget sizes the schedule; "):
        QLearningAgent(ChainSpace(), budget=100, schedule_scale=0.5)
    with pytest.raises(ValueError, match=r"^agent\.replay_every=model: expected one of block, iteration$"):
        QLearningAgent(ChainSpace(), replay_every="model")


def test_done_after_the_schedule():
    agent = QLearningAgent(ChainSpace(), batch_size=2, epsilon_schedule="constant", schedule_iterations=3)
    run(agent, lambda t: 0.5)
    assert agent.done and agent.iteration == 3
    with pytest.raises(RuntimeError, match="finished"):
        agent.sample()


# ---- the update rule --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shaping", [True, False])
def test_backward_update_of_one_trajectory(shaping):
    alpha, q0, reward = 0.5, 0.5, 0.8
    space = ChainSpace(positions=3, options=2)
    agent = QLearningAgent(space, alpha=alpha, q_init=q0, shaping=shaping, replay=False)
    trajectory = [(0, 1), (1, 0), (2, 1)]
    agent.update([trajectory], [reward])
    step = reward / 3 if shaping else 0.0
    q_last = q0 + alpha * (reward - q0)
    q_mid = q0 + alpha * (step + max(q_last, q0) - q0)
    q_first = q0 + alpha * (step + max(q_mid, q0) - q0)
    assert agent.q_values((1, 0))[1] == pytest.approx(q_last)
    assert agent.q_values((0, 1))[0] == pytest.approx(q_mid)
    assert agent.q_values(space.start)[1] == pytest.approx(q_first)
    assert agent.q_values(space.start)[0] == q0


@pytest.mark.parametrize("replay_every", ["block", "iteration"])
def test_replay_size_counts_updates_per_block_or_per_iteration(replay_every, monkeypatch):
    """MetaQNN replays after every incorporated model: replay_size updates per block, not per iteration."""
    agent = QLearningAgent(ChainSpace(), batch_size=5, replay_size=7, replay_every=replay_every, seed=0)
    learnt = []
    learn = agent._learn
    monkeypatch.setattr(agent, "_learn", lambda path, reward: (learnt.append(reward), learn(path, reward)))
    counts = []
    for _ in range(3):
        batch = agent.sample()
        before = len(learnt)
        agent.update(batch, [chain_score(t) for t in batch])
        counts.append(len(learnt) - before)
    if replay_every == "block":
        assert counts == [5 * (1 + 7)] * 3
    else:  # without replacement, so at most the memory's size while it is smaller than replay_size
        assert counts == [5 + 5, 5 + 7, 5 + 7]


def test_replay_revisits_remembered_trajectories():
    space = ChainSpace(positions=2, options=2)
    plain = QLearningAgent(space, alpha=0.1, replay=False)
    replayed = QLearningAgent(space, alpha=0.1, replay_size=1, replay_every="iteration")
    for agent in (plain, replayed):
        agent.update([[(0, 0), (1, 0)]], [1.0])
    # One direct update, plus one replay of the only remembered trajectory.
    assert plain.q_values((0, 0))[0] == pytest.approx(0.55)
    assert replayed.q_values((0, 0))[0] == pytest.approx(0.55 + 0.1 * (1.0 - 0.55))


def test_update_rejects_bad_input():
    agent = QLearningAgent(ChainSpace())
    with pytest.raises(ValueError, match="rewards"):
        agent.update([[(0, 0)]], [0.5, 0.6])
    with pytest.raises(ValueError, match="finite"):
        agent.update([[(p, 0) for p in range(6)]], [float("nan")])
    with pytest.raises(ValueError, match="final"):
        agent.update([[(0, 0), (1, 0)]], [0.5])
    good = [(p, 0) for p in range(6)]
    with pytest.raises(ValueError, match="not a legal action"):
        agent.update([good, [(0, 0), (2, 0), (3, 0), (4, 0), (5, 0)]], [0.5, 0.5])
    assert agent.iteration == 0 and agent.state_dict()["memory"] == [] and agent.state_dict()["q"] == {}


def test_greedy_ties_follow_the_exploration_distribution():
    """A fresh agent's greedy step must not pick uniformly among NSC tuples: add/concat would swamp Terminal and
    most blocks would reach the maximum length (about 86% of them with uniform ties)."""
    space = NSCSpace(max_index=10)
    agent = QLearningAgent(space, epsilon_schedule="constant", epsilon_end=0.0, batch_size=300)
    lengths = np.array([len(t) for t in agent.sample()])
    assert np.mean(lengths == space.max_index) < 0.5
    assert len(set(lengths)) >= 8


# ---- the paper's claims on synthetic landscapes ----------------------------------------------------------------
def terminal_is_greedy(agent: QLearningAgent, space: NSCSpace, sampled) -> float:
    """Share of visited states where Terminal's Q is above every other action's (greedy would stop there)."""
    states = {layer for t in sampled for layer in t[:-1] if layer.index >= 1 and layer.index + 1 < space.max_index}
    verdicts = []
    for state in states:
        actions, q = space.actions(state), agent.q_values(state)
        terminal = next(i for i, a in enumerate(actions) if a.type == LayerType.TERMINAL)
        if q[terminal] != agent.q_init:
            verdicts.append(q[terminal] > np.delete(q, terminal).max())
    assert len(verdicts) >= 20
    return float(np.mean(verdicts))


@pytest.mark.parametrize("replay_every", ["iteration", "block"])
def test_shaping_keeps_terminal_below_non_terminal_actions_early(replay_every):
    """Unshaped, Terminal's Q runs ahead; replaying after every block spreads the deeper rewards back sooner,
    so the runaway is milder there, but shaping still keeps Terminal below the other actions."""
    space = NSCSpace(max_index=6)
    shares = {}
    for shaping in (True, False):
        agent = QLearningAgent(space, shaping=shaping, epsilon_override=1.0, batch_size=32, seed=0,
                               replay_every=replay_every)
        sampled = run(agent, depth_reward, iterations=3)
        shares[shaping] = terminal_is_greedy(agent, space, sampled)
    if replay_every == "iteration":
        assert shares[True] < 0.5 < 0.9 < shares[False]
    else:
        assert shares[True] < 0.5 and shares[True] + 0.15 < shares[False]


def first_hit(agent: QLearningAgent) -> int:
    """Samples until the chain optimum was first drawn (the whole budget if never)."""
    seen = 0
    while not agent.done:
        batch = agent.sample()
        hits = [i for i, t in enumerate(batch) if options(t) == CHAIN_OPTIMUM]
        if hits:
            return seen + hits[0]
        seen += len(batch)
        agent.update(batch, [chain_reward(options(t)) for t in batch])
    return seen


def test_qlearning_finds_the_optimum_more_often_and_sooner_than_random():
    settings = {"alpha": 0.3, "batch_size": 16, "schedule_scale": 0.2}
    budget = QLearningAgent(ChainSpace(), **settings).total_samples
    q_hits = [first_hit(QLearningAgent(ChainSpace(), seed=s, **settings)) for s in range(10)]
    r_hits = [first_hit(QLearningAgent(ChainSpace(), seed=s, epsilon_override=1.0, **settings)) for s in range(10)]
    found_q, found_r = sum(h < budget for h in q_hits), sum(h < budget for h in r_hits)
    assert found_q > found_r and found_q >= 3
    assert np.mean(q_hits) < np.mean(r_hits)


# ---- determinism and persistence -------------------------------------------------------------------------------
def chain_score(trajectory) -> float:
    return chain_reward(options(trajectory))


# Every agent the search loop can run, as its conf/agent/*.yaml would build it, on a small budget.
AGENTS = {
    "qlearning": lambda space, seed, budget=72: QLearningAgent(space, batch_size=8, alpha=0.3, budget=budget,
                                                               seed=seed),
    "random": lambda space, seed, budget=72: QLearningAgent(space, batch_size=8, epsilon_override=1.0, budget=budget,
                                                            seed=seed),
    "evolution": lambda space, seed, budget=72: RegularizedEvolution(space, batch_size=8, budget=budget, seed=seed),
}
every_agent = pytest.mark.parametrize("make", AGENTS.values(), ids=AGENTS.keys())


@every_agent
def test_same_seed_same_sequence_other_seed_other_sequence(make):
    def trace(seed):
        return run(make(ChainSpace(), seed), chain_score)

    assert trace(1) == trace(1)
    assert trace(1) != trace(2)


@every_agent
def test_state_dict_is_plain_json_and_restores_exactly(make):
    space = ChainSpace()
    agent = make(space, 4)
    run(agent, chain_score, iterations=3)
    state = json.loads(json.dumps(agent.state_dict()))
    clone = make(space, 99)
    clone.load_state_dict(state)
    assert clone.state_dict() == agent.state_dict()
    assert clone.iteration == 3 and len(state.get("memory", state.get("population"))) in (24, 10)
    assert run(clone, chain_score) == run(agent, chain_score)


@every_agent
def test_restoring_into_a_different_budget_is_refused(make):
    agent = make(ChainSpace(), 0, budget=64)
    run(agent, chain_score, iterations=1)
    with pytest.raises(AgentStateError, match="iterations"):
        make(ChainSpace(), 0, budget=128).load_state_dict(agent.state_dict())


def test_restoring_into_another_space_or_a_tampered_state_is_refused():
    agent = QLearningAgent(ChainSpace(), batch_size=8, alpha=0.3, seed=4)
    run(agent, chain_score, iterations=2)
    state = agent.state_dict()
    with pytest.raises(ValueError, match="not a legal action"):
        QLearningAgent(ChainSpace(options=3), batch_size=8).load_state_dict(state)
    state["q"]["(7, 7)"] = state["q"].pop(repr(ChainSpace.start))
    with pytest.raises(ValueError, match="no remembered block visits"):
        QLearningAgent(ChainSpace(), batch_size=8).load_state_dict(state)


START = repr(ChainSpace.start)
# A saved state damaged one way, and what the refusal says.
MALFORMED = {
    "not-a-mapping": (lambda state: [state], "is a list, not a mapping"),
    "format-only": (lambda state: {"format": STATE_FORMAT},
                    "iteration (int), sampled (int), num_iterations (int), q (dict), memory (list)"),
    "older-format": (lambda state: state | {"format": STATE_FORMAT - 1}, f"is not {STATE_FORMAT}"),
    "q-a-list": (lambda state: state | {"q": []}, "wrong type of: q (dict)"),
    "iteration-a-bool": (lambda state: state | {"iteration": True}, "wrong type of: iteration (int)"),
    "iteration-beyond-the-schedule": (lambda state: state | {"iteration": 10**6}, "at iteration 1000000 of"),
    "memory-entry-no-pair": (lambda state: state | {"memory": [["0,1"]]}, "not [block, reward]"),
    "memory-reward-text": (lambda state: state | {"memory": [["0,1,2,3,4,0", "high"]]}, "cannot replay"),
    "memory-reward-nan": (lambda state: state | {"memory": [["0,1,2,3,4,0", float("nan")]]}, "finite"),
    "memory-block-unfinished": (lambda state: state | {"memory": [["0,1", 0.5]]}, "cannot replay"),
    "q-value-text": (lambda state: state | {"q": {**state["q"], START: {"(0, 0)": "high"}}}, "not numbers"),
    "rng-of-another-generator": (lambda state: state | {"rng": {"bit_generator": "MT19937"}}, "random generator"),
}


@pytest.mark.parametrize("damage, message", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_saved_state_is_refused_and_changes_nothing(damage, message):
    saved = QLearningAgent(ChainSpace(), batch_size=8, alpha=0.3, seed=4)
    run(saved, chain_score, iterations=2)
    agent = QLearningAgent(ChainSpace(), batch_size=8, alpha=0.3, seed=5)
    run(agent, chain_score, iterations=1)
    before = agent.state_dict()
    with pytest.raises(AgentStateError, match=re.escape(message)) as info:
        agent.load_state_dict(damage(json.loads(json.dumps(saved.state_dict()))))
    assert isinstance(info.value, StoreError), "a resumed search reports it in one line"
    assert agent.state_dict() == before


CONTINUE = """
import json, sys
from blockqnn.agents.qlearning import QLearningAgent
from blockqnn.agents.evolution import RegularizedEvolution
from blockqnn.spaces import NSCSpace
agent = {make}
agent.load_state_dict(json.load(open(sys.argv[1])))
out = []
while not agent.done:
    batch = agent.sample()
    agent.update(batch, [0.5 + 0.03 * (len(t) - 1) for t in batch])
    out.append([agent.space.decode(t) for t in batch])
print(json.dumps(out))
"""


ON_NSC = {
    "qlearning": "QLearningAgent(NSCSpace(max_index=6), batch_size=8, schedule_scale=0.05, alpha=0.2, seed={seed})",
    "evolution": "RegularizedEvolution(NSCSpace(max_index=6), batch_size=8, budget=80, seed={seed})",
}


@pytest.mark.slow
@pytest.mark.parametrize("make", ON_NSC.values(), ids=ON_NSC.keys())
def test_saved_agent_continues_identically_in_a_fresh_process(tmp_path, make):
    agent = eval(make.format(seed=7))
    run(agent, depth_reward, iterations=5)
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(agent.state_dict()))
    expected = []
    while not agent.done:
        batch = agent.sample()
        agent.update(batch, [depth_reward(t) for t in batch])
        expected.append([agent.space.decode(t) for t in batch])
    assert expected, "the schedule must have iterations left after the save"
    script = CONTINUE.replace("{make}", make.format(seed=12345))
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, cwd=ROOT,
                          check=True)
    assert json.loads(done.stdout) == expected


def test_one_block_at_a_time_follows_the_schedule_in_blocks_and_learns_each_result():
    from blockqnn.agents.base import BatchAgent, StreamAgent

    agent = QLearningAgent(ChainSpace(), batch_size=4, alpha=0.5, epsilon_schedule="linear", schedule_iterations=3,
                           epsilon_start=1.0, epsilon_end=0.0, seed=1)
    assert isinstance(agent, StreamAgent) and isinstance(agent, BatchAgent)
    epsilons, trajectories = [], []
    while not agent.done:
        epsilons.append(agent.epsilon)
        trajectories.append(agent.sample_one())
    assert epsilons == [1.0] * 4 + [0.5] * 4 + [0.0] * 4 and agent.sampled == agent.total_samples == 12
    with pytest.raises(RuntimeError):
        agent.sample_one()
    before = agent.q_values(ChainSpace.start).copy()
    agent.incorporate(trajectories[0], 1.0)
    first = trajectories[0][0]
    assert agent.q_values(ChainSpace.start)[first[1]] > before[first[1]]
    assert agent.state_dict()["memory"] == [[ChainSpace().decode(trajectories[0]), 1.0]]


def test_a_stream_agent_restored_from_its_state_continues_identically():
    def stream(agent, steps):
        out = []
        for _ in range(steps):
            trajectory = agent.sample_one()
            agent.incorporate(trajectory, chain_reward(options(trajectory)))
            out.append(options(trajectory))
        return out

    agent = QLearningAgent(ChainSpace(), batch_size=4, alpha=0.3, replay_size=6, seed=2)
    stream(agent, 10)
    twin = QLearningAgent(ChainSpace(), batch_size=4, alpha=0.3, replay_size=6, seed=9)
    twin.load_state_dict(agent.state_dict())
    assert twin.sampled == 10 and twin.iteration == 2
    assert stream(twin, 20) == stream(agent, 20)

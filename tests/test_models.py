"""The reward model (``blockqnn.models``) and Q-learning that plans with it (``agent.model``): the encodings, the
fit's quality and determinism, the proposal rule, Dyna planning that never stores a simulated block, the agent's
exact restore with the model on, and searches from the command line (table and NSC space), killed and resumed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy.stats import spearmanr

from blockqnn.agents.qlearning import AgentStateError, QLearningAgent
from blockqnn.codes import Block
from blockqnn.errors import ConfigError
from blockqnn.models import RewardModel, encode
from blockqnn.schema import member_defaults
from blockqnn.search import search
from blockqnn.spaces.nasbench201 import NASBench201Space, all_archs
from tests.helpers import REPO, cli_env, history, run_cli, scored_by, stored_count
from tests.test_search_async import check_async_history
from tests.test_search_command import _signal_midway

PLANNING = {"proposals": 8, "exploit": True, "kappa": 0.5, "planning": 4, "warmup": 6, "trees": 10,
            "refit_growth": 0.2}
MODEL_ON = [f"agent.model.{key}={value}" for key, value in PLANNING.items()]


@pytest.fixture(scope="module")
def space(nb201_table):
    return NASBench201Space(nb201_table)


# ---- encodings ----------------------------------------------------------------------------------------------------
def test_a_nasbench201_cell_is_the_one_hot_of_its_edge_ops():
    vector = encode("|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|avg_pool_3x3~2|")
    assert vector.shape == (30,) and vector.sum() == 6
    assert list(vector.reshape(6, 5).argmax(1)) == [3, 0, 1, 0, 0, 4]


def test_an_nsc_block_encodes_as_its_dag_whatever_its_numbering():
    block = "[(1,1,3,0,0),(2,1,1,0,0),(3,5,0,1,2),(4,7,0,0,0)]"
    renumbered = "[(1,1,1,0,0),(2,1,3,0,0),(3,5,0,2,1),(4,7,0,0,0)]"  # the two convolutions swapped
    other = "[(1,1,5,0,0),(2,1,1,0,0),(3,5,0,1,2),(4,7,0,0,0)]"
    assert Block.parse(block).canonical() == Block.parse(renumbered).canonical()
    assert np.array_equal(encode(block), encode(renumbered))
    assert not np.array_equal(encode(block), encode(other))
    assert encode(block).shape == encode("[(1,4,0,0,0),(2,7,0,0,0)]").shape


# ---- the model ----------------------------------------------------------------------------------------------------
def configured_model():
    """The forest as ``agent.model`` configures it (conf/agent/qlearning.yaml)."""
    settings = member_defaults("agent", "qlearning")["model"]
    return RewardModel(settings["trees"], settings["max_features"])


def test_the_model_ranks_unseen_cells_and_its_fit_is_a_function_of_its_data(space):
    archs = list(np.random.default_rng(0).permutation(all_archs()))
    train, unseen = archs[:100], archs[100:600]
    rewards = [space.lookup(a) for a in train]
    mean, spread = configured_model().fit(train, rewards).predict(unseen)
    assert spearmanr(mean, [space.lookup(a) for a in unseen])[0] > 0.6
    assert (spread > 0).mean() > 0.9  # the trees disagree on blocks they have not seen
    again = configured_model().fit(train, rewards).predict(unseen)
    assert np.array_equal(mean, again[0]) and np.array_equal(spread, again[1])


# ---- the agent ----------------------------------------------------------------------------------------------------
def agent(space, seed=0, **model):
    return QLearningAgent(space, alpha=0.3, batch_size=4, budget=80, epsilon_schedule="linear",
                          model=model or None, seed=seed)


def run(agent_, space, iterations):
    for _ in range(iterations):
        batch = agent_.sample()
        agent_.update(batch, [space.lookup(space.decode(t)) for t in batch])


def test_each_trained_block_is_the_best_unscored_proposal_by_mean_plus_kappa_spread(space):
    planner = agent(space, proposals=16, kappa=2.0)
    run(planner, space, 6)
    assert planner.model.ready
    state = json.loads(json.dumps(planner.state_dict()))
    plain = agent(space)  # the same sampler without a model: draws the proposals the planner draws
    plain.load_state_dict(state)
    proposals = [space.decode(t) for t in plain.sample(16)]
    mean, spread = planner.model.predict(proposals)
    scored = {text for text, _ in state["memory"]}
    best = max((p for p in proposals if p not in scored), key=lambda p: (mean + 2.0 * spread)[proposals.index(p)])
    assert space.decode(planner.sample(1)[0]) == best != proposals[0]


def test_blocks_of_one_iteration_are_distinct_proposals(space):
    planner = agent(space, proposals=16, kappa=0.0)
    run(planner, space, 6)
    chosen = [space.decode(t) for t in planner.sample()]
    assert len(set(chosen)) == len(chosen)


def greedy(space, **model):
    """An agent at epsilon 0 after 6 iterations: with ``exploit`` it takes the model's pick of the neighbours."""
    a = QLearningAgent(space, alpha=0.3, batch_size=4, budget=80, epsilon_schedule="linear", epsilon_override=0.0,
                       model=model, seed=0)
    run(a, space, 6)
    return a


def test_exploit_trains_the_best_unscored_neighbour_of_the_incumbent_by_mean_plus_kappa_spread(space):
    exploiter = greedy(space, proposals=1, exploit=True, kappa=2.0)
    memory = exploiter.state_dict()["memory"]
    incumbent = max(memory, key=lambda entry: entry[1])[0]
    scored = {space.canonical_hash(text) for text, _ in memory}
    near = [space.decode(n) for n in space.neighbours(space.encode(incumbent))]
    mean, spread = exploiter.model.predict(near)
    fresh = [i for i, text in enumerate(near) if space.canonical_hash(text) not in scored]
    best = max(fresh, key=lambda i: mean[i] + 2.0 * spread[i])
    assert space.decode(exploiter.sample_one()) == near[best]
    # a second block asked for before the first's result (asynchronous search): the next best, not the same one
    assert space.decode(exploiter.sample_one()) == near[sorted(fresh, key=lambda i: mean[i] + 2.0 * spread[i])[-2]]


def test_exploit_falls_back_to_the_policy_once_every_neighbour_is_scored(space):
    exploiter = greedy(space, proposals=1, exploit=True)
    incumbent = exploiter._incumbent()
    near = space.neighbours(space.encode(incumbent))
    exploiter.update(near, [0.0] * len(near))  # every neighbour scored, none better than the incumbent
    assert exploiter._incumbent() == incumbent
    block = space.decode(exploiter.sample_one())
    assert block not in {space.decode(n) for n in near} and block == space.decode(exploiter._trajectory(0.0))


def test_dyna_planning_learns_from_predictions_and_remembers_only_real_blocks(space):
    rng = np.random.default_rng(1)
    blocks = [space.encode(a) for a in rng.choice(all_archs(), 40)]
    plain, planner = agent(space), agent(space, planning=10, warmup=8)
    for i in range(0, 40, 4):
        batch, rewards = blocks[i:i + 4], [space.lookup(space.decode(t)) for t in blocks[i:i + 4]]
        plain.update(batch, rewards)
        planner.update(batch, rewards)
    state = planner.state_dict()
    assert state["memory"] == plain.state_dict()["memory"]  # 40 real blocks, no simulated one
    assert state["model"]["fitted_on"] == 40 and state["model"]["planned"]
    assert state["q"] != plain.state_dict()["q"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_agent_planning_with_a_model_restores_exactly(space, mode):
    """The model is rebuilt from the saved memory, the states only simulated blocks reached from the saved list."""
    settings = {**PLANNING, "refit_growth": 0.2}
    original = agent(space, **settings)

    def step(a):
        if mode == "sync":
            run(a, space, 1)
        else:
            block = a.sample_one()
            a.incorporate(block, space.lookup(space.decode(block)))

    for _ in range(8):
        step(original)
    saved = json.loads(json.dumps(original.state_dict()))
    assert saved["model"]["planned"] and saved["model"]["fitted_on"] > 0
    restored = agent(space, seed=5, **settings)
    restored.load_state_dict(saved)
    for _ in range(6):
        step(original)
        step(restored)
    assert restored.state_dict() == original.state_dict()


def test_a_damaged_model_record_is_refused_and_changes_nothing(space):
    planner = agent(space, **PLANNING)
    run(planner, space, 4)
    before = planner.state_dict()
    for record in ({"fitted_on": 999, "planned": []}, {"fitted_on": 4}, [], {"fitted_on": 1, "planned": ["x"]}):
        with pytest.raises(AgentStateError):
            planner.load_state_dict({**before, "model": record})
        assert planner.state_dict() == before


def test_model_settings_are_checked(compose, table_search):
    with pytest.raises(ConfigError, match="agent.model.proposals=0"):
        compose(*table_search, "agent.model.proposals=0")
    with pytest.raises(ConfigError, match="agent.model.max_features=2"):
        compose(*table_search, "agent.model.max_features=2")


# ---- searches -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_search_planning_with_the_model_resumes_to_the_uninterrupted_history(compose, table_search, tmp_path,
                                                                                 mode):
    from tests.helpers import dying_after

    args = [*table_search, *MODEL_ON, f"search.mode={mode}"]
    reference = tmp_path / "reference"
    search(compose(*args), reference)
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        search(scored_by(compose(*args), dying_after(21)), killed)
    search(compose(*args, f"resume={killed}"), killed)
    if mode == "sync":  # bit-identical
        assert history(killed) == history(reference)
    else:  # nothing lost, nothing trained twice
        check_async_history(killed)
    assert history(killed)[1][1]["model"]["planned"]


@pytest.mark.slow
def test_a_sigkilled_table_search_with_the_model_resumes_exactly(compose, table_search, tmp_path):
    args = [a for a in table_search if not a.startswith("agent.")] + [
        "agent.batch_size=16", "agent.budget=320", "agent.alpha=0.3", *MODEL_ON]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    search(compose(*args), reference)
    proc = _signal_midway(args, killed, signal.SIGKILL, 100)
    assert proc.returncode == -signal.SIGKILL and 100 <= stored_count(killed) < 320
    resumed = run_cli(f"resume={killed}")
    assert resumed.returncode == 0, resumed.stderr
    assert history(killed) == history(reference)


@pytest.mark.slow
def test_a_sigkilled_async_search_with_the_model_loses_nothing_and_trains_nothing_twice(table_search, tmp_path):
    """Worker processes running blocks that take time (tests.timed): killed once the model is fitted and planning,
    resumed, checked as the asynchronous loop's own kill test checks a history."""
    run = tmp_path / "run"
    args = [*table_search, *MODEL_ON, "search.mode=async", "executor.workers=2"]
    assert _timed_search(run, args, kill_at=30).returncode == -signal.SIGKILL
    assert _timed_search(run, args).returncode == 0
    check_async_history(run)


def _timed_search(run, args, kill_at=None):
    """``python -m tests.timed RUN ARGS`` to its end, or SIGKILLed once ``kill_at`` candidates are stored."""
    env = cli_env()
    proc = subprocess.Popen([sys.executable, "-m", "tests.timed", str(run), *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while kill_at is not None and stored_count(run) < kill_at and proc.poll() is None:
        time.sleep(0.005)
    if proc.poll() is None and kill_at is not None:
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode in (0, -signal.SIGKILL), err
    return proc


@pytest.mark.slow
def test_a_search_with_the_model_in_the_nsc_space_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    done = run_cli("dataset=digits", "template=tiny", "logger=none", "progress.mode=off", "agent.batch_size=2",
                   "agent.budget=8", "trainer.max_epochs=1", "agent.model.proposals=4", "agent.model.warmup=3",
                   "agent.model.planning=2", f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr
    rows, (_, state) = history(run)
    assert len(rows) == 8 and state["model"]["fitted_on"] == 8
    assert "best block" in done.stdout.lower()

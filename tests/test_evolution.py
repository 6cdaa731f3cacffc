"""Regularized evolution: it beats random search, its mutations stay in the space, it ages its population, and its
saved state is checked before anything of the agent is replaced."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockqnn.agents.evolution import RegularizedEvolution
from blockqnn.agents.qlearning import QLearningAgent
from blockqnn.codes import Block
from blockqnn.errors import AgentStateError, StoreError
from blockqnn.spaces import NSCSpace, explore
from blockqnn.spaces.nasbench201 import NASBench201Space


@pytest.fixture(scope="module")
def table(nb201_table) -> NASBench201Space:
    return NASBench201Space(nb201_table)


def finds_optimum(agent, space: NASBench201Space) -> bool:
    optimum, found = space.best()[0], False
    while not agent.done:
        batch = agent.sample()
        archs = [space.decode(t) for t in batch]
        found |= optimum in archs
        agent.update(batch, [space.lookup(a) for a in archs])
    return found


def test_evolution_finds_the_optimum_more_often_than_random_search(table):
    evolution = sum(finds_optimum(RegularizedEvolution(table, batch_size=1, budget=300, seed=s), table)
                    for s in range(10))
    random = sum(finds_optimum(QLearningAgent(table, batch_size=1, budget=300, epsilon_override=1.0, seed=s), table)
                 for s in range(10))
    print(f"\nseeds of 10 that found the optimum in 300 queries: evolution {evolution}, random {random}")
    assert evolution >= 4 and evolution > random


def legal(space, actions) -> bool:
    state = space.start
    for action in actions:
        if action not in space.actions(state):
            return False
        state = action
    return space.is_final(actions[-1])


NSC_SPACES = [NSCSpace(), NSCSpace(max_index=5, types=[1, 3, 5, 7], kernels={"conv": [3]})]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(NSC_SPACES))
def test_an_nsc_mutation_changes_one_aspect_of_one_layer_and_keeps_the_block_valid(seed, space):
    rng = np.random.default_rng(seed)
    parent = explore(space, rng)
    assert_one_nsc_change(space, parent, space.mutate(parent, rng))


def assert_one_nsc_change(space: NSCSpace, parent: list, child: list) -> None:
    """``child`` is ``parent`` with one aspect of one layer changed (type, kernel or an input), and valid."""
    Block.of(child, space.max_index)  # raises if not a valid block
    assert legal(space, child) and len(child) == len(parent)
    changed = [(a, b) for a, b in zip(parent, child) if a != b]
    assert len(changed) == 1, (parent, child)
    (old, new), = changed
    inputs, new_inputs = set(old.preds), set(new.preds)
    if old.type == new.type:  # the kernel or one input
        assert (old.kernel != new.kernel and inputs == new_inputs) or (
            old.kernel == new.kernel and len(inputs - new_inputs) == 1)
    else:  # the type; the kernel kept where allowed, an input kept (or one added, or one dropped)
        assert old.kernel == new.kernel or old.kernel not in space.kernels[new.type]
        assert inputs <= new_inputs or new_inputs <= inputs


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(NSC_SPACES))
def test_the_nsc_neighbours_are_the_blocks_one_mutation_away(seed, space):
    rng = np.random.default_rng(seed)
    parent = explore(space, rng)
    neighbours = [tuple(n) for n in space.neighbours(parent)]
    for child in neighbours:
        assert_one_nsc_change(space, parent, list(child))
    assert len(set(neighbours)) == len(neighbours)
    mutations = {tuple(space.mutate(parent, rng)) for _ in range(100)}
    assert mutations - {tuple(parent)} <= set(neighbours)


def test_mutations_reach_every_neighbour():
    rng = np.random.default_rng(0)
    space = NSC_SPACES[1]
    parent = space.encode("[(1,1,3,0,0), (2,3,3,1,0), (3,5,0,1,2), (4,1,3,3,0), (5,7,0,0,0)]")
    neighbours = {tuple(n) for n in space.neighbours(parent)}
    assert len(neighbours) >= 10
    assert {tuple(space.mutate(parent, rng)) for _ in range(3000)} == neighbours


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_a_table_mutation_changes_one_edge(table, seed):
    rng = np.random.default_rng(seed)
    parent = explore(table, rng)
    child = table.mutate(parent, rng)
    assert legal(table, child) and table.lookup(table.decode(child)) >= 0
    assert sum(a != b for a, b in zip(parent, child)) == 1


def test_the_table_neighbours_are_the_cells_one_edge_op_away(table):
    parent = explore(table, np.random.default_rng(0))
    neighbours = {tuple(n) for n in table.neighbours(parent)}
    assert len(neighbours) == 6 * 4
    assert all(legal(table, list(n)) and sum(a != b for a, b in zip(parent, n)) == 1 for n in neighbours)
    rng = np.random.default_rng(1)
    assert {tuple(table.mutate(parent, rng)) for _ in range(1000)} == neighbours


def test_a_block_no_layer_of_which_can_change_comes_back_unchanged():
    space = NSCSpace(max_index=2, types=[1, 7], kernels={"conv": [3]})
    parent = explore(space, np.random.default_rng(0))
    assert space.mutate(parent, np.random.default_rng(0)) == parent
    assert space.neighbours(parent) == []


def test_random_until_the_population_is_full_then_children_of_tournament_winners(table):
    agent = RegularizedEvolution(table, population_size=5, tournament_size=5, batch_size=3, budget=12, seed=0)
    epsilons, batches = [], []
    while not agent.done:
        epsilons.append(agent.epsilon)
        batch = agent.sample()
        batches.append(batch)
        agent.update(batch, [table.lookup(table.decode(t)) for t in batch])
    assert epsilons == [1.0, 2 / 3, 0.0, 0.0] and [len(b) for b in batches] == [3, 3, 3, 3]
    members = [t for b in batches for t in b]
    assert [m[1] for m in agent.population] == members[-5:]  # the oldest died
    best = max(members[1:6], key=lambda t: table.lookup(table.decode(t)))  # the population after 6 members
    for child in batches[2]:  # a tournament of the whole population picks its best member: one edge away from it
        assert sum(a != b for a, b in zip(child, best)) == 1


def test_a_bad_configuration_is_a_clear_error(table):
    with pytest.raises(ValueError, match=r"^agent\.tournament_size=4: expected at most population_size \(3\)$"):
        RegularizedEvolution(table, population_size=3, tournament_size=4)
    with pytest.raises(ValueError, match=r"^agent\.budget=-5: expected an integer >= 1 or null$"):
        RegularizedEvolution(table, budget=-5)
    with pytest.raises(ValueError, match=r"^agent\.tournament_size=3: expected at most population_size \(2\)$"):
        RegularizedEvolution(table, population_size=2)  # against the default tournament


# A saved state damaged one way, and what the refusal says.
MALFORMED = {
    "a-q-learning-state": (lambda s: {k: s[k] for k in ("format", "iteration", "sampled", "num_iterations", "rng")}
                           | {"q": {}, "memory": []}, "wrong type of: population (list)"),
    "member-no-pair": (lambda s: s | {"population": [["x"]]}, "population member ['x'] that is not [block, reward]"),
    "member-reward-nan": (lambda s: s | {"population": [[s["population"][0][0], float("nan")]]}, "finite number"),
    "member-reward-text": (lambda s: s | {"population": [[s["population"][0][0], "high"]]}, "cannot restore"),
    "member-not-a-cell": (lambda s: s | {"population": [["|conv~0|", 0.5]]}, "which this agent cannot restore"),
    "too-many-members": (lambda s: s | {"population": s["population"] * 3}, "more than the population size 10"),
    "iteration-beyond-the-budget": (lambda s: s | {"iteration": 99}, "at iteration 99 of"),
}


@pytest.mark.parametrize("damage, message", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_saved_state_is_refused_and_changes_nothing(table, damage, message):
    saved = RegularizedEvolution(table, batch_size=4, budget=40, seed=1)
    for _ in range(4):
        batch = saved.sample()
        saved.update(batch, [table.lookup(table.decode(t)) for t in batch])
    agent = RegularizedEvolution(table, batch_size=4, budget=40, seed=2)
    before = agent.state_dict()
    with pytest.raises(AgentStateError, match=re.escape(message)) as info:
        agent.load_state_dict(damage(json.loads(json.dumps(saved.state_dict()))))
    assert isinstance(info.value, StoreError), "a resumed search reports it in one line"
    assert agent.state_dict() == before


def test_one_architecture_at_a_time_fills_the_population_then_mutates_and_restores(table):
    """Asynchronous search: ``sample_one`` and ``incorporate``, results arriving in any order; a state saved
    midway continues identically."""
    from blockqnn.agents.base import BatchAgent, StreamAgent

    def stream(agent, steps, late):
        out, pending = [], []
        for _ in range(steps):
            pending.append(agent.sample_one())
            out.append(table.decode(pending[-1]))
            if len(pending) > late:  # results come back ``late`` samples after their dispatch
                done = pending.pop(0)
                agent.incorporate(done, table.lookup(table.decode(done)))
        return out

    agent = RegularizedEvolution(table, population_size=5, tournament_size=2, batch_size=4, budget=40, seed=3)
    assert isinstance(agent, StreamAgent) and isinstance(agent, BatchAgent)
    first = stream(agent, 12, late=2)
    assert agent.sampled == 12 and agent.iteration == 3 and len(agent.population) == 5
    children = first[5:]
    assert all(min(sum(a != b for a, b in zip(table.encode(c), table.encode(p))) for p in first[:c_index + 5]) <= 1
               for c_index, c in enumerate(children))
    twin = RegularizedEvolution(table, population_size=5, tournament_size=2, batch_size=4, budget=40, seed=8)
    twin.load_state_dict(json.loads(json.dumps(agent.state_dict())))
    assert stream(twin, 20, late=0) == stream(agent, 20, late=0)
    stream(agent, 8, late=0)
    assert agent.done and agent.sampled == 40
    with pytest.raises(RuntimeError, match="finished"):
        agent.sample_one()

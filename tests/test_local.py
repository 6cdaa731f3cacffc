"""Local search (``agent=local``): it walks to the best neighbour and restarts at a local optimum, in batches and one
block at a time; its saved state continues identically and is checked before anything is replaced; and it
searches through the command line, on the table and in the NSC space, resuming after SIGKILL."""

from __future__ import annotations

import json
import re
import signal

import pytest
from hydra.utils import instantiate

from blockqnn.agents import BatchAgent, GuidedEvolution, LocalSearch, StreamAgent
from blockqnn.errors import AgentStateError, StoreError
from blockqnn.report.analysis import load_history
from blockqnn.search import search
from blockqnn.spaces.nasbench201 import NASBench201Space
from blockqnn.store import Store
from tests.helpers import dying_after, history, run_cli, scored_by, stored_count
from tests.test_search_command import TINY_TRAINING, _interrupt_a_real_search


@pytest.fixture(scope="module")
def table(nb201_table) -> NASBench201Space:
    return NASBench201Space(nb201_table)


TARGET = ("nor_conv_3x3", "skip_connect", "nor_conv_1x1", "avg_pool_3x3", "none", "nor_conv_3x3")


def closeness(actions) -> float:
    """A landscape with one local optimum, TARGET: the share of edges with TARGET's op."""
    return sum(op == want for (_, op), want in zip(actions, TARGET)) / len(TARGET)


def walk(agent: LocalSearch, reward=closeness) -> list[dict]:
    """The whole search, one block at a time: each block with the epsilon and incumbent it was drawn at."""
    steps = []
    while not agent.done:
        epsilon, incumbent = agent.epsilon, getattr(agent, "incumbent", None)
        [block] = agent.sample()
        steps.append(dict(block=block, epsilon=epsilon, incumbent=incumbent, reward=reward(block)))
        agent.update([block], [reward(block)])
    return steps


def test_the_walk_moves_to_the_best_neighbour_and_restarts_at_the_local_optimum(table):
    agent = LocalSearch(table, num_init=5, batch_size=1, budget=300, seed=0)
    steps = walk(agent)
    decode = table.decode
    assert [s["epsilon"] for s in steps[:5]] == [1.0] * 5 and steps[5]["epsilon"] == 0.0
    assert steps[5]["incumbent"] == max(((decode(s["block"]), s["reward"]) for s in steps[:5]), key=lambda x: x[1])
    restarts = 0
    for i, step in enumerate(steps[5:], start=5):
        if step["epsilon"] == 0.0:  # a neighbour of the incumbent
            parent = table.encode(step["incumbent"][0])
            assert sum(a != b for a, b in zip(parent, step["block"])) == 1
        else:  # a restart: only at the local optimum, once each of its neighbours was queried
            restarts += 1
            assert step["incumbent"][0] == decode(list(enumerate(TARGET)))
            queried = {decode(s["block"]) for s in steps[:i]}
            assert {decode(n) for n in table.neighbours(table.encode(step["incumbent"][0]))} <= queried
    moves = [(a["incumbent"], b["incumbent"]) for a, b in zip(steps[5:], steps[6:])
             if a["incumbent"] != b["incumbent"] and b["epsilon"] == 0.0 and a["epsilon"] == 0.0]
    assert moves and all(new[1] > old[1] for old, new in moves)  # each move to a better block
    for old, new in moves:  # ... the best neighbour (queried now or known from before)
        neighbours = table.neighbours(table.encode(old[0]))
        assert table.encode(new[0]) in neighbours and new[1] == max(map(closeness, neighbours))
    assert restarts >= 2


def test_known_blocks_are_passed_over_or_queried_again_as_nasLib_does(table):
    def repeats(skip_known: bool) -> int:
        steps = walk(LocalSearch(table, num_init=5, skip_known=skip_known, batch_size=1, budget=200, seed=1))
        neighbours = [table.decode(s["block"]) for s in steps if s["epsilon"] == 0.0]
        return len(neighbours) - len(set(neighbours))

    assert repeats(skip_known=True) == 0
    assert repeats(skip_known=False) > 0  # the previous incumbent is a neighbour of the next


def test_batches_draw_neighbours_together_and_fill_with_random_blocks_while_results_are_out(table):
    agent = LocalSearch(table, num_init=3, batch_size=8, budget=96, seed=2)
    first = agent.sample()
    assert agent.pending == 8 and agent.epsilon == 1.0  # 3 random, then 5 fillers: nothing came back yet
    agent.update(first, [closeness(b) for b in first])
    best = max(first, key=closeness)
    assert agent.incumbent == (table.decode(best), closeness(best)) and agent.epsilon == 0.0
    second = agent.sample()
    assert all(sum(a != b for a, b in zip(best, block)) == 1 for block in second)
    agent.update(second, [closeness(b) for b in second])
    while not agent.done:
        batch = agent.sample()
        agent.update(batch, [closeness(b) for b in batch])
    assert agent.best[1] == 1.0  # the optimum


def stream(agent: LocalSearch, steps: int, late: int, table: NASBench201Space) -> list[str]:
    """One block at a time; results come back ``late`` samples after their dispatch."""
    out, pending = [], []
    for _ in range(steps):
        pending.append(agent.sample_one())
        out.append(table.decode(pending[-1]))
        if len(pending) > late:
            done = pending.pop(0)
            agent.incorporate(done, table.lookup(table.decode(done)))
    return out


def test_one_block_at_a_time_walks_with_results_out_and_a_saved_state_continues_identically(table):
    agent = LocalSearch(table, num_init=4, batch_size=4, budget=120, seed=3)
    assert isinstance(agent, StreamAgent) and isinstance(agent, BatchAgent)
    stream(agent, 50, late=3, table=table)
    assert agent.sampled == 50 and agent.iteration == 12 and agent.pending == 3 and agent.incumbent
    twin = LocalSearch(table, num_init=4, batch_size=4, budget=120, seed=9)
    twin.load_state_dict(json.loads(json.dumps(agent.state_dict())))
    assert stream(twin, 40, late=2, table=table) == stream(agent, 40, late=2, table=table)
    stream(agent, 30, late=0, table=table)
    assert agent.done
    with pytest.raises(RuntimeError, match="finished"):
        agent.sample_one()


def test_a_saved_state_between_iterations_continues_identically(table):
    def run(agent, iterations):
        out = []
        for _ in range(iterations):
            batch = agent.sample()
            out.append([table.decode(b) for b in batch])
            agent.update(batch, [table.lookup(a) for a in out[-1]])
        return out

    agent = LocalSearch(table, num_init=6, batch_size=5, budget=100, seed=4)
    run(agent, 7)
    twin = LocalSearch(table, num_init=6, batch_size=5, budget=100, seed=5)
    twin.load_state_dict(json.loads(json.dumps(agent.state_dict())))
    assert run(twin, 13) == run(agent, 13)


# A saved state damaged one way, and what the refusal says.
MALFORMED = {
    "an-evolution-state": (lambda s: {k: s[k] for k in ("format", "iteration", "sampled", "num_iterations", "rng")}
                           | {"population": []}, "wrong type of: to_init (int), pending (int), walk (list)"),
    "walk-not-pairs": (lambda s: s | {"walk": [["x"], None]}, "walk architecture ['x'] that is not [block, reward]"),
    "walk-of-three": (lambda s: s | {"walk": [None, None, None]}, "no [best, incumbent] walk"),
    "walk-reward-nan": (lambda s: s | {"walk": [[s["walk"][0][0], float("nan")], None]}, "finite number"),
    "queue-not-a-cell": (lambda s: s | {"queue": ["|conv~0|"]}, "which this agent cannot restore"),
    "pending-beyond-sampled": (lambda s: s | {"pending": s["sampled"] + 1}, "pending"),
    "to-init-beyond-num-init": (lambda s: s | {"to_init": 99}, "to_init 99"),
    "iteration-beyond-the-budget": (lambda s: s | {"iteration": 99}, "at iteration 99 of"),
}


@pytest.mark.parametrize("damage, message", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_saved_state_is_refused_and_changes_nothing(table, damage, message):
    saved = LocalSearch(table, num_init=3, batch_size=4, budget=40, seed=1)
    stream(saved, 12, late=0, table=table)
    agent = LocalSearch(table, num_init=3, batch_size=4, budget=40, seed=2)
    stream(agent, 5, late=1, table=table)
    before = agent.state_dict()
    with pytest.raises(AgentStateError, match=re.escape(message)) as info:
        agent.load_state_dict(damage(json.loads(json.dumps(saved.state_dict()))))
    assert isinstance(info.value, StoreError), "a resumed search reports it in one line"
    assert agent.state_dict() == before


def test_a_bad_setting_is_a_clear_error(table):
    with pytest.raises(ValueError, match=r"^agent\.num_init=0: expected an integer >= 1$"):
        LocalSearch(table, num_init=0)


# ---- through the search loop and the command line -------------------------------------------------------------
def table_search_by(agent: str, table_search: list[str], *extra: str) -> list[str]:
    """The table search's overrides for ``agent`` (Q-learning's own settings left out)."""
    return [a for a in table_search if not a.startswith("agent.")] + [f"agent={agent}", *extra]


def test_a_table_search_from_the_command_line(nb201_table, tmp_path):
    run = tmp_path / "run"
    out = run_cli("experiment=nasbench201", f"space.table={nb201_table}", "agent=local", "agent.budget=60",
                  "logger=none", "progress.mode=off", f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr
    rows, (_, state) = history(run)
    assert len(rows) == 60 and state["sampled"] == 60
    assert [r["epsilon"] for r in rows[:10]] == [1.0] * 10 and rows[10]["epsilon"] == 0.0
    best = max(rows, key=lambda r: r["reward"])
    assert f"best block: {best['arch']}" in out.stdout
    assert load_history(run, 1).agent == "local"  # as the report and the agents' comparison name it


@pytest.mark.slow
def test_an_nsc_search_trains_its_blocks_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    out = run_cli(*[a for a in TINY_TRAINING if not a.startswith("agent.")], "agent=local", "agent.num_init=2",
                  "agent.batch_size=2", "agent.budget=5", "trainer.max_epochs=1", "search.mode=sync",
                  f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr
    rows, (_, state) = history(run)
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows)
    assert [r["epsilon"] for r in rows] == [1.0, 1.0, 0.0, 0.0, 0.0]
    incumbent = state["walk"][1][0]
    assert incumbent == max(rows[:2], key=lambda r: r["reward"])["arch"]
    with Store.open(run, readonly=True) as store:
        nsc = instantiate(store.config().space)
    neighbours = {nsc.canonical_hash(nsc.decode(n)) for n in nsc.neighbours(nsc.encode(incumbent))}
    assert {r["hash"] for r in rows[2:]} <= neighbours


@pytest.mark.slow
def test_sigkilled_search_resumes_to_exactly_the_uninterrupted_history(compose, table_search, tmp_path):
    killed = tmp_path / "killed"
    args, reference, total, proc = _interrupt_a_real_search(compose, table_search, killed, signal.SIGKILL, "local")
    stored = stored_count(killed)
    assert proc.returncode == -signal.SIGKILL and total // 3 <= stored < total, (stored, total)
    resumed = run_cli(*args, f"resume={killed}")
    assert resumed.returncode == 0, resumed.stderr
    assert history(killed) == reference


def test_async_search_interrupted_resumes_to_the_uninterrupted_history(compose, table_search, tmp_path):
    args = table_search_by("local", table_search, "agent.num_init=5", "agent.batch_size=4", "agent.budget=80",
                              "search.mode=async")
    search(compose(*args), tmp_path / "reference")
    with pytest.raises(KeyboardInterrupt):
        search(scored_by(compose(*args), dying_after(37)), tmp_path / "killed")
    search(compose(*args, f"resume={tmp_path / 'killed'}"), tmp_path / "killed")

    def untimed(run):
        rows, state = history(run)
        return [{k: v for k, v in row.items() if k != "dispatched_at"} for row in rows], state

    assert untimed(tmp_path / "killed") == untimed(tmp_path / "reference")
    rows, (_, state) = untimed(tmp_path / "killed")
    assert len(rows) == state["sampled"] == 80 and {r["epsilon"] for r in rows} == {0.0, 1.0}
    assert len({r["hash"] for r in rows if not r["cached"]}) == sum(not r["cached"] for r in rows)


# ---- predictor-guided evolution (agent=guided_evolution) --------------------------------------------------------
def guided(table, **kw) -> GuidedEvolution:
    return GuidedEvolution(table, **{"num_init": 5, "num_candidates": 30, "trees": 5, "batch_size": 1,
                                     "budget": 40, "seed": 0} | kw)


def test_guided_evolution_trains_the_mutation_of_the_best_that_the_model_rates_best(table):
    agent = guided(table)
    steps = walk(agent)
    assert [s["epsilon"] for s in steps] == [1.0] * 5 + [0.0] * 35
    archs = [table.decode(s["block"]) for s in steps]
    assert len({table.canonical_hash(a) for a in archs}) == len(archs)  # nothing sampled twice
    for i, step in enumerate(steps[5:], start=5):  # one mutation from one of the 2 best so far
        best = sorted(steps[:i], key=lambda s: -s["reward"])[:2]
        assert min(sum(a != b for a, b in zip(p["block"], step["block"])) for p in best) == 1
    twin = guided(table, seed=0)  # the choice is the model's: with the same candidates, kappa changes it
    other = guided(table, seed=0, kappa=50.0)
    assert [table.decode(s["block"]) for s in walk(twin)] == archs
    assert [table.decode(s["block"]) for s in walk(other)] != archs


def test_guided_evolution_restores_its_model_and_continues_identically(table):
    agent = guided(table, batch_size=4, budget=80, refit_growth=0.0)
    stream(agent, 30, late=2, table=table)
    assert agent.model.fitted_on == len(agent.results) == 28
    twin = guided(table, batch_size=4, budget=80, refit_growth=0.0, seed=7)
    twin.load_state_dict(json.loads(json.dumps(agent.state_dict())))
    assert stream(twin, 30, late=1, table=table) == stream(agent, 30, late=1, table=table)
    saved = agent.state_dict()
    with pytest.raises(AgentStateError, match="fitted on 99 of"):
        twin.load_state_dict(saved | {"fitted_on": 99})


def test_a_guided_table_search_resumes_after_an_interruption(compose, table_search, tmp_path):
    args = table_search_by("guided_evolution", table_search, "agent.num_init=5", "agent.trees=5",
                           "agent.batch_size=4", "agent.budget=40")
    search(compose(*args), tmp_path / "reference")
    with pytest.raises(KeyboardInterrupt):
        search(scored_by(compose(*args), dying_after(19)), tmp_path / "killed")
    search(compose(*args, f"resume={tmp_path / 'killed'}"), tmp_path / "killed")
    assert history(tmp_path / "killed") == history(tmp_path / "reference")
    rows, _ = history(tmp_path / "killed")
    assert len(rows) == 40 and {r["epsilon"] for r in rows} == {0.0, 1.0}


@pytest.mark.slow
def test_a_guided_nsc_search_trains_its_blocks_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    out = run_cli(*[a for a in TINY_TRAINING if not a.startswith("agent.")], "agent=guided_evolution",
                  "agent.num_init=2", "agent.trees=5", "agent.batch_size=2", "agent.budget=5", "trainer.max_epochs=1",
                  "search.mode=sync", f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr
    rows, (_, state) = history(run)
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows) and state["fitted_on"] == 5  # fits at 2, 4, 5
    assert [r["epsilon"] for r in rows] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert len({r["hash"] for r in rows}) == 5


def test_a_guided_search_reads_as_its_agent_in_the_report(compose, table_search, tmp_path):
    search(compose(*table_search_by("guided_evolution", table_search, "agent.budget=8", "agent.num_init=4")), tmp_path)
    assert load_history(tmp_path, 1).agent == "guided_evolution"


@pytest.mark.parametrize("preset", ["quickstart", "nasbench201", "paper_cifar100", "cifar10_small"])
def test_both_agents_run_under_every_preset_with_its_budget(compose, nb201_table, preset):
    space = f"space.table={nb201_table}" if preset == "nasbench201" else "space=nsc"
    budgets = set()
    for agent in ("qlearning", "local", "guided_evolution"):
        cfg = compose(f"experiment={preset}", f"agent={agent}", space)
        budgets.add(instantiate(cfg.agent, space=instantiate(cfg.space), seed=0).total_samples)
    assert len(budgets) == 1


@pytest.mark.parametrize("make", [lambda t, budget: LocalSearch(t, batch_size=4, budget=budget),
                                  lambda t, budget: guided(t, batch_size=4, budget=budget)], ids=["local", "guided"])
def test_restoring_into_a_different_budget_is_refused(table, make):
    agent = make(table, 40)
    stream(agent, 10, late=0, table=table)
    with pytest.raises(AgentStateError, match="iterations"):
        make(table, 80).load_state_dict(agent.state_dict())

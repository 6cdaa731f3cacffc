"""The search loop on the NAS-Bench-201 table space (rewards without training): history, dedupe, failures,
resume after a kill, refused resumes, multiruns, Ray, presets and one-line errors for bad input."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from blockqnn.agents.qlearning import QLearningAgent, epsilon_schedule
from blockqnn.cli import describe, one_line_errors, user_errors
from blockqnn.codes import Block, NSCError
from blockqnn.errors import UserError
from blockqnn.evaluate import evaluate_candidate
from blockqnn.report import report
from blockqnn.resume import check_same_history, overridden_keys
from blockqnn.search import search
from blockqnn.spaces.nasbench201 import NASBench201Space, write_synthetic_table
from blockqnn.store import DB_NAME, Store, StoreError
from blockqnn.tracking import Progress
from tests.helpers import REPO, folder_digest, read_wandb_run, run_cli

TIMES = ("wall_time", "started_at", "finished_at")


def history(run_dir: Path) -> tuple[list[dict], dict]:
    """Candidates without their timings, and the last agent checkpoint."""
    with Store.open(run_dir, readonly=True) as store:
        rows = [{k: v for k, v in row.items() if k not in TIMES} for row in store.candidates()]
        return rows, store.latest_agent_state()


def test_every_sampled_block_is_recorded_and_no_block_is_evaluated_twice(compose, table_search, tmp_path):
    cfg = compose(*table_search, "space.ops=[none,skip_connect,nor_conv_3x3]")  # 729 cells: many repeats
    evaluated = []

    def counting(arch, cfg):
        evaluated.append(arch)
        return evaluate_candidate(arch, cfg)

    best = search(cfg, tmp_path, evaluate=counting)
    rows, (last, state) = history(tmp_path)
    iterations, batch = len(set(r["iteration"] for r in rows)), cfg.agent.batch_size
    assert [(r["iteration"], r["position"]) for r in rows] == [(i, p) for i in range(iterations) for p in range(batch)]
    assert last == iterations - 1 and state["iteration"] == iterations == state["num_iterations"]
    first = {}
    for row in rows:
        if row["cached"]:
            original = first[row["hash"]]  # a cached copy always follows the block's evaluation
            assert {k: row[k] for k in ("status", "reward", "accuracy")} == {
                k: original[k] for k in ("status", "reward", "accuracy")}
        else:
            assert row["hash"] not in first
            first[row["hash"]] = row
    assert len(evaluated) == len(first) == len(set(evaluated))
    assert sum(r["cached"] for r in rows) > 0
    within_batch = Counter((r["iteration"], r["hash"]) for r in rows)
    assert max(within_batch.values()) > 1, "no repeat inside one batch: that path went untested"
    assert best["reward"] == max(r["reward"] for r in rows)
    assert {r["epsilon"] for r in rows if r["iteration"] == 0} == {1.0}


def test_failed_candidates_are_recorded_and_rewarded_failed_reward(compose, table_search, tmp_path, monkeypatch):
    from blockqnn.evaluate import Result

    def flaky(arch, cfg):
        if int(hashlib.sha256(arch.encode()).hexdigest(), 16) % 3 == 0:
            return Result(status="failed", error="RuntimeError: CUDA out of memory (injected)")
        return evaluate_candidate(arch, cfg)

    seen_rewards = []
    update = QLearningAgent.update
    monkeypatch.setattr(QLearningAgent, "update", lambda self, t, r: (seen_rewards.extend(r), update(self, t, r))[1])
    search(compose(*table_search, "failed_reward=-0.25"), tmp_path, evaluate=flaky)
    rows, _ = history(tmp_path)
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed and all("out of memory" in r["error"] and r["reward"] is None for r in failed)
    assert seen_rewards == [-0.25 if r["status"] == "failed" else r["reward"] for r in rows]


def dying_after(n: int):
    """An evaluator that is interrupted (as by Ctrl-C) when asked for its (n+1)-th candidate."""
    calls = []

    def evaluate(arch, cfg):
        calls.append(arch)
        if len(calls) > n:
            raise KeyboardInterrupt
        return evaluate_candidate(arch, cfg)

    return evaluate


def test_interrupted_search_resumes_to_the_same_history(compose, table_search, tmp_path):
    """In-process kill at an arbitrary candidate (the subprocess SIGKILL test below does it for real)."""
    reference = tmp_path / "reference"
    search(compose(*table_search), reference)
    for stop_after in (5, 13):  # inside the first iteration, and inside a later one
        run = tmp_path / f"killed-{stop_after}"
        with pytest.raises(KeyboardInterrupt):
            search(compose(*table_search), run, evaluate=dying_after(stop_after))
        assert 0 < len(history(run)[0]) < len(history(reference)[0])
        search(compose(*table_search, f"resume={run}"), run)
        assert history(run) == history(reference)


def test_a_run_resumes_from_another_working_folder(compose, table_search, nb201_table, tmp_path, monkeypatch):
    """Relative data and table paths are stored absolute: ``resume=`` works from anywhere."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    shutil.copy(nb201_table, tmp_path / "a" / "table.csv")
    monkeypatch.chdir(tmp_path / "a")
    args = [a for a in table_search if not a.startswith("space.table")] + ["space.table=table.csv"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    search(compose(*args), reference)
    with pytest.raises(KeyboardInterrupt):
        search(compose(*args), run, evaluate=dying_after(5))
    monkeypatch.chdir(tmp_path / "b")
    overrides = ["logger=none", "progress.mode=off", f"resume={run}"]
    search(compose(*overrides), run, overridden=overridden_keys(overrides))
    assert history(run) == history(reference)


def test_resume_with_a_moved_table_must_find_the_same_accuracies(compose, table_search, nb201_table, tmp_path):
    run = tmp_path / "run"
    search(compose(*table_search), run)
    before = folder_digest(run)
    moved = shutil.copy(nb201_table, tmp_path / "moved.csv")
    other = write_synthetic_table(tmp_path / "other.csv", seed=1)
    partial = tmp_path / "partial.csv"
    partial.write_text("".join(nb201_table.read_text().splitlines(True)[:2]))
    for table in (other, partial):  # other accuracies; stored candidates missing
        with pytest.raises(UserError, match="not the table the search started with"):
            search(compose(*table_search, f"space.table={table}", f"resume={run}"), run)
    assert folder_digest(run) == before
    search(compose(*table_search, f"space.table={moved}", f"resume={run}"), run)  # same table, new place: fine


def test_resume_alone_continues_a_run_started_with_other_settings(compose, table_search, tmp_path):
    """``resume=RUN_DIR`` needs none of the original overrides: unset sections come from the history."""
    reference, run = tmp_path / "reference", tmp_path / "run"
    search(compose(*table_search), reference)
    with pytest.raises(KeyboardInterrupt):
        search(compose(*table_search), run, evaluate=dying_after(5))
    overrides = ["logger=none", "progress.mode=off", f"resume={run}"]
    assert overridden_keys(overrides) == {"logger", "progress.mode", "resume"}
    search(compose(*overrides), run, overridden=overridden_keys(overrides))
    assert history(run) == history(reference)
    with pytest.raises(UserError, match=r"agent\.alpha"):  # a key the command line does set must agree
        overrides = [*overrides, "agent.alpha=0.9"]
        search(compose(*overrides), run, overridden=overridden_keys(overrides))


def test_resume_naming_one_leaf_keeps_the_rest_of_its_section(compose, table_search, tmp_path):
    """``resume=RUN trainer.accelerator=cpu`` changes where candidates train, not the stored recipe."""
    run = tmp_path / "run"
    search(compose(*table_search, "trainer.max_epochs=3", "agent.epsilon_override=1.0"), run)
    overrides = ["logger=none", "progress.mode=off", "trainer.accelerator=cpu", f"resume={run}"]
    search(compose(*overrides), run, overridden=overridden_keys(overrides))
    with Store.open(run, readonly=True) as store:
        assert store.config().trainer.max_epochs == 3 and store.config().agent.epsilon_override == 1.0


def test_a_search_refuses_several_devices_per_candidate(compose, table_search, tmp_path):
    with pytest.raises(UserError, match="one device"):
        search(compose(*table_search, "trainer.devices=2"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_resume_refuses_a_config_that_changes_the_history(compose, table_search, tmp_path):
    search(compose(*table_search), tmp_path)
    before = folder_digest(tmp_path)
    for change, key in [("agent.alpha=0.3", "agent.alpha"), ("seed=1", "seed"), ("failed_reward=-1", "failed_reward"),
                        ("agent=random", "agent.epsilon_override")]:
        with pytest.raises(UserError, match=key.replace(".", r"\.")):
            search(compose(*table_search, change, f"resume={tmp_path}"), tmp_path)
    assert folder_digest(tmp_path) == before


def test_resume_allows_harmless_changes_and_trains_nothing_again(compose, table_search, tmp_path):
    search(compose(*table_search), tmp_path)
    rows, state = history(tmp_path)
    evaluated = []
    search(compose(*table_search, "executor.threads=1", "executor.workers=0", "progress.mode=log",
                   "output_root=elsewhere", "trainer.accelerator=cpu", "trainer.eval_batch_size=64",
                   f"resume={tmp_path}"), tmp_path, evaluate=lambda arch, cfg: evaluated.append(arch))
    assert evaluated == [] and history(tmp_path) == (rows, state)


def test_changed_keys_are_named():
    with pytest.raises(UserError, match=r"dataset\.val_size \(300 -> 200\)"):
        check_same_history({"dataset": {"val_size": 300, "source": {"root": "a"}}, "logger": {"project": "x"}},
                           {"dataset": {"val_size": 200, "source": {"root": "b"}}, "logger": {"project": "y"}})
    check_same_history({"dataset": {"source": {"root": "a"}}, "executor": {"workers": 1}},  # data moved: allowed
                       {"dataset": {"source": {"root": "b"}}, "executor": {"workers": 4}})


def test_resume_of_a_folder_written_by_another_search_is_refused(compose, table_search, nb201_table, tmp_path):
    search(compose(*table_search), tmp_path)
    other = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    accuracy = NASBench201Space(nb201_table).lookup(other)
    with sqlite3.connect(tmp_path / DB_NAME) as db:  # pretend the last iteration was never checkpointed...
        db.execute("DELETE FROM agent_checkpoints")
        db.execute("UPDATE candidates SET arch = ?, accuracy = ? WHERE iteration = 0 AND position = 0",
                   (other, accuracy))  # ...and its first block (true to the table) differs from the sample
    with pytest.raises(StoreError, match="does not match the agent's sample"):
        search(compose(*table_search, f"resume={tmp_path}"), tmp_path)


def test_one_line_errors_for_bad_input(capsys):
    with pytest.raises(SystemExit) as exit_info, one_line_errors(full=False):
        Block.parse("[(1,9,0,0,0),(2,7,0,0,0)]")
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.startswith("error: layer 1") and err.count("\n") == 1
    with pytest.raises(NSCError), one_line_errors(full=True):
        Block.parse("(1,1)")
    with pytest.raises(ZeroDivisionError), one_line_errors(full=False):  # a bug keeps its traceback
        _ = 1 / 0
    assert describe(user_errors(FileNotFoundError(2, "No such file or directory", "/x.csv"))) == (
        "No such file or directory: /x.csv")


@pytest.mark.slow
def test_ray_search_matches_the_local_one_and_runs_async(compose, table_search, tmp_path):
    local, ray = tmp_path / "local", tmp_path / "ray"
    search(compose(*table_search), local)
    on_ray = [*(o for o in table_search if not o.startswith("executor.")), "executor=ray", "executor.init.num_cpus=2"]
    search(compose(*on_ray), tmp_path / "async")  # two CPUs: two candidates at once, so asynchronous (ray.wait)
    check_async_history(tmp_path / "async")
    search(compose(*on_ray, "search.mode=sync"), ray)
    assert history(ray) == history(local)


@pytest.mark.slow
def test_local_worker_processes_match_in_process(compose, table_search, tmp_path):
    search(compose(*table_search), tmp_path / "in-process")
    search(compose(*table_search, "executor.workers=2", "search.mode=sync"), tmp_path / "workers")
    assert history(tmp_path / "workers") == history(tmp_path / "in-process")


# ---- real processes -------------------------------------------------------------------------------------------
def _signal_midway(args: list[str], run_dir: Path, sig: int, at: int) -> subprocess.CompletedProcess:
    """Run a real search and send it ``sig`` once ``at`` candidates are stored (polling the history)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "blockqnn.search", *args, f"hydra.run.dir={run_dir}"], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while _count(run_dir) < at and proc.poll() is None:
            time.sleep(0.005)
        proc.send_signal(sig)
    finally:
        _, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


def _interrupt_a_real_search(compose, table_search, run_dir: Path, sig: int, agent: str = "qlearning"):
    """The search run in-process to the end (the reference), and again in a subprocess sent ``sig`` a third of
    the way in. Returns the overrides, the reference history, its candidate count and the subprocess."""
    args = [a for a in table_search if not a.startswith("agent.")] + [
        f"agent={agent}", "agent.batch_size=32", "agent.budget=1152"]
    reference = run_dir.parent / "reference"
    search(compose(*args), reference)
    total = len(history(reference)[0])
    return args, history(reference), total, _signal_midway(args, run_dir, sig, total // 3)


@pytest.mark.slow
@pytest.mark.parametrize("agent", ["qlearning", "random", "evolution"])
def test_sigkilled_search_resumes_to_exactly_the_uninterrupted_history(compose, table_search, tmp_path, agent):
    killed = tmp_path / "killed"
    args, reference, total, proc = _interrupt_a_real_search(compose, table_search, killed, signal.SIGKILL, agent)
    stored = _count(killed)
    assert proc.returncode == -signal.SIGKILL and total // 3 <= stored < total, (stored, total)

    original_overrides = (killed / ".hydra" / "overrides.yaml").read_text()
    resumed = run_cli(*args, f"hydra.run.dir={killed}")  # the other documented way to resume
    assert resumed.returncode == 0, resumed.stderr
    assert history(killed) == reference
    assert (killed / ".hydra" / "overrides.yaml").read_text() == original_overrides  # the resume wrote beside it
    assert list((killed / ".hydra").glob("resume-*/overrides.yaml"))


@pytest.mark.slow
def test_sigterm_ends_cleanly_with_the_way_to_resume(compose, table_search, tmp_path):
    stopped = tmp_path / "stopped"
    args, reference, _, proc = _interrupt_a_real_search(compose, table_search, stopped, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line == f"interrupted; continue with: python -m blockqnn.search resume={stopped}"
    assert "Traceback" not in proc.stderr
    search(compose(*args, f"resume={stopped}"), stopped)
    assert history(stopped) == reference


def _count(run_dir: Path) -> int:
    try:
        with Store.open(run_dir, readonly=True) as store:
            return store.conn.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]
    except Exception:  # not created yet
        return 0


@pytest.mark.slow
def test_multirun_gives_each_search_its_own_folder_and_wandb_group(table_search, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    (tmp_path / ".env").write_text("WANDB_PROJECT=from-dotenv\n")  # read by the entry point
    sweep = tmp_path / "sweep"
    args = [a for a in table_search if a != "logger=none" and not a.startswith("agent.")] + [
        "agent.batch_size=8", "agent.budget=100"]  # what every agent has: the multirun compares equal budgets
    out = run_cli("-m", *args, "agent=qlearning,random,evolution", "seed=0,1", f"hydra.sweep.dir={sweep}",
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    runs = sorted(p.parent for p in sweep.glob(f"*/{DB_NAME}"))
    assert len(runs) == 6
    configs = []
    for run in runs:
        with Store.open(run, readonly=True) as store:
            cfg, rows = store.config(), store.candidates()
        configs.append((cfg.agent._target_.split(".")[-1], cfg.agent.get("epsilon_override"), cfg.seed))
        assert len(rows) == 100
        [tracked] = read_wandb_run(run)
        assert (tracked["group"], tracked["project"]) == ("sweep", "from-dotenv")
    agents = [("QLearningAgent", None), ("QLearningAgent", 1.0), ("RegularizedEvolution", None)]
    assert sorted(configs, key=str) == sorted([(*a, seed) for a in agents for seed in (0, 1)], key=str)
    assert len({tuple(r["arch"] for r in history(run)[0]) for run in runs}) == 6  # no shared state
    report(sweep)
    summary = (sweep / "summary.md").read_text()
    assert all(f"| {agent} | 2 |" in summary for agent in ("q-learning", "random", "evolution"))
    assert (sweep / "agents.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["foo=1"], "Could not override 'foo'"),
        (["agent.alfa=0.1"], "Key 'alfa' is not in struct"),
        (["space=nasbench201", "space.table=/no/such/table.csv"], "/no/such/table.csv not found"),
        (["space=nasbench201"], "Missing mandatory value: space.table"),
        (["dataset=imagefolder", "dataset.source.root=/no/such/images", "logger=none"], "/no/such/images"),
        (["resume={tmp}/plain"], "is not a search run"),
        (["resume={tmp}/corrupt"], "corrupt"),
    ],
    ids=["unknown-option", "unknown-agent-option", "missing-table", "table-not-given", "missing-dataset",
         "resume-not-a-run", "resume-corrupt"],
)
def test_bad_input_gives_one_error_line_and_touches_nothing(tmp_path, args, message):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / DB_NAME).write_bytes(b"SQLite format 3\0" + os.urandom(3000))
    before = folder_digest(tmp_path)
    out = run_cli(*[a.format(tmp=tmp_path) for a in args], f"output_root={tmp_path}/runs", cwd=tmp_path)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    after = folder_digest(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("runs")} == before
    assert set(after) - set(before) <= {"runs", "runs/search"}  # at most the output root: no run folder


# A short trained search (a case that is wrongly not refused ends soon, failing the test instead of hanging it).
TRAINED_SEARCH = ["dataset=synthetic", "template=tiny", "trainer=early_stop", "trainer.max_epochs=1", "logger=none",
                  "progress.mode=off", "agent.batch_size=2", "agent.schedule_scale=0.01"]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (["progress.mode=loud"], "progress.mode"),
        (["executor.workers=-1"], "executor.workers"),
        (["failed_reward=abc"], "failed_reward=abc: Value 'abc' of type 'str' could not be converted to Float"),
        (["seed=x"], "seed=x: Value 'x' of type 'str' could not be converted to Integer"),
        (["space.types=[7]"], "at least one layer type"),
        (["space.terminal_weight=-1"], "space.terminal_weight=-1: expected a number > 0"),
        (["dataset.val_size=100000"], "dataset.val_size=100000 must be in"),
        (["trainer.precision=bogus"], "trainer.precision=bogus: expected one of 16-mixed"),
        (["+trainer.extra.bogus=1"], "cannot train even the smallest block: .*unexpected keyword argument 'bogus'"),
        (["trainer.scheduler_interval=bogus"], "trainer.scheduler_interval=bogus: expected one of epoch, step"),
        (["trainer.limit_val_batches=0"], "trainer.limit_val_batches=0: expected"),
        (["trainer.strategy=bogus"], "cannot train even the smallest block: .*bogus"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_bad_values_stop_before_a_history_is_created(compose, tmp_path, bad, message):
    """Values only a candidate's training (or failure) would use are tried first: a typo must not fail every
    candidate of a long search one by one."""
    with pytest.raises(Exception, match=message) as info:
        search(compose(*TRAINED_SEARCH, *bad), tmp_path / "run")
    assert user_errors(info.value), "reported as bad input (one line), not as a bug"
    assert not (tmp_path / "run" / DB_NAME).exists()


def test_a_table_space_refuses_a_reward_it_cannot_compute(compose, table_search, tmp_path):
    with pytest.raises(UserError, match="a table space rewards the table's accuracy alone .* use reward=accuracy"):
        search(compose(*table_search, "reward=paper"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_incomplete_table_is_refused_before_the_search(compose, table_search, nb201_table, tmp_path):
    partial = tmp_path / "partial.csv"
    partial.write_text("".join((nb201_table.read_text().splitlines(True))[:100]))
    with pytest.raises(UserError, match="lacks 15526 of the 15625 architectures"):
        search(compose(*table_search, f"space.table={partial}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_refused_start_in_the_working_folder_removes_only_hydras_files(tmp_path):
    (tmp_path / "mine").mkdir()
    out = run_cli("hydra.run.dir=.", "dataset=imagefolder", "dataset.source.root=/no/such/images", "logger=none",
                  cwd=tmp_path / "mine")
    assert out.returncode == 1 and "/no/such/images" in out.stderr
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


@pytest.mark.slow
def test_a_refused_resume_leaves_the_run_folder_as_it_was(table_search, tmp_path):
    run = tmp_path / "run"
    assert run_cli(*table_search, f"hydra.run.dir={run}").returncode == 0
    before = folder_digest(run)
    out = run_cli(*table_search, "agent.alpha=0.3", f"resume={run}")
    assert out.returncode == 1 and "cannot resume" in out.stderr, out.stderr
    assert folder_digest(run) == before  # not even a .hydra/resume-* record of the refused start


@pytest.mark.slow
def test_full_error_shows_the_traceback(tmp_path):
    out = run_cli("resume=" + str(tmp_path), env={"HYDRA_FULL_ERROR": "1"}, cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" in out.stderr and "is not a search run" in out.stderr


# ---- presets --------------------------------------------------------------------------------------------------
def test_presets_compose_to_what_they_promise(compose, nb201_table):
    from hydra.utils import instantiate

    def agent_of(cfg):
        return instantiate(cfg.agent, space=instantiate(cfg.space), seed=0)

    quick = compose("experiment=quickstart")
    assert (quick.dataset.name, quick.template.F, quick.executor.workers) == ("digits", 8, "auto")
    assert agent_of(quick).total_samples <= 200  # a few minutes on a laptop CPU
    paper = compose("experiment=paper_cifar100")
    assert (paper.dataset.name, paper.template.stages, paper.trainer.max_epochs) == ("cifar100", 3, 12)
    assert (agent_of(paper).num_iterations, agent_of(paper).total_samples) == (178, 11392)
    assert agent_of(paper).schedule == epsilon_schedule("paper") and agent_of(paper).alpha == 0.01
    table = compose("experiment=nasbench201", f"space.table={nb201_table}")
    space = instantiate(table.space)
    assert 0 < space.lookup(space.decode(agent_of(table).sample(1)[0])) < 1
    for preset in (quick, table):  # the small-budget settings measured on the real table
        agent = agent_of(preset)
        assert (agent.alpha, agent.schedule[0], agent.schedule[-1]) == (0.3, 1.0, pytest.approx(0.1))
        assert agent.schedule == sorted(agent.schedule, reverse=True) and len(set(agent.schedule)) > 10


@pytest.mark.parametrize("preset", ["quickstart", "nasbench201", "paper_cifar100"])
def test_every_agent_runs_under_every_preset_with_one_budget(compose, nb201_table, preset):
    from hydra.utils import instantiate

    budgets = set()
    for agent in ("qlearning", "random", "evolution"):
        cfg = compose(f"experiment={preset}", f"agent={agent}", f"space.table={nb201_table}" if preset == "nasbench201"
                      else "space=nsc")
        budgets.add(instantiate(cfg.agent, space=instantiate(cfg.space), seed=0).total_samples)
    assert len(budgets) == 1


@pytest.mark.slow
def test_quickstart_ends_with_the_best_block_and_the_run_folder(tmp_path):
    out = run_cli("experiment=quickstart", "agent.batch_size=2", "agent.budget=4", "trainer.max_epochs=1",
                  "logger=none", f"output_root={tmp_path}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    [run] = [p.parent for p in tmp_path.glob(f"search/*/{DB_NAME}")]
    with Store.open(run, readonly=True) as store:
        best = store.best(1)[0]
    assert f"best block: {best['arch']}" in out.stdout and f"reward {best['reward']:.4f}" in out.stdout
    assert f"run stored in {run}" in out.stdout


def test_missing_configs_are_one_clear_error(monkeypatch, tmp_path, capsys):
    """A package without its configs says how to get them instead of failing inside Hydra."""
    import blockqnn.config

    monkeypatch.setattr(blockqnn.config, "CONF_DIR", tmp_path / "conf")
    with pytest.raises(SystemExit) as exit_info, one_line_errors(full=False):
        blockqnn.config.compose("search")
    assert exit_info.value.code == 1 and "configs are missing" in capsys.readouterr().err


@pytest.mark.slow
def test_a_search_whose_candidates_all_fail_exits_1_with_the_most_common_error(tmp_path):
    """A learning rate that sends every candidate's loss to infinity after its first step (the one-batch trial of
    the recipe still passes): the search ends, but not as a success."""
    out = run_cli("dataset=synthetic", "trainer=smoke", "trainer.optimizer.lr=1e30", "trainer.nan_check_every=1",
                  "agent.epsilon_schedule=constant", "agent.schedule_iterations=1", "agent.batch_size=2",
                  "logger=none", "progress.mode=off", f"data_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 1, out.stderr[-2000:]
    assert "no candidate finished successfully" in out.stdout
    assert out.stderr.startswith("error: every candidate failed (2); the most common error (2 of 2): "
                                 "NonFiniteLossError: non-finite training loss"), out.stderr
    assert out.stderr.count("\n") == 1
    with Store.open(tmp_path / "run", readonly=True) as store:  # the history is kept
        assert [row["status"] for row in store.candidates()] == ["failed", "failed"]


def test_the_closing_line_counts_iterations_from_1_as_the_progress_line(tmp_path):
    from blockqnn.search.__main__ import summary

    text = summary({"arch": "[(1,7,0,0,0)]", "reward": 0.5, "accuracy": 0.6, "iteration": 0, "position": 2}, tmp_path)
    assert "(iteration 1, position 3)" in text
    progress = Progress(mode="off")
    progress.update(iteration=0, iterations=3, epsilon=1.0, done=0, total=6, cached=0, failed=0, best=None)
    assert progress.text.startswith("iteration 1/3")


# ---- asynchronous mode ----------------------------------------------------------------------------------------
def check_async_history(run_dir: Path, evaluated: list[str] | None = None) -> list[dict]:
    """Every sampled block once, in sampling order; no hash trained twice (and, given the blocks the evaluator was
    asked for, each of those once); every result incorporated once."""
    with Store.open(run_dir, readonly=True) as store:
        rows, running, (_, state) = store.candidates(), store.running(), store.latest_agent_state()
        assert store.get("mode") == "async"
    batch = state["sampled"] // state["num_iterations"]
    assert not running and len(rows) == state["sampled"] == batch * state["num_iterations"]
    assert [(r["iteration"], r["position"]) for r in rows] == [divmod(i, batch) for i in range(len(rows))]
    trained = [r["hash"] for r in rows if not r["cached"]]
    assert len(trained) == len(set(trained))
    assert evaluated is None or sorted(evaluated) == sorted(r["arch"] for r in rows if not r["cached"])
    assert Counter(text for text, _ in state["memory"]) == Counter(r["arch"] for r in rows)
    events = sorted([r["sampled_event"] for r in rows] + [r["incorporated_event"] for r in rows])
    assert events == list(range(1, 2 * len(rows) + 1))
    for row in rows:
        assert row["sampled_event"] < row["incorporated_event"]
        if row["cached"]:
            original = next(r for r in rows if r["hash"] == row["hash"] and not r["cached"])
            assert (row["reward"], row["status"]) == (original["reward"], original["status"])
    return rows


def test_async_search_with_workers_records_each_block_once_and_trains_none_twice(
        compose, table_search, tmp_path, monkeypatch):
    from tests.timed import LOG_ENV, evaluations, timed_evaluate

    log = tmp_path / "evaluations.log"
    monkeypatch.setenv(LOG_ENV, str(log))
    # 64 cells and 8 blocks in flight (2 workers, 6 queued): blocks often meet their twin still in flight
    cfg = compose(*table_search, "space.ops=[none,skip_connect]", "executor.workers=2", "search.prefetch=6")
    best = search(cfg, tmp_path / "run", evaluate=timed_evaluate)
    rows = check_async_history(tmp_path / "run", evaluations(log))
    waited = [r for r in rows if r["cached"] and any(
        o["hash"] == r["hash"] and not o["cached"] and o["finished_at"] > r["dispatched_at"] for o in rows)]
    assert waited, "no block waited for its twin in flight: that path went untested"
    assert best["reward"] == max(r["reward"] for r in rows)
    assert {r["epsilon"] for r in rows if r["iteration"] == 0} == {1.0}


def test_async_mode_is_kept_on_resume_and_a_wrong_mode_is_refused(compose, table_search, tmp_path):
    search(compose(*table_search, "search.mode=async"), tmp_path)
    with pytest.raises(UserError, match="searched in async mode"):
        search(compose(*table_search, "search.mode=sync", f"resume={tmp_path}"), tmp_path)
    rows = check_async_history(tmp_path)
    search(compose(*table_search, f"resume={tmp_path}"), tmp_path)  # finished: nothing more to do
    assert len(history(tmp_path)[0]) == len(rows)


def test_async_evolution_interrupted_resumes_to_the_uninterrupted_history(compose, table_search, tmp_path):
    """Regularized evolution takes one block at a time too; killed and resumed, it ends as if never stopped."""
    args = [a for a in table_search if not a.startswith("agent.")] + [
        "agent=evolution", "agent.batch_size=4", "agent.budget=60", "search.mode=async"]
    search(compose(*args), tmp_path / "reference")
    with pytest.raises(KeyboardInterrupt):
        search(compose(*args), tmp_path / "killed", evaluate=dying_after(23))
    search(compose(*args, f"resume={tmp_path / 'killed'}"), tmp_path / "killed")
    def untimed(run):
        rows, state = history(run)
        return [{k: v for k, v in row.items() if k != "dispatched_at"} for row in rows], state

    assert untimed(tmp_path / "killed") == untimed(tmp_path / "reference")
    with Store.open(tmp_path / "killed", readonly=True) as store:
        rows, (_, state) = store.candidates(), store.latest_agent_state()
        assert store.get("mode") == "async" and len(rows) == state["sampled"] == 60
    assert [text for text, _ in state["population"]] == [r["arch"] for r in rows][-10:]  # the last 10 to return


def test_an_agent_that_learns_by_iterations_only_searches_in_sync_mode(compose, table_search, tmp_path, monkeypatch):
    monkeypatch.delattr(QLearningAgent, "sample_one")  # as an agent without the one-block protocol
    with pytest.raises(UserError, match="learns by iterations only"):
        search(compose(*table_search, "search.mode=async"), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    search(compose(*table_search, "executor.workers=2"), tmp_path / "auto")
    with Store.open(tmp_path / "auto", readonly=True) as store:
        assert store.get("mode") == "sync" and store.candidates()


@pytest.mark.slow
def test_async_search_sigkilled_at_random_moments_loses_nothing_and_retrains_nothing(table_search, tmp_path):
    """Worker processes running: kill the search at random moments, and again right after a resume has sent the
    running blocks out; in the end every block is stored once and nothing finished ran twice."""
    from tests.timed import LOG_ENV, evaluations

    run, log, err = tmp_path / "run", tmp_path / "evaluations.log", tmp_path / "stderr"
    args = [*table_search, "executor.workers=2"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env |= {"PYTHONPATH": str(REPO), LOG_ENV: str(log)}

    def start() -> subprocess.Popen:
        with err.open("w") as stderr:
            return subprocess.Popen([sys.executable, "-m", "tests.timed", str(run), *args], cwd=REPO, env=env,
                                    stdout=subprocess.DEVNULL, stderr=stderr)

    def kill_when(ready) -> bool:
        """Start the search, SIGKILL it once ``ready()``; False when it finished first."""
        proc = start()
        while not ready() and proc.poll() is None:
            time.sleep(0.005)
        if proc.poll() is not None:
            assert proc.wait() == 0, err.read_text()
            return False
        proc.send_signal(signal.SIGKILL)
        return proc.wait() == -signal.SIGKILL

    def stored_at_least(n: int) -> bool:
        return _count(run) >= n

    def sent_again(running: set[str], before: int) -> bool:
        return running <= set(evaluations(log)[before:])

    rng, kills = np.random.default_rng(7), 0
    while kill_when(partial(stored_at_least, _count(run) + int(rng.integers(10, 40)))):
        kills += 1
        with Store.open(run, readonly=True) as store:
            finished = {r["arch"] for r in store.candidates() if not r["cached"] and r["status"] == "ok"}
            running = {r["arch"] for r in store.running() if not r["cached"]}
        before = len(evaluations(log))  # a worker of the killed search may still log the block it was just sent
        kill_when(partial(sent_again, running, before))
        again = evaluations(log)[before:]
        assert running <= set(again), "a block running at the kill was not sent out again"
        assert not set(again) & finished, "a finished block ran again"
    assert kills >= 2
    check_async_history(run)


# ---- signals during real training -----------------------------------------------------------------------------
TINY_TRAINING = ["dataset=digits", "template=tiny", "logger=none", "progress.mode=off", "agent.batch_size=2",
                 "agent.epsilon_schedule=constant", "agent.schedule_iterations=2", "trainer.max_epochs=2"]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "worker-processes"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_training_ends_with_one_line_and_the_search_resumes_with_nothing_lost(tmp_path, workers, sig):
    """Sent to the whole process group, as a terminal's Ctrl-C is, once the first candidate is stored: the next
    one is training (Lightning's own signal handling is inside fit)."""
    run = tmp_path / "run"
    args = [*TINY_TRAINING, f"executor.workers={workers}", f"hydra.run.dir={run}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "blockqnn.search", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        while _finished(run) < 1 and proc.poll() is None:
            time.sleep(0.01)
        os.killpg(proc.pid, sig)
    finally:
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert err.strip().splitlines()[-1] == f"interrupted; continue with: python -m blockqnn.search resume={run}"
    assert "Traceback" not in err and "SIGTERM" not in err, err
    with Store.open(run, readonly=True) as store:
        before = store.candidates()
        assert before and all(r["status"] == "ok" for r in before), before  # the interrupted one is not failed
        assert len(store.running()) <= max(workers, 1)
    resumed = run_cli(f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr
    with Store.open(run, readonly=True) as store:
        after, running = store.candidates(), store.running()
    assert not running and len(after) == 4 and all(r["status"] == "ok" for r in after)
    assert all(row in after for row in before)  # kept as they were: nothing trained twice


def _finished(run_dir: Path) -> int:
    try:
        with Store.open(run_dir, readonly=True) as store:
            return len(store.candidates())
    except Exception:  # not created yet
        return 0

"""``python -m blockqnn.search`` as a user runs it, in real processes: SIGKILL and SIGTERM (also during training)
and the resume after them, multiruns, the closing lines, and bad input as one error line that touches nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blockqnn.report import report
from blockqnn.search import search
from blockqnn.store import DB_NAME, Store
from blockqnn.tracking import Progress
from tests.helpers import REPO, cli_env, finished_count, folder_digest, history, read_wandb_run, run_cli, stored_count


def _signal_midway(args: list[str], run_dir: Path, sig: int, at: int) -> subprocess.CompletedProcess:
    """Run a real search and send it ``sig`` once ``at`` candidates are stored (polling the history)."""
    proc = subprocess.Popen([sys.executable, "-m", "blockqnn.search", *args, f"hydra.run.dir={run_dir}"], cwd=REPO,
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while stored_count(run_dir) < at and proc.poll() is None:
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
    stored = stored_count(killed)
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
def test_an_optuna_sweep_maximises_the_best_reward_each_search_returns(nb201_table, tmp_path):
    """conf/hparams_search/nasbench201.yaml for three trials: the value Optuna records for each is its search's
    best reward, so the best trial is the search with the highest."""
    import yaml

    import blockqnn

    sweep = tmp_path / "sweep"
    out = run_cli("hparams_search=nasbench201", f"space.table={nb201_table}", "hydra.sweeper.n_trials=3",
                  "agent.budget=20", "progress.mode=off", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    found = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    frame = blockqnn.history(sweep)
    best = frame.groupby("run")["reward"].max()
    assert len(best) == 3 and found["best_value"] == pytest.approx(best.max())
    winner = frame[frame["run"] == best.idxmax()].iloc[0]
    assert found["best_params"] == {key: winner[key] for key in found["best_params"]}
    assert set(found["best_params"]) == {"agent.alpha", "agent.epsilon_end", "agent.replay_size"}


@pytest.mark.slow
def test_quickstart_ends_with_the_best_block_and_the_run_folder(tmp_path):
    out = run_cli("experiment=quickstart", "agent.batch_size=2", "agent.budget=4", "trainer.max_epochs=1",
                  "stopping=none", "logger=none", f"output_root={tmp_path}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    [run] = [p.parent for p in tmp_path.glob(f"search/*/{DB_NAME}")]
    with Store.open(run, readonly=True) as store:
        best = store.best(1)[0]
    assert f"best block: {best['arch']}" in out.stdout and f"reward {best['reward']:.4f}" in out.stdout
    assert f"run stored in {run}" in out.stdout


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


# ---- bad input ---------------------------------------------------------------------------------------------


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
    assert folder_digest(tmp_path) == before  # not even the output root's runs/search/


# Downloads fail at once, as offline: a proxy on a closed port of this machine.
OFFLINE = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}


@pytest.mark.slow
@pytest.mark.parametrize("multirun", [[], ["-m", "seed=0,1"]], ids=["run", "multirun"])
def test_a_refused_first_start_leaves_no_folder_it_created(tmp_path, multirun):
    """dataset=cifar10 offline: Hydra made runs/search/ (or the sweep folder and its multirun.yaml), torchvision
    made data/; the refusal removes them all."""
    out = run_cli(*multirun, "dataset=cifar10", "logger=none", cwd=tmp_path,
                  env=OFFLINE | {"BLOCKQNN_DATA": str(tmp_path / "data")})
    assert out.returncode == 1 and out.stderr.startswith("error: CIFAR10 not found"), out.stderr
    assert out.stderr.count("\n") == 1
    assert not any(tmp_path.iterdir()), sorted(folder_digest(tmp_path))


@pytest.mark.slow
def test_a_multirun_with_an_unknown_member_leaves_no_sweep_folder_and_keeps_what_was_there(tmp_path):
    (tmp_path / "runs" / "multirun").mkdir(parents=True)
    (tmp_path / "runs" / "notes.txt").write_text("mine")
    before = folder_digest(tmp_path)
    out = run_cli("-m", "agent=qlearning,nonexistent", "logger=none", cwd=tmp_path)
    assert out.returncode == 1 and "Could not find 'agent/nonexistent'" in out.stderr
    assert folder_digest(tmp_path) == before  # runs/multirun/ was there before: kept, empty


@pytest.mark.slow
def test_a_refused_training_leaves_no_folder_it_created(tmp_path):
    out = run_cli("block=/no/such/run:1", "logger=none", cwd=tmp_path, module="train")
    assert out.returncode == 1 and "/no/such/run" in out.stderr, out.stderr
    assert not any(tmp_path.iterdir()), sorted(folder_digest(tmp_path))


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
        while finished_count(run) < 1 and proc.poll() is None:
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

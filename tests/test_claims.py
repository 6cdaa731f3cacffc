"""The real-image claim script end to end on a tiny setting: a multirun of real searches (two agents, two seeds)
on generated images, each run's top-1 block trained longer, the agents compared, the hand-designed blocks beside
the found one; a second call reuses every finished training."""

from __future__ import annotations

import subprocess
import sys

import pytest

from blockqnn.codes import Block
from blockqnn.report.analysis import load_histories
from tests.helpers import REPO, cli_env, run_cli

TINY_SEARCH = ["dataset=synthetic", "template=tiny", "trainer=smoke", "logger=none", "agent.batch_size=2",
               "agent.budget=4", "progress.mode=off", "executor.workers=0"]


@pytest.mark.slow
def test_the_agents_claim_runs_end_to_end_on_a_tiny_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    searched = run_cli("-m", *TINY_SEARCH, f"data_dir={tmp_path / 'data'}", "agent=qlearning,random", "seed=0,1",
                       f"hydra.sweep.dir={sweep}")
    assert searched.returncode == 0, searched.stderr[-2000:]

    def claim(*jobs: str) -> str:
        return run_script("experiments/claim_agents_real_images.py", str(sweep), "--epochs", "1", "--hand",
                          "--hand-seeds", "1", *jobs, "--train", "trainer.limit_train_batches=2")

    plotted = ("--plot", str(tmp_path / "hours.png"), "--hours-at", "0", "1000")
    printed = claim("--jobs", "2", *plotted)
    assert (tmp_path / "hours.png").stat().st_size > 0  # best reward against machine-hours, the agents' time in
    hours = {line.split(" | ")[0]: line.split(" | ")[1:] for line in printed.split("charged machine-hours")[1]
             .splitlines()[1:3]}
    assert set(hours) == {"q-learning", "random"} and all(float(h[0]) > 0 for h in hours.values())
    assert all(h[1] == "-" and 0 < float(h[2]) < 1 for h in hours.values())  # none best at 0 h, all at 1000 h
    runs = [line for line in printed.splitlines() if line.split(":")[0].isdigit()]
    assert len(runs) == 4 and all("top-1 test accuracy" in line for line in runs)
    assert "q-learning | 0,1 |" in printed and "random | 0,1 |" in printed  # the seeds
    assert "q-learning above random (one-sided Mann-Whitney U): best reward p = " in printed
    assert all(f"\n{name} [(" in printed for name in ("found", "residual", "inception"))
    histories, _ = load_histories(sorted(sweep.glob("[0-9]")), top_k=1)
    hand = [line.split(" ")[1] for line in printed.splitlines() if line.startswith(("residual [", "inception ["))]
    blocks = [h.best[0]["arch"] for h in histories] + hand  # the found block is one of the top-1s
    trainings = {p.name for p in (sweep / "claims").iterdir()}
    hashes = {Block.parse(code, max_index=None).canonical_hash() for code in blocks}
    assert trainings == {f"{h}-seed0" for h in hashes}  # each distinct block trained once
    before = {p: p.stat().st_mtime_ns for p in (sweep / "claims").glob("*/result.json")}
    assert claim(*plotted) == printed  # every training read back, none run again
    assert {p: p.stat().st_mtime_ns for p in (sweep / "claims").glob("*/result.json")} == before


def run_script(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_the_early_stop_ranking_claim_runs_end_to_end_on_tiny_trainings(tmp_path):
    png = tmp_path / "ranking.png"
    printed = run_script("experiments/claim_early_stop_ranking.py", "--blocks", "4", "--stretch", "2", "--png",
                         str(png), *TINY_SEARCH, f"data_dir={tmp_path / 'data'}", "trainer.max_epochs=1")
    assert "4 of 4 blocks trained in both runs" in printed
    assert "Kendall tau with the 2-epoch accuracy:" in printed and "early-stop accuracy (1 epochs)" in printed
    assert png.stat().st_size > 0


@pytest.mark.slow
def test_the_shaping_claim_runs_end_to_end_on_a_short_schedule(tmp_path):
    png = tmp_path / "shaping.png"
    printed = run_script("experiments/claim_reward_shaping.py", "--seeds", "2", "--png", str(png),
                         "agent.schedule_scale=0.02", "agent.batch_size=4")
    finals = [line for line in printed.splitlines() if "last 10% of iterations mean reward" in line]
    assert [line.split(":")[0].strip() for line in finals] == ["shaped", "unshaped"]
    assert png.stat().st_size > 0

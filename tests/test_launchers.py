"""Sweeps beyond one process: several searches side by side (hydra/launcher=joblib) with the cores divided among
them, the SLURM preset (hydra/launcher=slurm), and the sbatch script that runs one search on Ray over an allocation."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from blockqnn import threads
from blockqnn.store import Store
from tests.helpers import REPO, cli_env, run_cli

SBATCH = REPO / "docs" / "cluster" / "ray-on-slurm.sbatch"
TINY_SEARCH = ["dataset=synthetic", "template=tiny", "trainer=smoke", "logger=none", "agent.batch_size=2",
               "agent.budget=2", "progress.mode=off"]


@pytest.mark.parametrize(("jobs", "share"), [(2, 4), (3, 2), (8, 1), (16, 1), (-1, 1), (-5, 2)])
def test_jobs_side_by_side_share_the_cores(monkeypatch, jobs, share):
    monkeypatch.setattr(threads, "machine_cores", lambda: 8)
    monkeypatch.setenv(threads.CORES_ENV, "")  # no cap yet; and share_cores's own setting is undone afterwards
    assert threads.share_cores(jobs) == share
    assert threads.usable_cores() == share and threads.cpu_workers(1) == share


def test_a_cores_cap_by_hand_never_raises_the_machine(monkeypatch):
    monkeypatch.setattr(threads, "machine_cores", lambda: 4)
    monkeypatch.setenv(threads.CORES_ENV, "2")
    assert threads.usable_cores() == 2
    monkeypatch.setenv(threads.CORES_ENV, "64")
    assert threads.usable_cores() == 4
    monkeypatch.setenv(threads.CORES_ENV, "none")
    assert threads.usable_cores() == 4


@pytest.mark.slow
def test_a_joblib_multirun_runs_two_searches_side_by_side_each_on_its_share(tmp_path):
    sweep = tmp_path / "sweep"
    out = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", *TINY_SEARCH,
                  f"hydra.sweep.dir={sweep}", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    share = max(1, threads.machine_cores() // 2)
    for job in ("0", "1"):
        log = (sweep / job / "search.log").read_text()
        assert f"2 job(s) at once on this machine: this one uses {share} of its {threads.machine_cores()} cores" \
            in log
        with Store.open(sweep / job, readonly=True) as store:
            assert len(store.candidates()) == 2
        assert f"- seed={job}" in (sweep / job / ".hydra" / "overrides.yaml").read_text()


def test_the_slurm_preset_composes_onto_submitit(tmp_path):
    out = run_cli("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra")
    assert out.returncode == 0, out.stderr[-2000:]
    launcher = out.stdout[out.stdout.index("  launcher:"):out.stdout.index("  sweeper:")]
    assert "SlurmLauncher" in launcher and "partition: gpu" in launcher
    assert "max_num_timeout: 3" in launcher and "gpus_per_node: 1" in launcher


STUB = """#!/bin/bash
echo "$(basename "$0") $*" >> "$CALLS"
case "$(basename "$0") $*" in
  "scontrol show hostnames"*) printf 'gpu-a\\ngpu-b\\ngpu-c\\n' ;;
  srun*hostname*) echo "10.0.0.7 fe80::1" ;;
esac
"""


def test_the_ray_sbatch_script_starts_a_head_joins_every_other_node_and_searches_there(tmp_path):
    """Run with SLURM, Ray and Python replaced by stubs that record their calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("scontrol", "srun", "ray", "python"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls"
    env = cli_env({"PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls), "SLURM_JOB_ID": "4242",
                   "SLURM_JOB_NODELIST": "gpu-[a-c]", "SLURM_GPUS_PER_NODE": "8", "SLURM_CPUS_PER_TASK": "32"})
    out = subprocess.run(["bash", str(SBATCH), "experiment=paper_cifar100", "seed=3"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = calls.read_text().splitlines()
    starts = [line for line in lines if "ray start" in line]
    assert starts[0].startswith("srun --nodes=1 --ntasks=1 -w gpu-a ray start --head --node-ip-address=10.0.0.7 "
                                "--port=6379 --num-cpus=32 --num-gpus=8")
    assert sorted(re.search(r"-w (\S+)", s).group(1) for s in starts[1:]) == ["gpu-b", "gpu-c"]  # in background
    assert all("--address=10.0.0.7:6379" in s for s in starts[1:])
    [search] = [line for line in lines if line.startswith("python ")]
    assert search == ("python -m blockqnn.search executor=ray executor.address=auto executor.num_gpus=1 "
                      "hydra.run.dir=runs/search/slurm-4242 experiment=paper_cifar100 seed=3")
    assert lines.index(search) < lines.index("ray stop --force")


def test_the_ray_sbatch_script_passes_the_search_failure_on(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("scontrol", "srun", "ray"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "python").write_text("#!/bin/bash\nexit 3\n")
    (bin_dir / "python").chmod(0o755)
    env = cli_env({"PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls"),
                   "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "gpu-a"})
    out = subprocess.run(["bash", str(SBATCH)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 3
    assert "ray stop --force" in (tmp_path / "calls").read_text().splitlines()

"""Executors: results for every position as they finish, per-GPU worker pinning, dead workers recorded failed
(local) or retried then failed (Ray). Evaluators here are plain and light: worker processes import this module.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blockqnn.candidate import Job
from blockqnn.errors import UserError
from blockqnn.executors import LocalExecutor, RayExecutor
from blockqnn.executors.base import bound
from tests.helpers import REPO, cli_env

ITEMS = [(i, f"arch-{i}") for i in range(6)]


def echo(arch: str, cfg: dict) -> tuple[str, str]:
    return arch.upper(), cfg["tag"]


def environment(arch: str, cfg: dict) -> tuple[str, str | None, int]:
    return os.environ["CUDA_VISIBLE_DEVICES"], os.environ.get("OMP_NUM_THREADS"), os.getpid()


def broken(arch: str, cfg: dict) -> None:
    raise ValueError(f"cannot build {arch}")


def dies_on(arch: str, cfg: dict) -> str:
    """Kills its own process for ``cfg['die']``: what an out-of-memory kill or a segfault does to a worker."""
    if arch == cfg["die"]:
        os._exit(3)
    return arch


def dies_once(arch: str, cfg: dict) -> str:
    """Kills its process the first time (leaving a marker), succeeds when retried."""
    marker = Path(cfg["dir"]) / arch
    if not marker.exists():
        marker.touch()
        os._exit(3)
    return arch


def waits_for_go(arch: str, cfg: dict) -> str:
    """``first`` finishes only once the caller has seen ``second``'s result and created the file ``go``."""
    go = Path(cfg["dir"]) / "go"
    deadline = time.monotonic() + 60
    while arch == "first" and not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return arch


def run(executor, fn, items, cfg):
    """Serve ``fn`` bound to ``cfg``, then run ``items`` through it: what a search does with its evaluator."""
    executor.serve(bound(fn, cfg))
    return executor.map((key, Job(arch, arch, seed=0)) for key, arch in items)


def assert_finishing_order(executor, folder: Path) -> None:
    results = run(executor, waits_for_go, [(0, "first"), (1, "second")], {"dir": str(folder)})
    assert next(results) == (1, "second")
    (folder / "go").touch()
    assert next(results) == (0, "first")


# ---- local ----------------------------------------------------------------------------------------------------
def test_in_process_runs_each_candidate_and_contains_failures():
    with LocalExecutor(workers=0) as executor:
        assert list(run(executor, echo, ITEMS, {"tag": "t"})) == [(i, (a.upper(), "t")) for i, a in ITEMS]
        [(position, result)] = run(executor, broken, [(7, "x")], {})
    assert position == 7 and result.status == "failed" and result.error == "ValueError: cannot build x"


def test_auto_is_in_process_without_several_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with LocalExecutor() as executor:
        assert executor._pool == []
        assert {pid for _, (_, _, pid) in run(executor, environment, ITEMS, {})} == {os.getpid()}


@pytest.mark.slow
def test_worker_per_gpu_pinned_and_long_lived(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # two GPUs as far as the executor can tell
    with LocalExecutor() as executor:
        first = dict(run(executor, environment, ITEMS, {}))
        second = dict(run(executor, environment, ITEMS, {}))
    assert sorted(first) == [i for i, _ in ITEMS]
    assert {gpu for gpu, _, _ in first.values()} == {"3", "5"}
    pids = {pid for _, _, pid in first.values()}
    assert len(pids) == 2 and os.getpid() not in pids
    assert {pid for _, _, pid in second.values()} == pids  # the same processes serve every batch


@pytest.mark.slow
def test_cpu_workers_results_order_and_dead_workers(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr("blockqnn.executors.local.visible_gpus", lambda: [])
    with LocalExecutor(workers=2, threads=1) as executor:
        assert sorted(run(executor, echo, ITEMS, {"tag": "w"})) == [(i, (a.upper(), "w")) for i, a in ITEMS]
        envs = dict(run(executor, environment, ITEMS, {}))
        assert {(gpu, threads) for gpu, threads, _ in envs.values()} == {("", "1")}

        assert_finishing_order(executor, tmp_path)

        results = dict(run(executor, dies_on, ITEMS, {"die": "arch-2"}))
        assert sorted(results) == [i for i, _ in ITEMS]
        assert results[2].status == "failed" and "worker process died (exit code 3)" in results[2].error
        assert all(results[i] == a for i, a in ITEMS if i != 2)
        assert sorted(run(executor, echo, ITEMS, {"tag": "after"})) == [(i, (a.upper(), "after")) for i, a in ITEMS]


def test_bad_worker_count():
    with pytest.raises(ValueError, match="executor.workers"):
        LocalExecutor(workers=-1)


# ---- ray ------------------------------------------------------------------------------------------------------
def test_joining_a_ray_cluster_that_is_not_there_is_one_clear_error(monkeypatch):
    """Ray's own error (raised here by a stand-in: whether a cluster answers depends on the machine) becomes one
    line naming the setting."""
    ray = pytest.importorskip("ray")

    def no_cluster(**kwargs):
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(UserError, match="executor.address=auto: Could not find any running Ray instance"):
        RayExecutor(address="auto").__enter__()


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_results_as_they_finish(ray_instance, tmp_path):
    with RayExecutor(num_cpus=1) as executor:
        assert sorted(run(executor, echo, ITEMS, {"tag": "r"})) == [(i, (a.upper(), "r")) for i, a in ITEMS]
        assert_finishing_order(executor, tmp_path)
    assert ray_instance.is_initialized()  # an executor leaves a Ray instance it did not start running


@pytest.mark.slow
def test_ray_retries_lost_workers_then_records_failed(ray_instance, tmp_path):
    with RayExecutor(num_cpus=1, max_retries=1) as executor:
        assert dict(run(executor, dies_once, [(0, "a"), (1, "b")], {"dir": str(tmp_path)})) == {0: "a", 1: "b"}
        [(position, result)] = run(executor, dies_on, [(4, "x")], {"die": "x"})
    assert position == 4 and result.status == "failed" and result.error.startswith("lost after 1 retries")


def missing_data(arch: str, cfg: dict) -> None:
    from blockqnn.errors import UserError

    raise UserError(f"dataset not found at {cfg['dir']}")


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_input_in_an_evaluator_stops_the_search_instead_of_failing_each_candidate(workers, tmp_path):
    from blockqnn.errors import UserError

    with LocalExecutor(workers=workers, threads=1) as executor, pytest.raises(UserError, match="dataset not found"):
        list(run(executor, missing_data, ITEMS, {"dir": str(tmp_path)}))


@pytest.mark.slow
def test_the_worker_benchmark_measures_start_up_and_overhead_on_real_candidates():
    out = subprocess.run([sys.executable, "experiments/bench_workers.py", "--candidates", "2", "dataset=synthetic",
                          "trainer=smoke", "template=tiny", "logger=none"], cwd=REPO, env=cli_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    started = float(re.search(r"started and evaluator built in ([\d.]+) s", out.stdout).group(1))
    training, overhead = map(float, re.search(r"median ([\d.]+) s training, overhead median ([-\d.]+) ms",
                                              out.stdout).groups())
    assert started > 0 and training > 0 and abs(overhead) < 1000 * training, out.stdout


def test_cpu_workers_fork_from_the_search_and_gpu_workers_spawn(monkeypatch):
    """A forked CPU worker has torch and Lightning imported already; CUDA does not survive a fork."""
    from blockqnn.executors.local import start_method

    monkeypatch.setattr(sys, "platform", "linux")
    assert start_method([]) == "fork" and start_method(["0"]) == "spawn"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert start_method([]) == "spawn"


@pytest.mark.slow
def test_the_worker_memory_benchmark_reports_the_workers_resident_memory():
    out = subprocess.run([sys.executable, "experiments/bench_worker_memory.py", "--candidates", "2",
                          "dataset=synthetic", "trainer=smoke", "template=tiny", "logger=none"], cwd=REPO,
                         env=cli_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    resident = [float(mb) for mb in re.findall(r"candidate \d+: worker RSS ([\d.]+) MB \(ok\)", out.stdout)]
    assert len(resident) == 2 and all(mb > 50 for mb in resident), out.stdout

"""Sizing a candidate's CPU threads: the cores this process may use, shared among workers, capped by size."""

from __future__ import annotations

import os

import pytest
import torch

from blockqnn import threads
from blockqnn.executors import LocalExecutor


@pytest.mark.parametrize(("files", "quota"), [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_cgroup_quota_v1_and_v2(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert threads.cgroup_quota(tmp_path) == quota


def test_usable_cores_respect_affinity_and_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "cgroup_quota", lambda: 1.5)
    assert threads.usable_cores() == 2
    assert threads.cpu_threads(2) == 1 and threads.cpu_threads(0) == 2 and threads.cpu_threads(5) == 1
    monkeypatch.setattr(threads, "cgroup_quota", lambda: None)
    assert threads.usable_cores() == 4 and threads.cpu_threads(2) == 2


def test_small_candidates_get_one_thread_large_ones_the_budget():
    assert threads.candidate_threads(3e5, 2e7, budget=4) == 1
    assert threads.candidate_threads(5e7, 2e7, budget=4) == 3
    assert threads.candidate_threads(5e9, 2e7, budget=4) == 4
    assert threads.candidate_threads(3e5, 0, budget=4) == 4  # no size rule


def test_the_in_process_executor_builds_its_evaluator_with_the_budget(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    assert threads.NO_BUDGET.for_candidate(1e9) is None  # no executor: torch's setting is left alone
    granted = []
    with LocalExecutor(workers=0, flops_per_thread=2e7) as executor:
        executor.serve(lambda budget: granted.append(budget))
        budget = granted[0]
        assert budget.for_candidate(3e5) == 1 and budget.for_candidate(1e9) == 2
        before = torch.get_num_threads()
        with threads.torch_threads(budget.for_candidate(1e9)):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == before
    assert not any(name.startswith("BLOCKQNN_THREADS") for name in os.environ)  # no environment round trip


def test_worker_processes_receive_their_share(monkeypatch):
    from blockqnn.executors import local as executors

    monkeypatch.setattr(executors, "cpu_threads", lambda count: 3)
    seen = []
    stand_in = type("W", (), {"stop": lambda s: 0})
    monkeypatch.setattr(executors, "_Worker",
                        lambda i, env, budget, method: seen.append((env, budget)) or stand_in())
    with LocalExecutor(workers=2, flops_per_thread=1e6):
        pass
    assert [budget.threads for _, budget in seen] == [3, 3] and seen[0][0]["OMP_NUM_THREADS"] == "3"
    assert seen[0][1].flops_per_thread == 1e6


def test_auto_workers_fill_a_machine_without_gpus(monkeypatch):
    """One single-thread worker per usable core (affinity, capped by a cgroup quota); threads=N packs N per worker;
    one core left means in-process; GPUs keep one worker per GPU (times workers_per_gpu)."""
    monkeypatch.setattr(threads, "cgroup_quota", lambda: None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert LocalExecutor()._auto_workers([]) == 8
    assert LocalExecutor(threads=2)._auto_workers([]) == 4
    assert LocalExecutor(threads=8)._auto_workers([]) == 0
    monkeypatch.setattr(threads, "cgroup_quota", lambda: 3.0)  # a container's quota below its affinity
    assert LocalExecutor()._auto_workers([]) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert LocalExecutor()._auto_workers([]) == 0
    assert LocalExecutor()._auto_workers(["0"]) == 0 and LocalExecutor()._auto_workers(["0", "1"]) == 2
    assert LocalExecutor(workers_per_gpu=3)._auto_workers(["0"]) == 3

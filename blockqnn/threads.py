"""How many CPU threads a candidate trains with.

torch's default (one intra-op thread per core it sees) assumes the whole machine is free. Under a second busy
job, or several candidates at once, its spinning OpenMP threads wait for descheduled cores and a tiny network
trains 5-30x slower than on one thread. So a candidate gets the cores this process may really use (its CPU
affinity and its cgroup's CPU quota), divided among the candidates running at once, and no more threads than its
size can use: a network of ``flops_per_thread`` forward FLOPs per image or fewer trains on one thread. The executor,
which knows how many candidates run at once, grants each worker a ``ThreadBudget``; the worker's evaluator is built
with it.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CORES_ENV = "BLOCKQNN_CORES"  # a cap on the cores this process counts as its own (set by share_cores, or by hand)


def usable_cores() -> int:
    """Cores this process may use: ``machine_cores()``, capped by ``BLOCKQNN_CORES`` (its share when several
    searches run side by side)."""
    cap = os.environ.get(CORES_ENV, "")
    return min(machine_cores(), int(cap)) if cap.isdigit() and int(cap) >= 1 else machine_cores()


def machine_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (containers, Slurm)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = cgroup_quota()
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


def share_cores(jobs: int) -> int:
    """Give this process its share of the machine when ``jobs`` processes like it run at once (a Hydra launcher's
    ``n_jobs``; negative counts as joblib does: -1 is one per core); returns the share."""
    cores = machine_cores()
    jobs = max(1, cores + 1 + jobs if jobs < 0 else jobs)
    share = max(1, cores // jobs)
    os.environ[CORES_ENV] = str(share)
    return share


def cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota in cores (cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def cpu_threads(concurrent: int) -> int:
    """Threads each of ``concurrent`` candidates (0: one, in this process) may use without oversubscribing."""
    return max(1, usable_cores() // max(concurrent, 1))


def cpu_workers(threads: int) -> int:
    """Candidates of ``threads`` threads each that the usable cores hold at once (at least one)."""
    return max(1, usable_cores() // max(threads, 1))


def candidate_threads(flops: float, flops_per_thread: float, budget: int) -> int:
    """Threads for one candidate of ``flops`` forward FLOPs per image: one per ``flops_per_thread`` (0: no size
    rule), at least one, at most the budget."""
    wanted = budget if flops_per_thread <= 0 else math.ceil(flops / flops_per_thread)
    return max(1, min(budget, wanted))


@dataclass(frozen=True)
class ThreadBudget:
    """The CPU threads an executor grants each candidate of one worker, passed to the worker's evaluator when it is
    built: at most ``threads`` (None: torch's own setting is left alone, as for a candidate evaluated outside a
    search, or a Ray task, whose worker Ray sizes to the task's ``num_cpus``), one per ``flops_per_thread``
    forward FLOPs per image (0: always the whole budget)."""

    threads: int | None = None
    flops_per_thread: float = 0.0

    def for_candidate(self, flops: float) -> int | None:
        """Threads for a candidate of ``flops`` (``candidate_threads``); None: leave torch's setting."""
        return None if self.threads is None else candidate_threads(flops, self.flops_per_thread, self.threads)


NO_BUDGET = ThreadBudget()  # no executor granted one: torch's setting is left alone


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` for a block of code (one candidate), then restored; None: as is."""
    import torch

    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

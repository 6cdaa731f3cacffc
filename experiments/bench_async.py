"""Synchronous against asynchronous search: how busy the workers are, and what staleness costs the agent.

1. A simulated cluster. Each candidate "trains" by sleeping for a time drawn from real candidates: the forward
   FLOPs of random NSC blocks stacked by the ``cifar`` template (training time taken proportional to FLOPs),
   scaled so that the median candidate takes ``--median-ms`` x W / 8 (the rate of results the search process
   handles stays the same at every W, so the figures measure scheduling, not this machine's two cores). The real
   search loop and local worker processes run B = 64 blocks per iteration with W = 8, 32 and 64 workers, in both
   modes. Printed: worker utilization (busy time / (W x makespan)), blocks per second, and async / sync.
2. Staleness on the table space (NAS-Bench-201): Q-learning at equal budget, sync against async, over many seeds,
   through the real loop with an executor that keeps virtual time (W workers, durations as in 1; no sleeping).
   Printed: mean best accuracy found, and how many seeds found the table's optimum.
3. ``--real``: the quickstart search with 2 local CPU workers, sync against async: wall time and utilization.

    python experiments/bench_async.py                      # 1 and 2
    python experiments/bench_async.py --skip-staleness --workers 8 32
    python experiments/bench_async.py --real               # adds 3 (minutes)
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blockqnn.config import compose  # noqa: E402
from blockqnn.executors import Batches, call  # noqa: E402
from blockqnn.search import search  # noqa: E402
from blockqnn.store import Store  # noqa: E402

DURATIONS_ENV = "BENCH_ASYNC_DURATIONS"  # a JSON file of sorted candidate durations (seconds), for the workers
BATCH = 64


@dataclass
class SimulatedResult:
    """The fields of ``blockqnn.candidate.Result`` the loop reads (this module imports no torch: 64 workers)."""

    status: str
    accuracy: float
    reward: float
    wall_time: float


# ---- candidate durations ------------------------------------------------------------------------------------
def flops_of_random_blocks(n: int, seed: int = 0) -> np.ndarray:
    """Forward FLOPs per image of ``n`` random NSC blocks (epsilon 1) in the cifar template on CIFAR-10."""
    from hydra.utils import instantiate

    from blockqnn.agents.qlearning import QLearningAgent
    from blockqnn.codes import Block
    from blockqnn.network import network_complexity

    cfg = compose("search", ["template=cifar", "dataset=cifar10"])
    space, template = instantiate(cfg.space), instantiate(cfg.template)
    agent = QLearningAgent(space, batch_size=n, epsilon_override=1.0, seed=seed)
    blocks = [Block.parse(space.decode(t)) for t in agent.sample()]
    return np.array([network_complexity(b, template, 3, 10, 32)[1] for b in blocks])


def duration(arch: str, durations: list[float]) -> float:
    """The candidate's duration: a quantile of the distribution, chosen by the block (always the same)."""
    u = int(hashlib.sha256(arch.encode()).hexdigest()[:12], 16) / float(16**12)
    return durations[min(int(u * len(durations)), len(durations) - 1)]


_durations: list[float] | None = None


def sleeping_evaluate(arch: str, cfg) -> SimulatedResult:
    """A worker's candidate: sleep for its duration (reward constant: the agent is random search here)."""
    global _durations
    if _durations is None:
        _durations = json.loads(Path(os.environ[DURATIONS_ENV]).read_text())
    seconds = duration(arch, _durations)
    time.sleep(seconds)
    return SimulatedResult("ok", 0.5, 0.5, seconds)


# ---- 1: the simulated cluster -------------------------------------------------------------------------------
def utilization(run_dir: Path, workers: int) -> tuple[float, float, int, float]:
    """Busy time / (W x makespan), blocks per second, blocks, and the steady state's utilization (until the last
    candidate starts: without the final drain, a once-per-search cost), from the history's timings. Time runs
    from the first candidate's start, so the workers' start-up (imports) counts in neither mode."""
    with Store.open(run_dir, readonly=True) as store:
        rows = store.candidates()
    trained = [r for r in rows if not r["cached"]]
    start, last = min(r["started_at"] for r in trained), max(r["started_at"] for r in trained)
    makespan = max(r["finished_at"] for r in rows) - start
    steady = sum(max(0.0, min(r["finished_at"], last) - r["started_at"]) for r in trained) / (workers * (last - start))
    return sum(r["wall_time"] for r in trained) / (workers * makespan), len(rows) / makespan, len(rows), steady


def bench_cluster(worker_counts: list[int], iterations: int, median_ms: float, flops: np.ndarray, workdir: Path
                  ) -> None:
    spread = np.percentile(flops, 95) / np.percentile(flops, 5)
    print(f"\n1. simulated cluster: B = {BATCH}, {iterations} iterations, durations from {len(flops)} random "
          f"cifar-template blocks (FLOPs: 95th / 5th percentile {spread:.1f}x, max / median "
          f"{flops.max() / np.median(flops):.1f}x)")
    print(f"{'W':>4} {'median':>8} | {'sync busy':>9} {'steady':>7} {'blocks/s':>8} | {'async busy':>10} "
          f"{'steady':>7} {'blocks/s':>8} | {'async/sync':>10}")
    for workers in worker_counts:
        median = median_ms / 1000 * workers / 8
        path = workdir / f"durations-{workers}.json"
        path.write_text(json.dumps(sorted((flops / np.median(flops) * median).tolist())))
        os.environ[DURATIONS_ENV] = str(path)
        figures = {}
        for mode in ("sync", "async"):
            run_dir = workdir / f"cluster-{workers}-{mode}"
            cfg = compose("search", ["agent=random", f"agent.batch_size={BATCH}", "agent.epsilon_schedule=constant",
                                     f"agent.schedule_iterations={iterations}", "logger=none", "progress.mode=off",
                                     f"executor.workers={workers}", f"search.mode={mode}", "executor.threads=1"])
            cfg.evaluator = {"_target_": "blockqnn.search.function_evaluator", "_partial_": True,
                             "fn": f"{__name__}.sleeping_evaluate"}
            search(cfg, run_dir)
            figures[mode] = utilization(run_dir, workers)
        (su, sr, _, ss), (au, ar, _, ast) = figures["sync"], figures["async"]
        print(f"{workers:>4} {median * 1000:>6.0f}ms | {su:>9.1%} {ss:>7.1%} {sr:>8.1f} | {au:>10.1%} {ast:>7.1%} "
              f"{ar:>8.1f} | {ar / sr:>9.2f}x", flush=True)


# ---- 2: staleness on the table space ------------------------------------------------------------------------
class VirtualCluster(Batches):
    """An executor of ``capacity`` workers that keeps virtual time: a candidate runs the moment a worker is free
    (greedy, in submission order) and finishes after its duration; ``next_finished`` returns the earliest."""

    def __init__(self, capacity: int, durations: list[float]) -> None:
        self.capacity, self.durations = capacity, durations
        self.clock, self._queue, self._running = 0.0, [], []

    def __enter__(self) -> VirtualCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._running)

    def serve(self, factory) -> None:
        self._evaluator = factory()

    def submit(self, key, job) -> None:
        self._queue.append((key, job))
        self._start()

    def _start(self) -> None:
        while self._queue and len(self._running) < self.capacity:
            key, job = self._queue.pop(0)
            end = self.clock + duration(job.arch, self.durations)
            heapq.heappush(self._running, (end, id(key), key, call(self._evaluator, job)))

    def next_finished(self):
        self.clock, _, key, result = heapq.heappop(self._running)
        self._start()
        return key, result


def bench_staleness(table: Path, seeds: int, workers: int, flops: np.ndarray, scale: float, workdir: Path) -> None:
    from blockqnn.spaces.nasbench201 import NASBench201Space

    durations = sorted((flops / np.median(flops)).tolist())
    top = NASBench201Space(table=str(table)).best()[1]
    best = {"sync": [], "async": []}
    for seed in range(seeds):
        for mode in best:
            run_dir = workdir / f"table-{seed}-{mode}"
            cfg = compose("search", ["space=nasbench201", f"space.table={table}", "reward=accuracy", "logger=none",
                                     "progress.mode=off", f"agent.batch_size={BATCH}", "agent.alpha=0.1",
                                     f"agent.schedule_scale={scale}", f"seed={seed}", f"search.mode={mode}"])
            cfg.executor = {"_target_": f"{__name__}.VirtualCluster", "capacity": workers, "durations": durations}
            best[mode].append(search(cfg, run_dir)["accuracy"])
    with Store.open(workdir / "table-0-sync", readonly=True) as store:
        sampled = len(store.candidates())
    print(f"\n2. staleness: Q-learning on the table space, {sampled} sampled blocks per search, B = {BATCH}, "
          f"W = {workers} (virtual time), {seeds} seeds")
    for mode, values in best.items():
        found = sum(v >= top for v in values)
        print(f"  {mode:>5}: best accuracy mean {np.mean(values):.4f} (std {np.std(values):.4f}), "
              f"{found}/{seeds} seeds found the best {top:.4f}")


# ---- 3: a real run ------------------------------------------------------------------------------------------
def bench_real(workdir: Path) -> None:
    print("\n3. quickstart, 2 local CPU workers (one torch thread each)")
    for mode in ("sync", "async"):
        run_dir = workdir / f"quickstart-{mode}"
        cfg = compose("search", ["experiment=quickstart", "logger=none", "progress.mode=off",
                                 "executor.workers=2", "executor.threads=1", f"search.mode={mode}"])
        start = time.perf_counter()
        search(cfg, run_dir)
        wall = time.perf_counter() - start
        busy, rate, blocks, _ = utilization(run_dir, 2)
        print(f"  {mode:>5}: {wall:.0f} s for {blocks} blocks ({rate:.2f} blocks/s), workers busy {busy:.0%}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--iterations", type=int, default=20, help="iterations of B = 64 blocks per cluster run")
    parser.add_argument("--median-ms", type=float, default=50.0, help="median candidate duration at W = 8")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--staleness-workers", type=int, default=32)
    parser.add_argument("--schedule-scale", type=float, default=0.1, help="table searches: 19 iterations of 64")
    parser.add_argument("--table", type=Path, default=None, help="a NAS-Bench-201 table (default: generated)")
    parser.add_argument("--skip-cluster", action="store_true")
    parser.add_argument("--skip-staleness", action="store_true")
    parser.add_argument("--real", action="store_true")
    args = parser.parse_args()
    flops = flops_of_random_blocks(300)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if not args.skip_cluster:
            bench_cluster(args.workers, args.iterations, args.median_ms, flops, workdir)
        if not args.skip_staleness:
            from blockqnn.spaces.nasbench201 import write_synthetic_table

            table = args.table or write_synthetic_table(workdir / "table.csv", seed=0)
            bench_staleness(table, args.seeds, args.staleness_workers, flops, args.schedule_scale, workdir)
        if args.real:
            bench_real(workdir)


if __name__ == "__main__":
    main()

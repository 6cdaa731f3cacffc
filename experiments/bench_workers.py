"""What worker mode costs: a worker's start-up, paid once (the process, forked from this one on Linux; data, the
recipe's one-batch trial), and each candidate's overhead over its own training (the block and its result through a
pipe, the loop waking).

The same random blocks of the configured search (default: the quickstart's) are trained once in this process and
once through ``executor.workers`` worker processes, one candidate at a time (a second would share the cores and
blur the figure). Overhead per candidate = the time the loop waits for a result minus the training time the worker
measured for it.

    python experiments/bench_workers.py [--candidates 8] [--workers 1] [OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra.utils import instantiate  # noqa: E402

from blockqnn.candidate import Job, candidate_seed  # noqa: E402
from blockqnn.config import compose  # noqa: E402
from blockqnn.evaluate import candidate_factory  # noqa: E402
from blockqnn.executors import LocalExecutor  # noqa: E402
from blockqnn.spaces import explore  # noqa: E402


def random_blocks(space, count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [space.decode(explore(space, rng)) for _ in range(count)]


def timed_candidates(executor: LocalExecutor, blocks: list[str]) -> list[tuple[float, float]]:
    """(seen by the loop, measured inside the evaluator) seconds per candidate, one at a time."""
    times = []
    for position, arch in enumerate(blocks):
        start = time.perf_counter()
        executor.submit(position, Job(arch, arch, candidate_seed(0, arch)))
        _, result = executor.next_finished()
        assert result.status == "ok", result.error
        times.append((time.perf_counter() - start, result.wall_time))
    return times


def measure(cfg, space, blocks: list[str], workers: int) -> tuple[float, list[tuple[float, float]]]:
    """Seconds from start to every evaluator built, and the candidates' times."""
    start = time.perf_counter()
    with LocalExecutor(workers=workers, threads=1, flops_per_thread=0) as executor:
        executor.serve(candidate_factory(cfg, space))
        ready = time.perf_counter() - start
        return ready, timed_candidates(executor, blocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", default=["experiment=quickstart", "logger=none"])
    args = parser.parse_args()
    cfg = compose("search", args.overrides)
    space = instantiate(cfg.space)
    blocks = random_blocks(space, args.candidates, args.seed)
    in_process_ready, in_process = measure(cfg, space, blocks, 0)
    worker_ready, in_workers = measure(cfg, space, blocks, args.workers)
    overheads = [seen - inside for seen, inside in in_workers]
    training = statistics.median(inside for _, inside in in_process)
    print(f"{len(blocks)} candidates of {' '.join(args.overrides)}, one at a time")
    print(f"in-process: evaluator built in {in_process_ready:.2f} s; median candidate {training:.2f} s")
    print(f"{args.workers} worker(s): started and evaluator built in {worker_ready:.2f} s "
          f"({worker_ready - in_process_ready:.2f} s more than in-process: starting the process)")
    print(f"worker candidate: median {statistics.median(inside for _, inside in in_workers):.2f} s training, "
          f"overhead median {1000 * statistics.median(overheads):.1f} ms, max {1000 * max(overheads):.1f} ms "
          f"({100 * statistics.median(overheads) / training:.2f}% of a candidate)")


if __name__ == "__main__":
    main()

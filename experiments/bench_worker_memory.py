"""A worker's resident memory over a long search: does a worker that serves hundreds of candidates grow?

One CPU worker process, started as a search starts it (forked from this process on Linux), serves ``--candidates``
random blocks of the configured search (default: the quickstart's: digits, the tiny template, 8 epochs; no rung
stops, so every candidate trains the whole budget), one at a time. After each candidate the worker reports its own
resident set (``VmRSS`` in ``/proc/self/status``); the figure is printed at candidate 1, 10, 50, then every 50, and
at the end the growth from candidate 50 to the last. On a GPU the worker also reports the peak GPU memory each
candidate allocated (``Result.gpu_memory``) and what is still allocated between candidates.

    PYTHONPATH=. python experiments/bench_worker_memory.py [--candidates 500] [--seed 0] [OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_workers import random_blocks  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from blockqnn.candidate import Job, candidate_seed  # noqa: E402
from blockqnn.config import compose  # noqa: E402
from blockqnn.evaluate import candidate_factory  # noqa: E402
from blockqnn.executors import LocalExecutor  # noqa: E402
from blockqnn.executors.base import EvaluatorFactory  # noqa: E402
from blockqnn.threads import ThreadBudget  # noqa: E402


def resident_mb() -> float:
    """This process's resident set, in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def allocated_gpu_mb() -> float | None:
    import torch

    return torch.cuda.memory_allocated() / 2**20 if torch.cuda.is_available() else None


class Measured:
    """The search's evaluator, each result returned with the worker's memory after the candidate."""

    def __init__(self, build: EvaluatorFactory, budget: ThreadBudget) -> None:
        self.evaluator = build(budget)

    def __call__(self, job: Job) -> tuple[Any, float, float | None]:
        result = self.evaluator(job)
        return result, resident_mb(), allocated_gpu_mb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", default=["experiment=quickstart", "logger=none"])
    args = parser.parse_args()
    cfg = compose("search", args.overrides)
    space = instantiate(cfg.space)
    blocks = random_blocks(space, args.candidates, args.seed)
    print(f"{len(blocks)} candidates of {' '.join(args.overrides)}, one worker, one at a time", flush=True)
    rss, start = {}, time.perf_counter()
    with LocalExecutor(workers=1, threads=1, flops_per_thread=0) as executor:
        executor.serve(partial(Measured, candidate_factory(cfg, space)))
        for count, arch in enumerate(blocks, 1):
            block_hash = space.canonical_hash(arch)
            executor.submit(count, Job(arch, block_hash, candidate_seed(cfg.seed, block_hash)))
            _, (result, rss[count], gpu) = executor.next_finished()
            if count in (1, 10) or count % 50 == 0 or count == len(blocks):
                gpu_text = "" if gpu is None else (f", GPU allocated between candidates {gpu:.1f} MB, this "
                                                   f"candidate's peak {getattr(result, 'gpu_memory', 0) or 0:.1f} MB")
                print(f"candidate {count}: worker RSS {rss[count]:.1f} MB ({result.status}){gpu_text}, "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
    if len(blocks) >= 50:
        last = len(blocks)
        print(f"RSS after 50 candidates {rss[50]:.1f} MB, after {last} {rss[last]:.1f} MB: "
              f"{100 * (rss[last] / rss[50] - 1):+.1f}%")


if __name__ == "__main__":
    main()

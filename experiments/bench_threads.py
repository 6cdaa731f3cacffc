"""A candidate's wall time with another busy process on the machine, by torch thread count.

Trains one quickstart candidate (digits, tiny template, the quickstart recipe) several times: alone, and while a
second process keeps every core busy (torch matrix products on as many threads as cores, like a second search or
a test suite). Threads: torch's default (every core) against the executor's choice for this candidate
(``blockqnn.threads.candidate_threads``: the cores this process may use, capped by the network's size). Target:
with the busy neighbour the chosen setting stays within 2x of its time alone.

    python experiments/bench_threads.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blockqnn import threads  # noqa: E402
from blockqnn.candidate import Job  # noqa: E402
from blockqnn.config import compose  # noqa: E402
from blockqnn.evaluate import build_evaluator  # noqa: E402

BLOCK = "(1,1,3,0,0),(2,1,3,1,0),(3,5,0,1,2),(4,7,0,0,0)"
BUSY = "import torch; torch.set_num_threads({n}); a = torch.randn(600, 600)\nwhile True: a @ a"


def wall_times(cfg, count: int, repeats: int) -> list[float]:
    evaluator = build_evaluator(cfg, budget=threads.ThreadBudget(count))  # exactly `count` threads a candidate
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = evaluator(Job(BLOCK, BLOCK, cfg.seed))
        assert result.status == "ok", result.error
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = compose("search", ["experiment=quickstart", "logger=none"])
    cores = threads.usable_cores()
    flops = build_evaluator(cfg)(Job(BLOCK, BLOCK, cfg.seed)).flops
    chosen = threads.candidate_threads(flops, cfg.executor.flops_per_thread, budget=cores)
    print(f"usable cores {cores}; candidate {BLOCK}: {flops / 1e6:.2f} MFLOPs per image -> {chosen} thread(s)")
    settings = {f"torch default ({cores})": cores, f"chosen ({chosen})": chosen}
    for name, count in settings.items():
        alone = statistics.median(wall_times(cfg, count, args.repeats))
        busy = subprocess.Popen([sys.executable, "-c", BUSY.format(n=cores)])
        try:
            time.sleep(2)  # the neighbour is up and spinning
            loaded = statistics.median(wall_times(cfg, count, args.repeats))
        finally:
            busy.kill()
            busy.wait()
        print(f"{name:>18}: alone {alone:.2f} s, with a busy neighbour {loaded:.2f} s ({loaded / alone:.1f}x)",
              flush=True)


if __name__ == "__main__":
    main()

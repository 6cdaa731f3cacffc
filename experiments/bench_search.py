"""How fast the search loop itself is: the paper's whole search on the table space, and executor overheads.

1. The paper's 11,392 blocks (178 iterations of 64, paper epsilon schedule) on the NAS-Bench-201 table space
   through the full loop: agent, history writes, dedupe, executor, logger none. Rewards come from the table,
   so this is everything a search does besides training. Target: under 2 minutes.
2. Per-candidate overhead of each executor with a trivial evaluator (returns at once): in-process local, local
   worker processes, and a local Ray instance; measured after a warm-up so start-up costs are left out.

    python experiments/bench_search.py                    # a generated 15,625-row table
    python experiments/bench_search.py --table nb201.csv  # your own table (conf/space/nasbench201.yaml columns)
    python experiments/bench_search.py --skip-ray --candidates 500
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blockqnn.candidate import Job, Result  # noqa: E402
from blockqnn.config import compose  # noqa: E402
from blockqnn.executors import LocalExecutor, RayExecutor  # noqa: E402
from blockqnn.executors.base import bound  # noqa: E402
from blockqnn.search import search  # noqa: E402
from blockqnn.spaces.nasbench201 import write_synthetic_table  # noqa: E402
from blockqnn.store import Store  # noqa: E402

TARGET_S = 120.0


def trivial(arch: str, cfg: object) -> Result:
    return Result(status="ok", accuracy=0.5, reward=0.5)


def bench_loop(table: Path, workdir: Path, overrides: list[str]) -> None:
    cfg = compose("search", ["space=nasbench201", f"space.table={table}", "reward=accuracy", "logger=none",
                             "progress.mode=off", "agent.epsilon_schedule=paper", "agent.schedule_scale=1",
                             "agent.batch_size=64", *overrides])
    start = time.perf_counter()
    search(cfg, workdir / "run")
    seconds = time.perf_counter() - start
    with Store.open(workdir / "run", readonly=True) as store:
        rows = store.candidates()
    cached = sum(r["cached"] for r in rows)
    assert len({r["hash"] for r in rows}) == len(rows) - cached  # each distinct block evaluated exactly once
    print(f"full search: {len(rows)} blocks ({len(rows) - cached} evaluated, {cached} cached) in {seconds:.1f} s: "
          f"{len(rows) / seconds:.0f} blocks/s, {1000 * seconds / len(rows):.2f} ms per block "
          f"(target < {TARGET_S:.0f} s: {'met' if seconds < TARGET_S else 'NOT met'}, "
          f"{TARGET_S / seconds:.1f}x under)")


def overhead(executor, n: int) -> float:
    """Milliseconds per candidate through ``executor.map`` with the trivial evaluator, after one warm-up batch."""
    items = [(i, Job(f"arch{i}", f"arch{i}", seed=i)) for i in range(n)]
    with executor:
        executor.serve(bound(trivial, None))
        list(executor.map(items[:8]))
        start = time.perf_counter()
        results = list(executor.map(items))
        seconds = time.perf_counter() - start
    assert sorted(p for p, _ in results) == list(range(n)) and all(r.status == "ok" for _, r in results)
    return 1000 * seconds / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", type=Path, help="NAS-Bench-201 CSV (default: a generated synthetic one)")
    parser.add_argument("--candidates", type=int, default=300, help="candidates per executor overhead measure")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the full search (e.g. seed=1)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if not args.skip_loop:
            bench_loop(args.table or write_synthetic_table(workdir / "table.csv"), workdir, args.overrides)
        n = args.candidates
        print(f"per-candidate overhead (wall time / candidates), trivial evaluator, {n} candidates:")
        print(f"  local, in-process:         {overhead(LocalExecutor(workers=0), n):.3g} ms")
        print(f"  local, 2 worker processes: {overhead(LocalExecutor(workers=2), n):.3g} ms")
        if not args.skip_ray:
            ray = RayExecutor(init={"num_cpus": 2, "include_dashboard": False, "log_to_driver": False})
            print(f"  ray, local 2-CPU instance: {overhead(ray, n):.3g} ms")


if __name__ == "__main__":
    main()

"""The quickstart's cost and what it still finds: ``python -m blockqnn.search experiment=quickstart`` (what
``make quickstart`` runs) timed as a whole process, over several seeds, against a ``--before`` setting.

Per run: wall time, candidates trained and stopped, the best reward, and whether the search visibly learns (the
mean reward of the blocks sampled in the last third of the iterations against those sampled at epsilon 1). The last
line: the median wall time, and the best reward against the ``--before`` runs' mean (the quickstart's target: at
most 90 s on a 2-core machine, the best reward within 0.005 of the earlier setting's mean).

Each run is a folder under ``--out``, reused when finished (``bench.json`` holds its wall time).

    python experiments/bench_quickstart.py --out runs/bench-quickstart --before stopping=none trainer.max_epochs=8
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench_stopping import REPO, run_search, spread

from blockqnn.store import Store


def learning(rows: list[dict]) -> tuple[float, float]:
    """Mean reward of the blocks sampled at epsilon 1, and of those sampled in the last third of the iterations
    (one iteration at the last epsilon is too few blocks to tell)."""
    scored = [row for row in rows if row["reward"] is not None]
    late = 2 * max(row["iteration"] for row in scored) / 3
    explored = [r["reward"] for r in scored if r["epsilon"] == 1.0]
    return statistics.fmean(explored), statistics.fmean(r["reward"] for r in scored if r["iteration"] >= late)


def measure(run: Path, command: list[str]) -> dict:
    wall = run_search(run, command)
    with Store.open(run, readonly=True) as store:
        rows, best = store.candidates(), store.best(1)[0]
    explored, exploited = learning(rows)
    return {"wall": wall, "best": best["reward"], "explored": explored, "exploited": exploited,
            "trained": sum(not r["cached"] for r in rows), "stopped": sum(r["status"] == "stopped" for r in rows)}


def arm(name: str, overrides: list[str], args: argparse.Namespace) -> list[dict]:
    results = []
    for seed in args.seeds:
        r = measure(args.out / f"{name}-seed{seed}", ["experiment=quickstart", f"seed={seed}", *overrides])
        print(f"{name} seed {seed}: {r['wall']:.0f} s, {r['trained']} trained, {r['stopped']} stopped, best reward "
              f"{r['best']:.4f}; mean reward at epsilon 1 {r['explored']:.4f}, in the last third "
              f"{r['exploited']:.4f}", flush=True)
        results.append(r)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-quickstart")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--before", nargs="*", default=["stopping=none"],
                        help="overrides that give the setting to compare with")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the quickstart runs (none: as shipped)")
    args = parser.parse_args()
    before, now = arm("before", args.before, args), arm("now", args.overrides, args)
    median = statistics.median(r["wall"] for r in now)
    best_before, best_now = [r["best"] for r in before], [r["best"] for r in now]
    learns = sum(r["exploited"] > r["explored"] for r in now)
    print(f"quickstart: median {median:.0f} s over {len(now)} runs (before: "
          f"{statistics.median(r['wall'] for r in before):.0f} s); best reward {spread(best_now)} vs "
          f"{spread(best_before)} before ({statistics.fmean(best_now) - statistics.fmean(best_before):+.4f}); "
          f"learns (last third above epsilon 1) in {learns} of {len(now)}")


if __name__ == "__main__":
    main()

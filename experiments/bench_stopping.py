"""What stopping weak candidates saves on real images, and what it costs: the same search with ``stopping=none``
and ``stopping=asha`` at an equal sampled budget, over several seeds.

Each arm runs ``python -m blockqnn.search experiment=cifar10_small`` (CIFAR-10 at 16x16 from an image folder, the
tiny template, 6 epochs; rungs at epochs 1 and 3) with every core busy (``executor.workers=auto``). Printed per run
and per arm: candidate-epochs trained, wall time, the best validation accuracy among blocks that trained the full
budget; and, from the ``none`` runs' full learning curves, Kendall's tau between each rung's accuracy and the last
epoch's (why stopping at that rung is safe, or not, on this data). The last line compares the arms.

Long: each run is a folder under ``--out``; a killed benchmark started again resumes the unfinished runs
(``resume=``) and reuses the finished ones, wall time summed over its sessions.

    python experiments/bench_stopping.py --root ../shared/data/cifar10-subset --out runs/bench-stopping
    python experiments/bench_stopping.py --root DATA --seeds 0 1 2 --budget 48 agent.batch_size=8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hydra.utils import instantiate  # noqa: E402

from blockqnn.config import compose  # noqa: E402
from blockqnn.store import Store, is_run  # noqa: E402

ARMS = ("none", "asha")


def run_search(run: Path, command: list[str]) -> float:
    """Wall seconds of the search ``command`` in ``run`` summed over the benchmark's sessions (``run/bench.json``);
    a partial run is resumed, a finished one reused."""
    record = run / "bench.json"
    done = json.loads(record.read_text()) if record.is_file() else {"wall_s": 0.0, "finished": False}
    if done["finished"]:
        return done["wall_s"]
    command = [f"resume={run}"] if is_run(run) else [*command, f"hydra.run.dir={run}"]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "blockqnn.search", *command], cwd=REPO, check=True,
                   env=os.environ | {"PYTHONPATH": str(REPO)})
    done = {"wall_s": done["wall_s"] + time.perf_counter() - start, "finished": True}
    record.write_text(json.dumps(done))
    return done["wall_s"]


def trained(run: Path) -> list[dict]:
    """The candidates this run trained (cached twins cost nothing), with their learning curves."""
    with Store.open(run, readonly=True) as store:
        return [row for row in store.candidates() if not row["cached"] and row["status"] != "failed"]


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's tau-a: ties count as neither concordant nor discordant."""
    signs = [(a - b) * (c - d) for (a, c), (b, d) in combinations(zip(x, y, strict=True), 2)]
    return sum((s > 0) - (s < 0) for s in signs) / max(len(signs), 1)


def summarise(rows: list[dict], wall: float) -> dict:
    full = [row["accuracy"] for row in rows if row["status"] == "ok"]
    return {"epochs": sum(row["epochs"] for row in rows), "wall": wall, "best": max(full, default=float("nan")),
            "stopped": sum(row["status"] == "stopped" for row in rows), "trained": len(rows)}


def asha_rungs(overrides: list[str]) -> tuple[int, ...]:
    """The rungs the ``asha`` arm stops at, as its config gives them (the preset's, or the overrides')."""
    return instantiate(compose("search", ["experiment=cifar10_small", "stopping=asha", *overrides]).stopping).rungs


def rung_taus(rows: list[dict], rungs: tuple[int, ...]) -> dict[int, float]:
    curves = [row["curve"] for row in rows if row["status"] == "ok" and len(row["curve"]) > max(rungs)]
    return {rung: kendall_tau([c[rung - 1] for c in curves], [c[-1] for c in curves]) for rung in rungs}


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} +- {sd:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="image folder with train/<class>/ and test/<class>/")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-stopping")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=48, help="blocks sampled per search (agent.budget)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every search")
    args = parser.parse_args()
    args.root = args.root.resolve()
    rungs = asha_rungs(args.overrides)
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    taus: list[dict[int, float]] = []
    for seed in args.seeds:
        for arm in ARMS:
            run = args.out / f"{arm}-seed{seed}"
            folder = ["dataset=imagefolder", f"dataset.source.root={args.root}"]
            wall = run_search(run, ["experiment=cifar10_small", *folder, f"stopping={arm}", f"seed={seed}",
                                    f"agent.budget={args.budget}", "logger=none", "progress.mode=log",
                                    *args.overrides])
            rows = trained(run)
            results[arm].append(summarise(rows, wall))
            if arm == "none":
                taus.append(rung_taus(rows, rungs))
            r = results[arm][-1]
            print(f"{arm:>4} seed {seed}: {r['trained']} trained, {r['stopped']} stopped, {r['epochs']} "
                  f"candidate-epochs, {r['wall']:.0f} s, best full-budget accuracy {r['best']:.4f}", flush=True)
    for rung in rungs:
        print(f"Kendall tau, accuracy at epoch {rung} vs the last epoch (stopping=none runs): "
              f"{spread([t[rung] for t in taus])}")
    total = {arm: {key: sum(r[key] for r in results[arm]) for key in ("epochs", "wall")} for arm in ARMS}
    best = {arm: [r["best"] for r in results[arm]] for arm in ARMS}
    for arm in ARMS:
        print(f"{arm:>4}: {total[arm]['epochs']} candidate-epochs, {total[arm]['wall'] / 3600:.2f} CPU-machine hours, "
              f"best full-budget accuracy {spread(best[arm])} over seeds {args.seeds}")
    print(f"stopping: {total['none']['epochs'] / total['asha']['epochs']:.2f}x fewer candidate-epochs, "
          f"{total['none']['wall'] / total['asha']['wall']:.2f}x less wall time, best accuracy "
          f"{spread(best['none'])} (none) vs {spread(best['asha'])} (asha)")


if __name__ == "__main__":
    main()

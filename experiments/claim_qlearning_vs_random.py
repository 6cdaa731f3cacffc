"""The paper's claim that Q-learning finds better blocks than random search in the same space, at small scale.

Runs real searches (``blockqnn.search``, every block trained) on a real dataset, digits by default, for both agents
(``agent=qlearning``, ``agent=random``) over several seeds, into one folder laid out like a Hydra multirun
(``OUT/0``, ``OUT/1``, ...), then writes the multirun report there (``blockqnn.report``: per-run pictures and
``agents.png``, best-so-far against trained blocks with the spread over seeds). Prints, per agent, the best reward
after the same numbers of *trained* blocks (cached repeats cost nothing and are not counted) and the mean reward
of the blocks sampled in the last quarter of the iterations. Finished runs are reused, so an interrupted call continues.

    python experiments/claim_qlearning_vs_random.py                         # 3 seeds, small budget, digits
    python experiments/claim_qlearning_vs_random.py --seeds 5 agent.schedule_scale=0.1 dataset=cifar10
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from blockqnn.config import compose
from blockqnn.report import analysis
from blockqnn.report import summary as report
from blockqnn.search import search

# A small budget: the paper's epsilon schedule shrunk to 12 iterations (3 at epsilon 1, then one per stage) of 4
# blocks, 48 sampled per run; a short early stop; and a learning rate large enough for Q to move within a few
# dozen blocks (alpha 0.01 suits the paper's 11,392; see conf/agent/qlearning.yaml).
SMALL_BUDGET = [
    "agent.schedule_scale=0.03", "agent.batch_size=4", "agent.alpha=0.1", "trainer.max_epochs=4",
    "trainer.batch_size=64", "logger=none", "progress.mode=off",
]
AGENTS = ("qlearning", "random")


def late_mean_reward(history: analysis.History) -> float:
    """Mean reward of the blocks sampled (cached repeats included) in the last quarter of the iterations."""
    iterations = sorted({r["iteration"] for r in history.rows})
    late = set(iterations[-max(1, len(iterations) // 4):])
    return float(np.mean([r["reward"] for r in history.rows if r["iteration"] in late and r["status"] == "ok"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="runs/claims/qlearning_vs_random")
    parser.add_argument("overrides", nargs="*", help="search config overrides after the small-budget ones")
    args = parser.parse_args()
    logging.getLogger("blockqnn").setLevel(logging.WARNING)
    out = Path(args.out)
    runs = []
    for agent in AGENTS:
        for seed in range(args.seeds):
            run_dir = out / str(len(runs))
            cfg = compose("search", [f"agent={agent}", f"seed={seed}", *SMALL_BUDGET, *args.overrides])
            start = time.perf_counter()
            search(cfg, run_dir, group=out.name)
            runs.append(run_dir)
            print(f"{agent:>9} seed {seed}: {run_dir} ({time.perf_counter() - start:.0f} s)", flush=True)

    report.report(out, top_k=3, wandb=False)
    histories = [analysis.load_history(r, 1) for r in runs]
    groups = analysis.by_agent(histories)
    n = min(len(analysis.best_so_far(h)) for h in histories)
    points = sorted({max(1, n // 4), max(1, n // 2), n})
    print(f"\nbest reward after n trained blocks (mean ± std over {args.seeds} seeds)")
    print(f"{'agent':>10} " + "".join(f"{f'n={p}':>18}" for p in points) + f"{'late-sample mean':>22}")
    for agent, group in sorted(groups.items()):
        curves = np.array([analysis.best_so_far(h)[:n] for h in group])
        cells = "".join(f"{curves[:, p - 1].mean():>10.4f} ± {curves[:, p - 1].std():.3f}" for p in points)
        last = [late_mean_reward(h) for h in group]
        distinct = [len(h.trained()) for h in group]
        print(f"{agent:>10} {cells}{np.mean(last):>14.4f} ± {np.std(last):.3f}   (trained: {distinct})")
    print(f"report: {out / 'summary.md'}; figure: {out / 'agents.png'}")


if __name__ == "__main__":
    main()

"""How well the reward model (``blockqnn.models.RewardModel``, the defaults of ``agent.model``) ranks blocks it has
not seen, after 20, 50, 100 and 200 scored blocks: Spearman's rho and Kendall's tau between predicted and measured
reward on held-out blocks, mean ± std over random splits.

* NAS-Bench-201 table (``--table``, every metric column named): random cells to fit on, 2,000 other cells to rank;
  also the rank correlation among the held-out cells in the table's top 20% (what a search near the top needs).
* Real images (``--runs``: search histories, e.g. the 15 of experiments/results/agents-cifar10.tar.xz extracted):
  the distinct trained blocks of all runs pooled, each with the reward its search learnt from (a block stopped at a
  rung has its rung's reward); fit on a random share, rank all the others.

    python experiments/claim_model_quality.py --table ../shared/data/nasbench201/nb201_cifar100_imagenet16.csv \\
        --metric-columns cifar100_test_acc imagenet16_test_acc
    mkdir -p /tmp/agents && tar -xJf experiments/results/agents-cifar10.tar.xz -C /tmp/agents
    python experiments/claim_model_quality.py --runs /tmp/agents/agents-cifar10
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau, spearmanr

from blockqnn.config import compose
from blockqnn.models import RewardModel
from blockqnn.report.analysis import load_history
from blockqnn.spaces.nasbench201 import NASBench201Space

SIZES = (20, 50, 100, 200)


def model_settings() -> dict:
    """The forest's settings as ``agent.model`` configures them (conf/agent/qlearning.yaml)."""
    model = compose("search", []).agent.model
    return {"trees": model.trees, "max_features": model.max_features}


def quality(archs: Sequence[str], rewards: np.ndarray, n: int, repeats: int, held_out: int | None,
            top_share: float | None = None) -> tuple[list[float], list[float], list[float]]:
    """Spearman, Kendall and (among the held-out blocks in the top ``top_share``) Spearman per random split."""
    rhos, taus, tops = [], [], []
    for seed in range(repeats):
        order = np.random.default_rng(seed).permutation(len(archs))
        train, test = order[:n], order[n:] if held_out is None else order[n:n + held_out]
        model = RewardModel(**model_settings(), seed=seed).fit([archs[i] for i in train], rewards[train])
        predicted = model.predict([archs[i] for i in test])[0]
        rhos.append(spearmanr(predicted, rewards[test])[0])
        taus.append(kendalltau(predicted, rewards[test])[0])
        if top_share:
            top = rewards[test] >= np.quantile(rewards[test], 1 - top_share)
            tops.append(spearmanr(predicted[top], rewards[test][top])[0])
    return rhos, taus, tops


def stat(values: list[float]) -> str:
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}" if values else "-"


def report(name: str, archs: list[str], rewards: np.ndarray, repeats: int, held_out: int | None,
           top_share: float | None) -> None:
    print(f"\n### {name}: {len(archs)} distinct blocks\n")
    print("| blocks fitted on | Spearman | Kendall |" + (" Spearman in the top 20% |" if top_share else "")
          + " CPU s per split |")
    print("|---|---|---|---|" + ("---|" if top_share else ""))
    for n in SIZES:
        if n >= len(archs) - 10:
            continue
        start = time.process_time()
        rhos, taus, tops = quality(archs, rewards, n, repeats, held_out, top_share)
        seconds = (time.process_time() - start) / repeats
        print(f"| {n} | {stat(rhos)} | {stat(taus)} |" + (f" {stat(tops)} |" if top_share else "")
              + f" {seconds:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--table", type=Path, help="a NAS-Bench-201 CSV table")
    source.add_argument("--runs", type=Path, help="a folder of search run folders (*/history.sqlite)")
    parser.add_argument("--metric-columns", nargs="+", default=["accuracy"])
    parser.add_argument("--repeats", type=int, default=10, help="random splits per size")
    args = parser.parse_args()
    print(f"model: random forest {model_settings()}; {args.repeats} random splits per size")
    if args.table:
        for column in args.metric_columns:
            space = NASBench201Space(args.table, "arch", column)
            archs = list(space.metrics)
            report(f"NAS-Bench-201 {column}", archs, np.array([space.metrics[a] for a in archs]), args.repeats,
                   2000, 0.2)
    else:
        blocks: dict[str, tuple[str, float]] = {}
        for path in sorted(args.runs.glob("*/history.sqlite")):
            for row in load_history(path.parent, 1).trained():
                if row["reward"] is not None:
                    blocks.setdefault(row["hash"], (row["arch"], row["reward"]))
        archs = [arch for arch, _ in blocks.values()]
        report(f"real images ({args.runs})", archs, np.array([r for _, r in blocks.values()]), args.repeats, None,
               None)


if __name__ == "__main__":
    main()

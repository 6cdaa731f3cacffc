"""The paper's claims on real images, at a size a CPU runs: Q-learning against random search and regularized
evolution in the NSC space (its figure 8), and the block it finds against the hand-designed ones (its table 3).

Reads a multirun sweep of searches, one per agent and seed, for example

    python -m blockqnn.search -m experiment=cifar10_small logger=none \\
        seed=0,1,2,3,4 agent=qlearning,random,evolution hydra.sweep.dir=runs/agents-cifar10
    python -m blockqnn.report runs/agents-cifar10                       # agents.png, the equal-count table
    PYTHONPATH=. python experiments/claim_agents_real_images.py runs/agents-cifar10 --epochs 30 --hand --jobs 2

(``dataset=imagefolder dataset.source.root=TREE`` searches an image-folder copy of CIFAR-10 instead of the archive),
and prints, per agent, the best early-stop reward at equal numbers of trained blocks and the test accuracy of
each run's top-1 block trained longer (``blockqnn.train``'s training on the search's own dataset and template,
``--epochs`` of the final recipe), with one-sided Mann-Whitney U tests across seeds (Q-learning above each other
agent, then the baselines between themselves; exact for small samples, no normality assumed) and the machine-hours
the searches took (while a candidate trained). ``--hand``: the best block found and the paper's residual and
Inception blocks, each trained with ``--hand-seeds`` seeds the same way, test accuracy and parameters side by side.
Each training is a folder SWEEP/claims/HASH-seedN (the block's canonical hash), reused when finished and continued
when interrupted; ``--jobs`` trains that many at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from bench_stopping import spread
from omegaconf import DictConfig
from scipy.stats import mannwhitneyu

from blockqnn.codes import Block
from blockqnn.config import compose
from blockqnn.report import analysis
from blockqnn.resume import command_line_keys, merge_stored
from blockqnn.store import DB_NAME
from blockqnn.threads import cpu_threads
from blockqnn.train import RESULT_FILE, SEARCHED, train

# The paper's hand-designed blocks in NSC (docs/blocks.md).
HAND = {
    "residual": "[(1,4,0,0,0),(2,1,3,1,0),(3,1,3,2,0),(4,5,0,1,3),(5,7,0,0,0)]",
    "inception": "[(1,4,0,0,0),(2,1,1,1,0),(3,1,3,2,0),(4,1,1,1,0),(5,1,5,4,0),(6,6,0,3,5),(7,2,3,1,0),"
                 "(8,1,1,7,0),(9,6,0,6,8),(10,7,0,0,0)]",
}
LEARNER = "q-learning"


def sweep_histories(sweep: Path) -> list[analysis.History]:
    runs = sorted((p for p in sweep.iterdir() if (p / DB_NAME).is_file()), key=lambda p: (len(p.name), p.name))
    histories, refused = analysis.load_histories(runs, top_k=1)
    for error in refused:
        logging.warning("left out: %s", error)
    return histories


def training_config(block: str, searched: analysis.History, seed: int, epochs: int, extra: list[str]) -> DictConfig:
    """``blockqnn.train``'s config for ``block``: the search's dataset and template, the final recipe cut to
    ``epochs`` epochs."""
    overrides = [f"seed={seed}", f"trainer.max_epochs={epochs}", "logger=none", "onnx=null", "program=null",
                 "progress.mode=off", *extra]
    cfg = compose("train", overrides)
    cfg.block = block
    return merge_stored(searched.config, cfg, SEARCHED, command_line_keys(overrides))


def train_all(plans: dict[Path, DictConfig], jobs: int) -> dict[Path, dict]:
    """Each folder's training (a finished folder is read back; an interrupted one continues from its last
    checkpoint), ``jobs`` at a time, each on its share of the cores."""
    todo = {folder: cfg for folder, cfg in plans.items() if not (folder / RESULT_FILE).is_file()}
    if jobs > 1 and len(todo) > 1:
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, spawn, initializer=torch.set_num_threads, initargs=(cpu_threads(jobs),)) as pool:
            list(pool.map(train, todo.values(), todo.keys()))
    else:
        for folder, cfg in todo.items():
            train(cfg, folder)
    return {folder: json.loads((folder / RESULT_FILE).read_text()) for folder in plans}


def folder_of(out: Path, block: str, seed: int) -> Path:
    """One folder per distinct block and seed, so a block found by several runs, or equal to a hand-designed one,
    trains once."""
    return out / f"{Block.parse(block, max_index=None).canonical_hash()}-seed{seed}"


def one_sided(learner: list[float], other: list[float]) -> float:
    """p of ``learner`` above ``other`` (Mann-Whitney U, exact when the samples are small and untied)."""
    return float(mannwhitneyu(learner, other, alternative="greater").pvalue)


def agents_table(histories: list[analysis.History], tests: dict[Path, float]) -> None:
    budget = analysis.common_budget(histories)
    groups = analysis.by_agent(histories)
    best = {agent: [analysis.best_after(h, budget) for h in runs] for agent, runs in groups.items()}
    test = {agent: [tests[h.run_dir] for h in runs if h.run_dir in tests] for agent, runs in groups.items()}
    print(f"\nat {budget} trained blocks each | runs | best early-stop reward | top-1 test accuracy | machine-hours")
    for agent, runs in groups.items():
        hours = sum(analysis.busy_hours(h) for h in runs)
        tested = spread(test[agent]) if test[agent] else "-"
        print(f"{agent} | {len(runs)} | {spread(best[agent])} | {tested} | {hours:.2f}")
    for agent, other in compared_pairs(list(groups), best):
        p_best = one_sided(best[agent], best[other])
        line = f"{agent} above {other} (one-sided Mann-Whitney U): best reward p = {p_best:.4f}"
        if test[agent] and test[other]:
            line += f", top-1 test accuracy p = {one_sided(test[agent], test[other]):.4f}"
        print(line)


def compared_pairs(agents: list[str], best: dict[str, list[float]]) -> list[tuple[str, str]]:
    """Q-learning above each other agent (the paper's claim), then the baselines between themselves, the one with
    the higher mean best reward above the other."""
    others = sorted((a for a in agents if a != LEARNER), key=lambda a: -statistics.fmean(best[a]))
    claimed = [(LEARNER, other) for other in others] if LEARNER in agents else []
    return claimed + [(a, b) for i, a in enumerate(others) for b in others[i + 1:]]


def hand_blocks(histories: list[analysis.History]) -> dict[str, str]:
    """The best block of the whole sweep by early-stop reward, and the hand-designed ones."""
    best = max(histories, key=lambda h: h.best[0]["reward"])
    return {"found": best.best[0]["arch"], **HAND}


def hand_table(blocks: dict[str, str], results: dict[Path, dict], out: Path, seeds: int) -> None:
    print(f"\nblock | test accuracy over {seeds} seeds | params")
    for name, code in blocks.items():
        tested = [results[folder_of(out, code, seed)] for seed in range(seeds)]
        print(f"{name} {code} | {spread([r['test_acc'] for r in tested])} | {tested[0]['params']:,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a multirun folder of searches")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of each longer training")
    parser.add_argument("--hand", action="store_true", help="also the found block against the hand-designed ones")
    parser.add_argument("--hand-seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once, each on its share of the cores")
    parser.add_argument("--train", nargs="*", default=[], help="overrides for every training (blockqnn.train)")
    args = parser.parse_args()
    logging.getLogger("blockqnn").setLevel(logging.WARNING)
    histories = sweep_histories(args.sweep)
    out = args.sweep / "claims"
    top1 = {h.run_dir: folder_of(out, h.best[0]["arch"], 0) for h in histories}
    plans = {top1[h.run_dir]: training_config(h.best[0]["arch"], h, 0, args.epochs, args.train) for h in histories}
    blocks = hand_blocks(histories) if args.hand else {}
    for code in blocks.values():  # the sweep's runs share dataset and template: any of them gives the config
        plans |= {folder_of(out, code, seed): training_config(code, histories[0], seed, args.epochs, args.train)
                  for seed in range(args.hand_seeds)}
    results = train_all(plans, args.jobs)
    tests = {}
    for h in histories:
        result = results[top1[h.run_dir]]
        tests[h.run_dir] = result["test_acc"]
        print(f"{h.run_dir.name}: {h.agent} seed {h.config.seed}, best reward {h.best[0]['reward']:.4f}, "
              f"top-1 test accuracy {result['test_acc']:.4f} after {args.epochs} epochs", flush=True)
    agents_table(histories, tests)
    if blocks:
        hand_table(blocks, results, out, args.hand_seeds)


if __name__ == "__main__":
    main()

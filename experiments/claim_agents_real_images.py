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
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from bench_stopping import spread
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from scipy.stats import mannwhitneyu

from blockqnn.candidate import Candidate
from blockqnn.codes import Block
from blockqnn.config import compose
from blockqnn.drawing import figure
from blockqnn.report import analysis, plots
from blockqnn.resume import command_line_keys, merge_stored
from blockqnn.search.asynchronous import replay
from blockqnn.search.loop import learnt_reward
from blockqnn.store import DB_NAME, candidate_of
from blockqnn.threads import cpu_threads
from blockqnn.train import RESULT_FILE, SEARCHED, train

# The paper's hand-designed blocks in NSC (docs/blocks.md).
HAND = {
    "residual": "[(1,4,0,0,0),(2,1,3,1,0),(3,1,3,2,0),(4,5,0,1,3),(5,7,0,0,0)]",
    "inception": "[(1,4,0,0,0),(2,1,1,1,0),(3,1,3,2,0),(4,1,1,1,0),(5,1,5,4,0),(6,6,0,3,5),(7,2,3,1,0),"
                 "(8,1,1,7,0),(9,6,0,6,8),(10,7,0,0,0)]",
}
# The claim's agent: the model-based one where the sweeps have it (with exploit: the presets' since issue #29).
LEARNERS = ("q-learning + model + exploit", "q-learning + model", "q-learning")


def sweep_histories(sweeps: list[Path]) -> list[analysis.History]:
    runs = [run for sweep in sweeps for run in sorted((p for p in sweep.iterdir() if (p / DB_NAME).is_file()),
                                                      key=lambda p: (len(p.name), p.name))]
    histories, refused = analysis.load_histories(runs, top_k=1)
    for error in refused:
        logging.warning("left out: %s", error)
    unfinished = [h for h in histories if len(h.rows) < h.config.agent.budget]
    for h in unfinished:
        logging.warning("left out, unfinished (%d of %d blocks): %s", len(h.rows), h.config.agent.budget, h.run_dir)
    return [h for h in histories if h not in unfinished]


def agent_label(history: analysis.History) -> str:
    """The agent as the claims name it: Q-learning planning with the reward model (``agent.model.proposals`` > 1
    or ``planning`` > 0; ``+ exploit`` with ``agent.model.exploit``) apart from the paper's, which the history's
    agent name does not tell."""
    model = OmegaConf.select(history.config, "agent.model") or {}
    planned = model.get("proposals", 1) > 1 or model.get("planning", 0) > 0 or model.get("exploit", False)
    if history.agent != "q-learning" or not planned:
        return history.agent
    return f"{history.agent} + model" + (" + exploit" if model.get("exploit", False) else "")


def by_label(histories: list[analysis.History]) -> dict[str, list[analysis.History]]:
    groups: dict[str, list[analysis.History]] = {}
    for h in histories:
        groups.setdefault(agent_label(h), []).append(h)
    return groups


def epoch_rate(histories: list[analysis.History]) -> tuple[float, float]:
    """Seconds a trained epoch costs as ``a + b x FLOPs`` (least squares over the candidates of ``histories``): the
    machine's rate for this preset, so that searches run under different loads (a machine shared with other jobs
    trains the same block several times slower) are charged alike for what they trained."""
    rows = [r for h in histories for r in h.trained() if (r["epochs"] or 0) > 0 and r["flops"] and r["wall_time"]]
    flops = np.array([r["flops"] for r in rows])
    seconds = np.array([r["wall_time"] / r["epochs"] for r in rows])
    b, a = np.polyfit(flops, seconds, 1)
    return float(a), float(b)


def streamed(rows: list[dict]) -> bool:
    """Whether an asynchronous search wrote the rows (each with its sampled and incorporated events)."""
    return all(r["incorporated_event"] for r in rows)


def learnt_order(history: analysis.History) -> list[dict]:
    """The history's candidates in the order its agent learnt from them (incorporated events; a synchronous
    search's by iteration and position)."""
    if streamed(history.rows):
        return sorted(history.rows, key=lambda r: r["incorporated_event"])
    return sorted(history.rows, key=lambda r: (r["iteration"], r["position"]))


def agent_seconds(history: analysis.History) -> list[float]:
    """The agent's own CPU seconds (sampling, fitting the reward model, choosing among proposals, learning) per
    candidate of ``learnt_order``: the search replayed through a fresh agent built from its config, each block
    sampled and each result learnt in the order the search did (an asynchronous search's events through the
    resume's own ``replay``, which checks each sample against the stored block). The agent is a deterministic
    function of them, so this is the search's own computation."""
    cfg = history.config
    space = instantiate(cfg.space)
    agent = instantiate(cfg.agent, space=space, seed=cfg.seed)
    candidates = [candidate_of(r) for r in learnt_order(history)]
    if not streamed(history.rows):  # synchronous: an iteration's blocks sampled, then learnt
        groups = iteration_groups(candidates)
        return [seconds for group in groups for seconds in replayed_iteration(agent, space, group, cfg.failed_reward)]
    seconds, start = {}, time.process_time()
    for number, candidate, _ in replay(agent, space, candidates, 0, cfg.failed_reward):
        if number == candidate.incorporated_event:
            seconds[number], start = time.process_time() - start, time.process_time()
    return [seconds[c.incorporated_event] for c in candidates]


def iteration_groups(candidates: list[Candidate]) -> list[list[Candidate]]:
    groups: dict[int, list[Candidate]] = {}
    for c in candidates:
        groups.setdefault(c.iteration, []).append(c)
    return list(groups.values())


def replayed_iteration(agent, space, candidates: list[Candidate], failed_reward: float) -> list[float]:
    """One synchronous iteration sampled and learnt again: its seconds shared among its candidates."""
    start = time.process_time()
    trajectories = agent.sample(len(candidates))
    sampling = time.process_time() - start
    if [space.decode(t) for t in trajectories] != [c.arch for c in candidates]:  # not the agent's time
        raise ValueError(f"the replayed agent samples other blocks than iteration {candidates[0].iteration}'s")
    start = time.process_time()
    agent.update(trajectories, [learnt_reward(c, failed_reward) for c in candidates])
    return [(sampling + time.process_time() - start) / len(candidates)] * len(candidates)


Curve = tuple[np.ndarray, np.ndarray]  # machine-hours and the best reward so far, after each result


def machine_hours(history: analysis.History, rate: tuple[float, float]) -> Curve:
    """(machine-hours, best reward so far) after each result, in the order the agent learnt them: each trained
    candidate charged its epochs at ``rate`` (``epoch_rate``), and every candidate the agent's own time
    (``agent_seconds``)."""
    a, b = rate
    rows = learnt_order(history)
    seconds = [own + (0 if r["cached"] else (r["epochs"] or 0) * (a + b * (r["flops"] or 0)))
               for own, r in zip(agent_seconds(history), rows)]
    rewards = [r["reward"] if r["status"] == "ok" and r["reward"] is not None else -np.inf for r in rows]
    return np.cumsum(seconds) / 3600, np.maximum.accumulate(np.asarray(rewards, dtype=float))


def best_at(hours: np.ndarray, best: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The best reward so far at each of ``grid``'s machine-hours (NaN before the first success)."""
    index = np.searchsorted(hours, grid, side="right") - 1
    values = np.where(index >= 0, best[np.maximum(index, 0)], np.nan)
    return np.where(np.isfinite(values), values, np.nan)


def charged(groups: dict[str, list[analysis.History]], rate: tuple[float, float]) -> dict[str, list[Curve]]:
    """Each run's (machine-hours, best reward so far) curve (``machine_hours``), per agent."""
    return {label: [machine_hours(h, rate) for h in runs] for label, runs in sorted(groups.items())}


def plot_hours(curves: dict[str, list[Curve]], rate: tuple[float, float], path: Path) -> None:
    """Best early-stop reward against machine-hours per agent: mean over seeds, min-max band, up to the hours every
    run of the agent reached."""
    fig, ax = figure(figsize=(7, 4.2))
    for label, runs in curves.items():
        grid = np.linspace(max(hours[0] for hours, _ in runs), min(hours[-1] for hours, _ in runs), 200)
        stack = np.array([best_at(hours, best, grid) for hours, best in runs])
        ax.plot(grid, np.nanmean(stack, 0), linewidth=2, label=f"{label} (mean of {len(runs)} runs)")
        ax.fill_between(grid, np.nanmin(stack, 0), np.nanmax(stack, 0), alpha=0.15)
    ax.set_xlabel(f"machine-hours (each epoch charged {rate[0]:.2f} s + {rate[1] * 1e6:.3f} s per MFLOP)")
    ax.set_ylabel("best early-stop reward so far")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    print(f"drawn: {plots.save_figure(fig, path)}")


def hours_table(curves: dict[str, list[Curve]], marks: list[float]) -> None:
    """Per agent, the charged machine-hours of a whole search (mean over seeds) and the mean best reward once
    ``marks`` machine-hours are spent (a run that ended sooner keeps its last best), the plot's figures in numbers."""
    print("\ncharged machine-hours | per search | " + " | ".join(f"best reward at {m:g} h" for m in marks))
    for label, runs in curves.items():
        at = np.array([best_at(hours, best, np.array(marks)) for hours, best in runs])
        means = [f"{np.nanmean(column):.4f}" if np.isfinite(column).any() else "-" for column in at.T]
        print(f"{label} | {statistics.fmean(hours[-1] for hours, _ in runs):.3g} | " + " | ".join(means))


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
    groups = by_label(histories)
    best = {agent: [analysis.best_after(h, budget) for h in runs] for agent, runs in groups.items()}
    test = {agent: [tests[h.run_dir] for h in runs if h.run_dir in tests] for agent, runs in groups.items()}
    print(f"\nat {budget} trained blocks each | seeds | best early-stop reward | per seed | top-1 test accuracy | "
          "per seed | machine-hours")
    for agent, runs in groups.items():
        hours = sum(analysis.busy_hours(h) for h in runs)
        seeds = ",".join(str(h.config.seed) for h in runs)
        tested = f"{spread(test[agent])} | {per_seed(test[agent])}" if test[agent] else "- | -"
        print(f"{agent} | {seeds} | {spread(best[agent])} | {per_seed(best[agent])} | {tested} | {hours:.2f}")
    for agent, other in compared_pairs(list(groups), best):
        p_best = one_sided(best[agent], best[other])
        line = f"{agent} above {other} (one-sided Mann-Whitney U): best reward p = {p_best:.4f}"
        if test[agent] and test[other]:
            line += f", top-1 test accuracy p = {one_sided(test[agent], test[other]):.4f}"
        print(line)


def per_seed(values: list[float]) -> str:
    return " ".join(f"{v:.4f}"[1:] for v in values)


def compared_pairs(agents: list[str], best: dict[str, list[float]]) -> list[tuple[str, str]]:
    """Q-learning (with the reward model, where the sweeps have it) above each other agent (the paper's claim), then
    the other agents between themselves, the one with the higher mean best reward above the other."""
    learner = next((a for a in LEARNERS if a in agents), None)
    others = sorted((a for a in agents if a != learner), key=lambda a: -statistics.fmean(best[a]))
    claimed = [(learner, other) for other in others] if learner else []
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
    parser.add_argument("sweeps", type=Path, nargs="+", help="multirun folders of searches (trainings: in the first)")
    parser.add_argument("--rewards-only", action="store_true", help="compare the early-stop rewards, train nothing")
    parser.add_argument("--plot", type=Path, help="draw best reward against machine-hours per agent here (each "
                        "epoch charged at the first sweep's rate: epoch_rate)")
    parser.add_argument("--hours-at", type=float, nargs="+", default=[0.1, 0.2, 0.25],
                        help="with --plot: print each agent's best reward once these machine-hours are spent")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of each longer training")
    parser.add_argument("--hand", action="store_true", help="also the found block against the hand-designed ones")
    parser.add_argument("--hand-seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once, each on its share of the cores")
    parser.add_argument("--train", nargs="*", default=[], help="overrides for every training (blockqnn.train)")
    args = parser.parse_args()
    logging.getLogger("blockqnn").setLevel(logging.WARNING)
    histories = sweep_histories(args.sweeps)
    if args.plot:
        reference = [h for h in histories if h.run_dir.parent == args.sweeps[0]]
        rate = epoch_rate(reference)
        curves = charged(by_label(histories), rate)
        plot_hours(curves, rate, args.plot)
        hours_table(curves, args.hours_at)
    if args.rewards_only:
        agents_table(histories, {})
        return
    out = args.sweeps[0] / "claims"
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
        print(f"{h.run_dir.name}: {agent_label(h)} seed {h.config.seed}, best reward {h.best[0]['reward']:.4f}, "
              f"top-1 test accuracy {result['test_acc']:.4f} after {args.epochs} epochs ({h.run_dir.parent.name})",
              flush=True)
    agents_table(histories, tests)
    if blocks:
        hand_table(blocks, results, out, args.hand_seeds)


if __name__ == "__main__":
    main()

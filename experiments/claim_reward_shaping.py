"""The paper's claim that reward shaping (r_t = r_T / T at every step) makes the search converge faster.

Trains nothing: the reward of a block is a synthetic, accuracy-like score of its structure, so the paper's own
schedule (178 iterations of 64 blocks, alpha 0.01, replay 128) runs in about a minute per agent. The landscape
(``synthetic_accuracy``) rewards what found blocks have in common in the paper: convolutions, element-wise adds,
a shortcut and a multi-branch structure, each up to a point. Good blocks therefore need several layers, which is
what shaping is for: without it only the Terminal action sees a reward directly, and its Q-value can run apart
from every other action's (ahead when rewards exceed q_init, making the greedy agent stop blocks early).

Prints the mean reward and the mean block length of the sampled blocks per epsilon stage, both agents, mean over
seeds; writes a PNG of the mean reward per iteration.

    python experiments/claim_reward_shaping.py                       # the paper's schedule, 5 seeds
    python experiments/claim_reward_shaping.py --offset 0.4          # rewards above q_init
    python experiments/claim_reward_shaping.py --seeds 3 agent.schedule_scale=0.5 agent.alpha=0.1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from hydra.utils import instantiate

from blockqnn.codes import Block
from blockqnn.config import compose
from blockqnn.report.analysis import block_features
from blockqnn.report.plots import figure, save_figure


def synthetic_accuracy(block: Block, offset: float = 0.0) -> float:
    """0.20 for a bare block, up to 0.82: +0.10 per conv (up to 4), +0.06 per add (up to 2), +0.06 for a
    shortcut, +0.04 for multi-branch, -0.02 per layer beyond 8; plus ``offset``. Deterministic.

    The scale matters because Q starts at q_init = 0.5: these rewards sit mostly below it, like early-stop
    accuracies on CIFAR-100 (the paper's search data); ``--offset 0.4`` puts them above it, like on digits."""
    f = block_features(block)
    return offset + (0.20 + 0.10 * min(f["n_conv"], 4) + 0.06 * min(f["n_add"], 2) + 0.06 * f["shortcut"]
                     + 0.04 * f["multi_branch"] - 0.02 * max(0, f["layers"] - 8))


def run(shaping: bool, seed: int, overrides: list[str], offset: float = 0.0) -> tuple[np.ndarray, np.ndarray, list]:
    """One search with the synthetic reward: per iteration the mean reward and mean length of the sampled blocks,
    and the iteration's epsilon."""
    cfg = compose("search", [f"agent.shaping={str(shaping).lower()}", f"seed={seed}", *overrides])
    space = instantiate(cfg.space)
    agent = instantiate(cfg.agent, space=space, seed=seed)
    scores: dict[str, tuple[float, int]] = {}
    rewards, lengths, epsilons = [], [], []
    while not agent.done:
        epsilons.append(agent.epsilon)
        trajectories = agent.sample()
        batch = []
        for t in trajectories:
            arch = space.decode(t)
            if arch not in scores:
                block = space.parse(arch)
                scores[arch] = (synthetic_accuracy(block, offset), len(block.body))
            batch.append(scores[arch])
        agent.update(trajectories, [r for r, _ in batch])
        rewards.append(np.mean([r for r, _ in batch]))
        lengths.append(np.mean([n for _, n in batch]))
    return np.array(rewards), np.array(lengths), epsilons


def stages(epsilons: list[float]) -> list[tuple[float, slice]]:
    """(epsilon, iterations) of each stage of the schedule."""
    out: list[tuple[float, slice]] = []
    start = 0
    for i in range(1, len(epsilons) + 1):
        if i == len(epsilons) or epsilons[i] != epsilons[start]:
            out.append((epsilons[start], slice(start, i)))
            start = i
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--offset", type=float, default=0.0, help="added to every reward (see synthetic_accuracy)")
    parser.add_argument("--png", default="runs/claims/reward_shaping.png")
    parser.add_argument("overrides", nargs="*", help="search config overrides, e.g. agent.alpha=0.05")
    args = parser.parse_args()
    results = {}
    for shaping in (True, False):
        start = time.perf_counter()
        runs = [run(shaping, seed, args.overrides, args.offset) for seed in range(args.seeds)]
        results[shaping] = (np.array([r[0] for r in runs]), np.array([r[1] for r in runs]), runs[0][2])
        print(f"shaping={shaping}: {args.seeds} seeds in {time.perf_counter() - start:.0f} s")

    epsilons = results[True][2]
    print(f"\nmean reward / mean layers of sampled blocks per epsilon stage (mean over {args.seeds} seeds)")
    print(f"{'epsilon':>8} {'iters':>6} {'shaped':>16} {'unshaped':>16}")
    for eps, span in stages(epsilons):
        cells = [f"{results[s][0][:, span].mean():.3f} / {results[s][1][:, span].mean():4.1f}" for s in (True, False)]
        print(f"{eps:>8.1f} {span.stop - span.start:>6} {cells[0]:>16} {cells[1]:>16}")
    last = slice(-max(1, len(epsilons) // 10), None)
    for s in (True, False):
        finals = results[s][0][:, last].mean(1)
        print(f"{'shaped' if s else 'unshaped':>9}: last 10% of iterations mean reward {finals.mean():.3f} "
              f"± {finals.std():.3f} (over seeds), mean layers {results[s][1][:, last].mean():.1f}")

    fig, (ax, ax_len) = figure(1, 2, figsize=(11, 4))
    x = np.arange(1, len(epsilons) + 1)
    for s, colour in ((True, "#3182bd"), (False, "#e6550d")):
        for axis, values in ((ax, results[s][0]), (ax_len, results[s][1])):
            axis.plot(x, values.mean(0), color=colour, label="shaped" if s else "unshaped")
            axis.fill_between(x, values.min(0), values.max(0), color=colour, alpha=0.15)
    for n, (_, span) in enumerate(stages(epsilons)):
        for axis in (ax, ax_len):
            axis.axvspan(span.start + 0.5, span.stop + 0.5, color=("#f0f0f0", "#dcdcdc")[n % 2], zorder=0)
    ax.set(xlabel="iteration", ylabel="mean reward of the sampled blocks", title="synthetic reward, NSC space")
    ax_len.set(xlabel="iteration", ylabel="mean layers per sampled block", title="block length")
    ax.legend(loc="lower right")
    print(f"figure: {save_figure(fig, args.png)}")


if __name__ == "__main__":
    main()

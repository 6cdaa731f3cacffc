"""The paper's claim that early-stop accuracy ranks blocks imperfectly and that the FLOPs/density correction
(reward = acc - mu ln FLOPs - rho ln density) ranks them closer to their accuracy after a longer training.

Samples distinct random blocks of the NSC space (the random agent's exploration distribution) and trains each
twice on the search's dataset and template (digits, tiny by default): with the search's early-stop recipe, and
with the same recipe stretched (epochs and learning-rate steps times ``--stretch``). Prints Kendall's tau between
the longer training's validation accuracy and (a) the early-stop accuracy, (b) the corrected reward at the
configured mu, rho, (c) a small grid of mu, rho; writes a PNG of both rankings.

    python experiments/claim_early_stop_ranking.py                            # 12 blocks, 12 vs 48 epochs
    python experiments/claim_early_stop_ranking.py --blocks 30 --stretch 8 dataset=cifar10 template=cifar
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from hydra.utils import instantiate
from scipy.stats import kendalltau

from blockqnn.config import compose
from blockqnn.evaluate import evaluate_candidate
from blockqnn.report.plots import figure, save_figure
from blockqnn.reward import PaperReward

MUS, RHOS = (0.0, 0.005, 0.02, 0.05), (0.0, 0.02, 0.1)


def sample_blocks(n: int, seed: int, overrides: list[str]) -> list[str]:
    """``n`` distinct blocks (by canonical hash) from the exploration distribution of the configured space."""
    cfg = compose("search", ["agent=random", f"seed={seed}", *overrides])
    space = instantiate(cfg.space)
    agent = instantiate(cfg.agent, space=space, seed=seed)
    blocks: dict[str, str] = {}
    while len(blocks) < n:
        for t in agent.sample(1):
            arch = space.decode(t)
            blocks.setdefault(space.canonical_hash(arch), arch)
    return list(blocks.values())


def train_all(blocks: list[str], overrides: list[str], label: str) -> list:
    cfg = compose("search", ["logger=none", *overrides])
    results, start = [], time.perf_counter()
    for i, arch in enumerate(blocks, start=1):
        results.append(evaluate_candidate(arch, cfg))
        print(f"\r{label}: {i}/{len(blocks)} blocks, {time.perf_counter() - start:.0f} s", end="", flush=True)
    print()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stretch", type=int, default=4, help="the long training's epochs and lr steps, x this")
    parser.add_argument("--png", default="runs/claims/early_stop_ranking.png")
    parser.add_argument("overrides", nargs="*", help="search config overrides for both trainings, e.g. dataset=...")
    args = parser.parse_args()

    blocks = sample_blocks(args.blocks, args.seed, args.overrides)
    # The long training is the search's early-stop recipe stretched: epochs and learning-rate steps x stretch.
    recipe = compose("search", args.overrides).trainer
    early_epochs, long_epochs = recipe.max_epochs, recipe.max_epochs * args.stretch
    stretched = [f"trainer.max_epochs={long_epochs}"]
    if recipe.scheduler is not None and "step_size" in recipe.scheduler:
        stretched.append(f"trainer.scheduler.step_size={recipe.scheduler.step_size * args.stretch}")
    early = train_all(blocks, list(args.overrides), "early stop")
    long = train_all(blocks, [*args.overrides, *stretched], "long training")
    ok = [i for i, (e, g) in enumerate(zip(early, long)) if e.status == g.status == "ok"]
    print(f"{len(ok)} of {len(blocks)} blocks trained in both runs")
    target = np.array([long[i].accuracy for i in ok])
    acc = np.array([early[i].accuracy for i in ok])
    flops, density = np.array([early[i].flops for i in ok]), np.array([early[i].density for i in ok])
    configured = compose("search", args.overrides).reward
    reward = np.array([early[i].reward for i in ok])

    tau_acc = kendalltau(acc, target).statistic
    tau_reward = kendalltau(reward, target).statistic
    print(f"long-training accuracy: {target.min():.3f} .. {target.max():.3f} (mean {target.mean():.3f}); "
          f"early-stop accuracy: {acc.min():.3f} .. {acc.max():.3f}")
    print(f"Kendall tau with the {long_epochs}-epoch accuracy:")
    print(f"  early-stop accuracy ({early_epochs} epochs), no correction: {tau_acc:+.3f}")
    print(f"  corrected reward ({configured._target_.rsplit('.', 1)[-1]}, "
          f"mu={configured.get('mu')}, rho={configured.get('rho')}): {tau_reward:+.3f}")
    unit = float(configured.get("flops_unit", 1.0))
    print("  corrected reward over a grid (rows mu, columns rho):")
    print("        " + "".join(f"{rho:>9}" for rho in RHOS))
    for mu in MUS:
        taus = [kendalltau([PaperReward(mu, rho, unit)(a, f, d) for a, f, d in zip(acc, flops, density)],
                           target).statistic for rho in RHOS]
        print(f"  {mu:>6}" + "".join(f"{t:>+9.3f}" for t in taus))

    fig, axes = figure(1, 2, figsize=(10, 4.2), sharey=True)
    panels = ((axes[0], acc, "early-stop accuracy", tau_acc), (axes[1], reward, "corrected reward", tau_reward))
    for ax, x, name, tau in panels:
        ax.scatter(x, target, c=np.log(flops), cmap="viridis", s=28)
        ax.set(xlabel=f"{name} ({early_epochs} epochs)", title=f"Kendall tau {tau:+.3f}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"validation accuracy after {long_epochs} epochs")
    fig.suptitle(f"{len(ok)} random NSC blocks (colour: log FLOPs)", fontsize=10)
    print(f"figure: {save_figure(fig, args.png)}")


if __name__ == "__main__":
    main()

"""Q-learning against random search on a NAS-Bench-201 table: the paper's claim, checked in seconds.

Each agent (conf/agent/qlearning.yaml, conf/agent/random.yaml) searches the table space over S seeds with a
budget of M sampled architectures; the paper schedule is scaled so that its iterations of B cover M. Prints,
per checkpoint, mean and standard deviation of the best metric found, both per *sampled* and per *evaluated*
(distinct) architecture, and saves a plot of best-so-far against both.

    python experiments/agent_vs_random_table.py --synthetic                      # a generated 15,625-row table
    python experiments/agent_vs_random_table.py --table nb201.csv --metric-column valid_acc --seeds 20
    python experiments/agent_vs_random_table.py --synthetic --alphas 0.01 0.1 0.5  # Q-learning at several alphas
    python experiments/agent_vs_random_table.py --synthetic agent.replay_size=64    # any Hydra override
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig

from blockqnn.agent import QLearningAgent
from blockqnn.config import compose
from blockqnn.nasbench201 import NASBench201Space, TableError, write_synthetic_table

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


@dataclass
class Curves:
    """One agent variant over all seeds: best-so-far per sample and number of distinct archs so far."""

    label: str
    best: np.ndarray  # (seeds, budget)
    distinct: np.ndarray  # (seeds, budget)
    hit: np.ndarray  # (seeds,) first sample that found the table's best arch, or -1

    def best_at_distinct(self, d: int) -> np.ndarray:
        """Best metric once d distinct architectures were evaluated (NaN for seeds that never got there)."""
        out = np.full(len(self.best), np.nan)
        for s, (best, distinct) in enumerate(zip(self.best, self.distinct)):
            reached = np.flatnonzero(distinct >= d)
            if len(reached):
                out[s] = best[reached[0]]
        return out


def search(agent: QLearningAgent, space: NASBench201Space, budget: int, optimum: str) -> tuple[np.ndarray, ...]:
    """The search loop in miniature, with the table as evaluator: repeats are looked up, not re-evaluated."""
    metrics, distinct, seen, hit = [], [], set(), -1
    while len(metrics) < budget and not agent.done:
        trajectories = agent.sample(min(agent.batch_size, budget - len(metrics)))
        archs = [space.decode(t) for t in trajectories]
        rewards = [space.lookup(arch) for arch in archs]
        for arch in archs:
            if arch == optimum and hit < 0:
                hit = len(distinct)
            seen.add(arch)
            distinct.append(len(seen))
        metrics.extend(rewards)
        agent.update(trajectories, rewards)
    return np.maximum.accumulate(metrics), np.array(distinct), hit


def compose_agent(name: str, overrides: list[str]) -> DictConfig:
    return compose("search", [f"agent={name}", *overrides]).agent


def fit_scale(cfg: DictConfig, space: NASBench201Space, budget: int) -> float:
    """The smallest schedule scale whose iterations of B sample at least ``budget`` architectures."""
    low, high = 1e-4, max(1.0, budget / cfg.batch_size)
    for _ in range(50):
        mid = (low + high) / 2
        cfg.schedule_scale = mid
        enough = instantiate(cfg, space=space).total_samples >= budget
        low, high = (low, mid) if enough else (mid, high)
    return high


def run_variant(label: str, cfg: DictConfig, space: NASBench201Space, seeds: int, budget: int) -> Curves:
    optimum = space.best()[0]
    runs = [search(instantiate(cfg, space=space, seed=seed), space, budget, optimum) for seed in range(seeds)]
    short = [len(best) for best, _, _ in runs if len(best) < budget]
    if short:
        raise SystemExit(f"error: the schedule ended after {min(short)} samples, below the budget {budget}")
    return Curves(label, *(np.array([r[i] for r in runs]) for i in range(3)))


def report(curves: list[Curves], checkpoints: list[int], best_metric: float) -> None:
    print(f"table optimum {best_metric:.4f}")
    print("best metric after N *sampled* architectures (mean ± std over seeds; distinct evaluated in brackets)")
    print("N".rjust(6) + "".join(f"{c.label:>28}" for c in curves))
    for n in checkpoints:
        cells = [f"{c.best[:, n - 1].mean():.4f} ± {c.best[:, n - 1].std():.4f} [{c.distinct[:, n - 1].mean():5.0f}]"
                 for c in curves]
        print(f"{n:>6}" + "".join(f"{cell:>28}" for cell in cells))
    common = int(min(c.distinct[:, -1].min() for c in curves))  # every run of every agent evaluated this many
    print("best metric after N *evaluated* (distinct) architectures (seeds that got there)")
    for n in sorted({n for n in checkpoints if n < common} | {common}):
        cells = []
        for c in curves:
            v = c.best_at_distinct(n)
            ok = ~np.isnan(v)
            cells.append(f"{v[ok].mean():.4f} ± {v[ok].std():.4f} ({ok.sum()}/{len(v)})" if ok.any() else "n/a")
        print(f"{n:>6}" + "".join(f"{cell:>28}" for cell in cells))
    print("found the optimum: " + ", ".join(
        f"{c.label} {np.sum(c.hit >= 0)}/{len(c.hit)} seeds"
        + (f" (mean first hit at sample {c.hit[c.hit >= 0].mean() + 1:.0f})" if np.any(c.hit >= 0) else "")
        for c in curves))


def plot(curves: list[Curves], best_metric: float, exploring: int, title: str, path: Path) -> None:
    """Best-so-far against sampled and against evaluated architectures; ``exploring``: samples at epsilon 1."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    axes[0].axvline(exploring, color="black", linewidth=0.8, linestyle="--", label="Q-learning's epsilon drops below 1")
    for c in curves:
        mean, std = c.best.mean(0), c.best.std(0)
        x = np.arange(1, len(mean) + 1)
        axes[0].plot(x, mean, label=c.label)
        axes[0].fill_between(x, mean - std, mean + std, alpha=0.2)
        d = np.arange(1, int(c.distinct[:, -1].min()) + 1)
        at = np.array([c.best_at_distinct(k) for k in d])
        axes[1].plot(d, at.mean(1), label=c.label)
        axes[1].fill_between(d, at.mean(1) - at.std(1), at.mean(1) + at.std(1), alpha=0.2)
    for ax, xlabel in zip(axes, ("sampled architectures", "evaluated (distinct) architectures")):
        ax.axhline(best_metric, color="grey", linestyle=":", label="table optimum")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("best metric so far (mean ± std over seeds)")
    axes[0].legend(loc="lower right")
    low = min(np.percentile(c.best[:, min(19, c.best.shape[1] - 1)], 10) for c in curves)
    axes[0].set_ylim(low - 0.01, best_metric + 0.01)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both agents, e.g. agent.batch_size=32")
    parser.add_argument("--table", type=Path, help="CSV table, one row per architecture")
    parser.add_argument("--synthetic", action="store_true", help="generate a structured 15,625-row table instead")
    parser.add_argument("--arch-column", default="arch")
    parser.add_argument("--metric-column", default="accuracy")
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..S-1 per agent")
    parser.add_argument("--budget", type=int, default=500, help="sampled architectures per search (M)")
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[50, 100, 200, 500])
    parser.add_argument("--batch-size", type=int, default=16, help="B; small budgets need small B")
    parser.add_argument("--alphas", type=float, nargs="+", help="Q-learning variants (default: the config's alpha)")
    parser.add_argument("--output", type=Path, default=Path("runs/agent_vs_random_table.png"))
    args = parser.parse_args()
    if args.seeds < 1 or args.budget < 1:
        parser.error("--seeds and --budget must be at least 1")
    checkpoints = sorted({n for n in args.checkpoints if n <= args.budget} | {args.budget})
    if not args.synthetic and args.table is None:
        parser.error("give --table PATH or --synthetic")
    try:
        space = load_space(args)
        variants = make_variants(args, space)
    except (TableError, ValueError, HydraException) as e:
        sys.exit(f"error: {str(e.__cause__ or e).splitlines()[0]}")  # Hydra wraps the cause

    qcfg = variants[-1][1]
    batch, schedule = qcfg.batch_size, instantiate(qcfg, space=space).schedule
    name = "synthetic table" if args.synthetic else args.table.name
    print(f"{name}: {len(space.metrics)} architectures; {args.seeds} seeds, budget {args.budget}, B={batch}, "
          f"schedule {qcfg.epsilon_schedule} x{qcfg.schedule_scale:.3g} ({len(schedule)} iterations, "
          f"{schedule.count(1.0) * batch} samples at epsilon 1)")
    if len(schedule) * batch > args.budget + batch:
        print(f"warning: the shortest schedule is {len(schedule)} iterations of {batch}: the budget ends it early "
              f"at epsilon {schedule[args.budget // batch]}; use a smaller --batch-size")
    curves = [run_variant(label, cfg, space, args.seeds, args.budget) for label, cfg in variants]
    best_metric = space.best()[1]
    report(curves, checkpoints, best_metric)
    title = f"{name}: {args.seeds} seeds, budget {args.budget}, B={batch}"
    plot(curves, best_metric, schedule.count(1.0) * batch, title, args.output)
    print(f"plot: {args.output}")


def load_space(args: argparse.Namespace) -> NASBench201Space:
    if not args.synthetic:
        return NASBench201Space(args.table, args.arch_column, args.metric_column)
    with tempfile.TemporaryDirectory() as tmp:
        return NASBench201Space(write_synthetic_table(Path(tmp) / "synthetic.csv"))


def make_variants(args: argparse.Namespace, space: NASBench201Space) -> list[tuple[str, DictConfig]]:
    """Random search and one Q-learning config per alpha, each schedule scaled to the budget."""
    overrides = [f"agent.batch_size={args.batch_size}", *args.overrides]
    variants = [("random", compose_agent("random", overrides))]
    for alpha in args.alphas or [None]:
        cfg = compose_agent("qlearning", overrides + ([f"agent.alpha={alpha}"] if alpha is not None else []))
        variants.append((f"qlearning alpha={cfg.alpha:g}", cfg))
    for _, cfg in variants:
        cfg.schedule_scale = fit_scale(cfg, space, args.budget)
    return variants

if __name__ == "__main__":
    main()

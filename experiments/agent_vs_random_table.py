"""Any agents of conf/agent/ (Q-learning, random search, regularized evolution, ...) and labelled variants of them
on a NAS-Bench-201 table: which agent finds good cells in a few hundred queries.

Each agent is composed exactly as ``python -m blockqnn.search experiment=nasbench201 agent=NAME agent.budget=M``
composes it (blockqnn.config, conf/experiment/nasbench201.yaml, conf/preset/agent/), a variant ``NAME+LABEL`` as
agent NAME with the overrides given as ``NAME+LABEL:key=value``, and searches the table for M queries per seed,
once per budget M: a budget shapes Q-learning's schedule, so the figure at M comes from a search of budget M. The
loop is the search loop's in miniature (``blockqnn.search``: repeats are looked up and still counted, the agent
learns from every query; tests/test_nasbench201.py checks it gives the loop's history).
Prints, per metric column and budget, the mean ± std over seeds of the best metric after M queries (every query
counted, repeats included) with the distinct cells in brackets, the best after the first N *distinct* cells,
one-sided Mann-Whitney p-values between the agents at each M, the machine time of a search (the agent's own work:
fitting and querying a reward model included, since a table lookup costs nothing), and saves a plot of
best-so-far against queries.

    python experiments/agent_vs_random_table.py --synthetic                      # a generated 15,625-row table
    python experiments/agent_vs_random_table.py --table ../shared/data/nasbench201/nb201_cifar100_imagenet16.csv \\
        --metric-columns cifar100_test_acc imagenet16_test_acc --seeds 30 --budgets 100 200 500
    python experiments/agent_vs_random_table.py --synthetic qlearning:agent.alpha=0.5     # an override for one agent
    python experiments/agent_vs_random_table.py --synthetic --agents qlearning qlearning+model evolution \
        qlearning+model:agent.model.proposals=30 qlearning+model:agent.model.kappa=0.5     # a labelled variant
    python experiments/agent_vs_random_table.py --runs runs/multirun/DATE --metric-columns cifar100_test_acc
                                        # summarise a `python -m blockqnn.search -m ...` sweep the same way
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from scipy.stats import mannwhitneyu

from blockqnn.config import compose
from blockqnn.errors import ConfigError, TableError
from blockqnn.report.analysis import History, load_history
from blockqnn.report.plots import figure, save_figure
from blockqnn.spaces.nasbench201 import NASBench201Space, write_synthetic_table

ROOT = Path(__file__).resolve().parents[1]
# Every agent of conf/agent/, the long-standing three first (in the order the tables have always shown them).
AGENTS = tuple(sorted((p.stem for p in (ROOT / "conf" / "agent").glob("*.yaml")),
                      key=lambda a: ((("qlearning", "random", "evolution") + (a,)).index(a), a)))
LABELS = {"qlearning": "q-learning"}
COLOURS = ("#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363", "#e7298a", "#a6761d", "#1b9e77")


def label(agent: str) -> str:
    """``qlearning+model`` -> ``q-learning+model``."""
    base, plus, variant = agent.partition("+")
    return LABELS.get(base, base) + plus + variant


def agent_name(text: str) -> str:
    """An agent of conf/agent/, or a labelled variant ``NAME+LABEL`` of one (its overrides ``NAME+LABEL:k=v``)."""
    if text.partition(":")[0].partition("+")[0] not in AGENTS:
        raise argparse.ArgumentTypeError(f"{text}: expected one of {', '.join(AGENTS)}, or NAME+LABEL")
    return text


@dataclass
class Runs:
    """One agent at one budget over all seeds: the metric of every query in order, and distinct cells so far."""

    agent: str
    budget: int
    metrics: np.ndarray  # (seeds, queries)
    distinct: np.ndarray  # (seeds, queries)
    seconds: float = float("nan")  # machine time of one search, mean over seeds

    @property
    def best(self) -> np.ndarray:
        return np.maximum.accumulate(self.metrics, axis=1)

    def best_at_distinct(self, d: int) -> np.ndarray:
        """Best metric once d distinct cells were queried (NaN for seeds that never got there)."""
        out = np.full(len(self.metrics), np.nan)
        for s, (best, distinct) in enumerate(zip(self.best, self.distinct)):
            reached = np.flatnonzero(distinct >= d)
            if len(reached):
                out[s] = best[reached[0]]
        return out


def search_table(agent, space: NASBench201Space) -> tuple[list[float], list[int]]:
    """The search loop in miniature with the table as evaluator: every query's metric, distinct cells so far."""
    metrics, distinct, seen = [], [], set()
    while not agent.done:
        trajectories = agent.sample()
        archs = [space.decode(t) for t in trajectories]
        rewards = [space.lookup(arch) for arch in archs]
        for arch in archs:
            seen.add(space.canonical_hash(arch))
            distinct.append(len(seen))
        metrics.extend(rewards)
        agent.update(trajectories, rewards)
    return metrics, distinct


def agent_config(name: str, budget: int, table_overrides: list[str], overrides: Sequence[str]):
    """The agent section ``python -m blockqnn.search experiment=nasbench201 agent=NAME agent.budget=M ...``
    would run with; ``NAME:key=value`` overrides apply to that agent (or labelled variant ``NAME+LABEL``) only."""
    own = [o.split(":", 1)[1] for o in overrides if o.startswith(f"{name}:")]
    shared = [o for o in overrides if ":" not in o.split("=")[0]]
    return compose("search", ["experiment=nasbench201", *table_overrides, f"agent={name.partition('+')[0]}",
                              f"agent.budget={budget}", *shared, *own]).agent


def run_agent(name: str, budget: int, space: NASBench201Space, seeds: int, table_overrides: list[str],
              overrides: Sequence[str]) -> Runs:
    cfg = agent_config(name, budget, table_overrides, overrides)
    start = time.process_time()
    runs = [search_table(instantiate(cfg, space=space, seed=seed), space) for seed in range(seeds)]
    seconds = (time.process_time() - start) / seeds
    return Runs(name, budget, *(np.array([r[i] for r in runs]) for i in range(2)), seconds)


def from_histories(histories: Sequence[History], metric: Callable[[str], float]) -> list[Runs]:
    """A multirun's searches as Runs, grouped by agent and budget (every stored candidate, cached ones too), each
    candidate scored by ``metric(arch)``."""
    groups: dict[tuple[str, int], list[History]] = {}
    for h in histories:
        groups.setdefault((h.agent.replace("q-learning", "qlearning"), len(h.rows)), []).append(h)
    out = []
    for (agent, budget), group in sorted(groups.items()):
        metrics = np.array([[metric(r["arch"]) for r in h.rows] for h in group])
        distinct = np.array([np.cumsum([not r["cached"] for r in h.rows]) for h in group])
        out.append(Runs(agent, budget, metrics, distinct))
    return out


# ---- printing ---------------------------------------------------------------------------------------------------
def cell(values: np.ndarray, distinct: np.ndarray | None = None) -> str:
    text = f"{100 * np.mean(values):.2f} ± {100 * np.std(values):.2f}"
    return text + (f" [{np.mean(distinct):.0f}]" if distinct is not None else "")


def table_rows(runs: list[Runs], budgets: list[int]) -> list[str]:
    """Markdown rows: best after M queries (distinct cells) per agent, each from the search of budget M; and
    Q-learning's search of the largest budget read at every M (its schedule not fitted to M)."""
    by = {(r.agent, r.budget): r for r in runs}
    agents = list(dict.fromkeys(r.agent for r in runs))
    rows = [f"| {label(a)} | " + " | ".join(
        cell(by[a, m].best[:, -1], by[a, m].distinct[:, -1]) if (a, m) in by else "-" for m in budgets) + " |"
        for a in agents]
    longest = by.get(("qlearning", max(budgets)))
    if longest is not None and len(budgets) > 1:
        rows.append(f"| q-learning, budget {max(budgets)} read at M | " + " | ".join(
            cell(longest.best[:, m - 1], longest.distinct[:, m - 1]) for m in budgets) + " |")
    return rows


def distinct_rows(runs: list[Runs], budgets: list[int]) -> list[str]:
    """Markdown rows: best after the first N distinct cells, N = the fewest any search of budget M reached."""
    rows = []
    for m in budgets:
        at = [r for r in runs if r.budget == m]
        n = int(min(r.distinct[:, -1].min() for r in at))
        rows.append(f"| {m} ({n} distinct) | " + " | ".join(
            cell(r.best_at_distinct(n)) for r in at) + " |")
    return rows


def p_value_lines(runs: list[Runs], budgets: list[int]) -> list[str]:
    """For each M, the first agent against each other one: the one with the higher mean best above the other by a
    one-sided Mann-Whitney test over seeds (the best after M queries of the searches of budget M)."""
    lines = []
    for m in budgets:
        first, *others = [r for r in runs if r.budget == m]
        pairs = []
        for other in others:
            high, low = (first, other) if first.best[:, -1].mean() >= other.best[:, -1].mean() else (other, first)
            p = mannwhitneyu(high.best[:, -1], low.best[:, -1], alternative="greater").pvalue
            pairs.append(f"{label(high.agent)} > {label(low.agent)} p = {p:.3g}")
        if pairs:
            lines.append(f"- M = {m}: " + "; ".join(pairs))
    return lines


def report(column: str, runs: list[Runs], budgets: list[int], optimum: float) -> None:
    print(f"\n### {column} (table optimum {100 * optimum:.2f})\n")
    print("Best after M queries, every query counted (mean ± std over seeds; distinct cells queried in brackets):\n")
    print("| agent | " + " | ".join(f"M = {m}" for m in budgets) + " |")
    print("|---" * (len(budgets) + 1) + "|")
    print("\n".join(table_rows(runs, budgets)))
    print("\nBest after the first N distinct cells, in the searches of budget M:\n")
    print("| M | " + " | ".join(label(a) for a in dict.fromkeys(r.agent for r in runs)) + " |")
    print("|---" * (1 + len({r.agent for r in runs})) + "|")
    print("\n".join(distinct_rows(runs, budgets)))
    p_values = p_value_lines(runs, budgets)
    if p_values:
        print(f"\nOne-sided Mann-Whitney p-values over seeds, best after M queries, {label(runs[0].agent)} against the "
              "others:\n" + "\n".join(p_values))
    timed = [r for r in runs if np.isfinite(r.seconds)]
    if timed:
        print("\nCPU seconds per search (the agent's own work):\n")
        print("| agent | " + " | ".join(f"M = {m}" for m in budgets) + " |")
        print("|---" * (len(budgets) + 1) + "|")
        by = {(r.agent, r.budget): r.seconds for r in timed}
        for a in dict.fromkeys(r.agent for r in timed):
            print(f"| {label(a)} | " + " | ".join(f"{by[a, m]:.2f}" if (a, m) in by else "-" for m in budgets) + " |")


def plot(runs_by_column: dict[str, list[Runs]], budgets: list[int], path: Path) -> Path:
    """Best-so-far against queries for the searches of the largest budget, one panel per metric column; Q-learning's
    searches of smaller budgets as points at their end."""
    agents = list(dict.fromkeys(r.agent for runs in runs_by_column.values() for r in runs))
    colours = dict(zip(agents, itertools.cycle(COLOURS)))
    fig, axes = figure(1, len(runs_by_column), figsize=(6.5 * len(runs_by_column), 4.5), squeeze=False)
    for ax, (column, runs) in zip(axes[0], runs_by_column.items()):
        for r in runs:
            mean, std = 100 * r.best.mean(0), 100 * r.best.std(0)
            if r.budget == max(budgets):
                x = np.arange(1, len(mean) + 1)
                ax.plot(x, mean, color=colours[r.agent], label=f"{label(r.agent)} (budget {r.budget})")
                ax.fill_between(x, mean - std, mean + std, color=colours[r.agent], alpha=0.15)
            elif r.agent == "qlearning":
                ax.errorbar(r.budget, mean[-1], yerr=std[-1], fmt="o", color=colours[r.agent], capsize=3,
                            label=f"q-learning, budget {r.budget}")
        ax.set_xscale("log")
        ax.set_xlabel("queries (repeats counted)")
        ax.set_ylabel(f"best {column} so far (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        low = min(np.percentile(100 * r.best[:, min(19, r.best.shape[1] - 1)], 10) for r in runs)
        ax.set_ylim(low - 1, 100 * max(r.best.max() for r in runs) + 0.5)
    return save_figure(fig, path)


# ---- entry point ------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every agent (agent.batch_size=4), or for "
                                                     "one (qlearning:agent.alpha=0.5)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--table", type=Path, help="CSV table, one row per architecture")
    source.add_argument("--synthetic", action="store_true", help="a generated, structured 15,625-row table")
    source.add_argument("--runs", type=Path, help="a multirun folder of table searches to summarise instead")
    parser.add_argument("--arch-column", default="arch")
    parser.add_argument("--metric-columns", nargs="+", default=["accuracy"])
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), type=agent_name,
                        help=f"agents of conf/agent/ ({', '.join(AGENTS)}) or labelled variants NAME+LABEL")
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..S-1 per agent and budget")
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 200, 500], help="queries per search (M)")
    parser.add_argument("--output", type=Path, default=Path("runs/agent_vs_random_table.png"))
    args = parser.parse_args()
    args.overrides += [a for a in args.agents if ":" in a]  # NAME+LABEL:key=value given after --agents
    args.agents = [a for a in args.agents if ":" not in a]
    if args.seeds < 1 or min(args.budgets) < 1:
        parser.error("--seeds and --budgets must be at least 1")
    budgets = sorted(set(args.budgets))
    try:
        runs_by_column, optimum = summarise_runs(args) if args.runs else search_all(args, budgets)
    except (TableError, ValueError, ConfigError) as e:
        sys.exit(f"error: {str(e).splitlines()[0]}")
    if args.runs:
        budgets = sorted({r.budget for runs in runs_by_column.values() for r in runs})
    for column, runs in runs_by_column.items():
        report(column, runs, budgets, optimum[column])
    print(f"\nplot: {plot(runs_by_column, budgets, args.output)}")


def search_all(args: argparse.Namespace, budgets: list[int]) -> tuple[dict[str, list[Runs]], dict[str, float]]:
    """Every agent at every budget and seed, per metric column (the table is read once per column); and each
    column's optimum."""
    with tempfile.TemporaryDirectory() as tmp:
        table = write_synthetic_table(Path(tmp) / "synthetic.csv") if args.synthetic else args.table
        columns = ["accuracy"] if args.synthetic else args.metric_columns
        out, optimum = {}, {}
        print(f"{table.name}: {args.seeds} seeds, budgets {budgets}, agents {args.agents}, overrides {args.overrides}")
        for column in columns:
            table_overrides = [f"space.table={table}", f"space.arch_column={args.arch_column}",
                               f"space.metric_column={column}"]
            space = NASBench201Space(table.absolute(), args.arch_column, column)
            optimum[column] = space.best()[1]
            out[column] = [run_agent(agent, m, space, args.seeds, table_overrides, args.overrides)
                           for agent in args.agents for m in budgets]
    return out, optimum


def summarise_runs(args: argparse.Namespace) -> tuple[dict[str, list[Runs]], dict[str, float]]:
    """A multirun's histories, by agent and budget, each metric column looked up in the table the runs name (the
    column a run maximised, or another); and each column's optimum."""
    histories = [load_history(p.parent, 1) for p in sorted(args.runs.glob("*/history.sqlite"))]
    if not histories:
        raise ValueError(f"{args.runs} holds no search histories")
    out, optimum = {}, {}
    stored = histories[0].config.space
    for column in args.metric_columns:
        space = NASBench201Space(stored.table, stored.arch_column, column)
        out[column], optimum[column] = from_histories(histories, space.lookup), space.best()[1]
    return out, optimum


if __name__ == "__main__":
    main()

"""``python -m blockqnn.report RUN_DIR``: what a search found, as pictures and one markdown page in the run folder.

For one search folder: the search curve (reward per candidate, running mean, epsilon stages shaded), the best
reward against the number of trained blocks, a drawing of each top-k block and ``summary.md`` (top-k table, run
settings, and the paper's analysis: how often each layer type, multi-branch structure and shortcuts occur in the
top-k against all sampled blocks). For a multirun folder (Hydra sweep): each run's report, and the agents'
best-so-far curves with their spread (Q-learning, random search and regularized evolution at equal numbers of
trained blocks); a run that cannot be read is left out with a warning.
The pictures also go to the run's W&B run when it was tracked.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from blockqnn.cli import UserError, one_line_errors  # noqa: E402
from blockqnn.drawing import NAMES, depths, draw_block, wrap_code  # noqa: E402
from blockqnn.nsc import Block, LayerType, NSCError  # noqa: E402
from blockqnn.store import Store, StoreError, is_run  # noqa: E402
from blockqnn.tracking import wandb_mode  # noqa: E402


# ---- reading a run ---------------------------------------------------------------------------------------------
@dataclass
class History:
    """One search run as the report sees it: its folder, config, candidates in sampling order, top blocks."""

    run_dir: Path
    config: DictConfig
    rows: list[dict[str, Any]]
    best: list[dict[str, Any]]
    wandb_run_id: str | None

    @property
    def agent(self) -> str:
        """``evolution`` (regularized evolution), ``random`` (Q-learning's sampler with epsilon fixed at 1), or
        ``q-learning``."""
        if str(OmegaConf.select(self.config, "agent._target_")).endswith(".RegularizedEvolution"):
            return "evolution"
        override = OmegaConf.select(self.config, "agent.epsilon_override")
        return "random" if override is not None and float(override) >= 1.0 else "q-learning"

    def trained(self) -> list[dict[str, Any]]:
        """Candidates that cost a training (cached copies of earlier blocks excluded; failures included)."""
        return [r for r in self.rows if not r["cached"]]


def load_history(run_dir: str | Path, top_k: int) -> History:
    with Store.open(run_dir, readonly=True) as store:
        return History(Path(run_dir), store.config(), store.candidates(), store.best(top_k), store.get("wandb_run_id"))


def parse_block(arch: str) -> Block | None:
    """The NSC block of a stored architecture, or None for other spaces (NAS-Bench-201 cells)."""
    try:
        return Block.parse(arch, max_index=None)
    except NSCError:
        return None


def best_so_far(history: History) -> np.ndarray:
    """Best reward after each trained candidate (a failed one repeats the best before it)."""
    rewards = [r["reward"] if r["status"] == "ok" and r["reward"] is not None else -math.inf for r in history.trained()]
    return np.maximum.accumulate(np.asarray(rewards, dtype=float)) if rewards else np.zeros(0)


# ---- plots -----------------------------------------------------------------------------------------------------
def _epsilon_stages(rows: Sequence[dict[str, Any]]) -> list[tuple[int, int, float]]:
    """Consecutive runs of equal epsilon as (first, last, epsilon), candidates numbered from 1."""
    stages: list[tuple[int, int, float]] = []
    for i, row in enumerate(rows, start=1):
        eps = row["epsilon"]
        if stages and stages[-1][2] == eps:
            stages[-1] = (stages[-1][0], i, eps)
        else:
            stages.append((i, i, eps))
    return stages


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` values (fewer at the start), ignoring NaN."""
    valid = ~np.isnan(values)
    sums = np.cumsum(np.where(valid, values, 0.0))
    counts = np.cumsum(valid)
    lo = np.arange(len(values)) - window
    prev_sums = np.where(lo >= 0, sums[np.clip(lo, 0, None)], 0.0)
    prev_counts = np.where(lo >= 0, counts[np.clip(lo, 0, None)], 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums - prev_sums) / (counts - prev_counts)


def plot_rewards(history: History, path: Path) -> Path:
    """The paper's search curve: every candidate's reward, the running mean over one iteration's worth of
    candidates, and the epsilon stages shaded."""
    rows = history.rows
    x = np.arange(1, len(rows) + 1)
    reward = np.array([r["reward"] if r["status"] == "ok" and r["reward"] is not None else np.nan for r in rows])
    cached = np.array([bool(r["cached"]) for r in rows])
    failed = np.array([r["status"] != "ok" for r in rows])
    window = max(Counter(r["iteration"] for r in rows).values(), default=1)
    fig, ax = plt.subplots(figsize=(9, 4.2))
    shades = ("#f0f0f0", "#dcdcdc")
    for n, (first, last, eps) in enumerate(_epsilon_stages(rows)):
        ax.axvspan(first - 0.5, last + 0.5, color=shades[n % 2], zorder=0, linewidth=0)
        ax.text((first + last) / 2, 1.01, f"ε={eps:g}" if eps is not None else "", transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=7)
    ax.scatter(x[~cached], reward[~cached], s=9, color="#3182bd", alpha=0.6, label="trained", zorder=2)
    if cached.any():
        ax.scatter(x[cached], reward[cached], s=9, facecolors="none", edgecolors="#999999", linewidths=0.7,
                   label="cached (reward reused)", zorder=2)
    ax.plot(x, running_mean(reward, window), color="#e6550d", linewidth=2, label=f"running mean ({window})", zorder=3)
    if failed.any():
        floor = np.nanmin(reward) if np.isfinite(reward).any() else 0.0
        ax.scatter(x[failed], np.full(failed.sum(), floor), marker="x", color="#d62728", s=14, label="failed", zorder=3)
    ax.set_xlabel("candidate (in sampling order)")
    ax.set_ylabel("reward")
    ax.set_xlim(0.5, max(len(rows), 1) + 0.5)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{history.run_dir.name}: reward per candidate ({history.agent})", fontsize=10, pad=14)
    return save_figure(fig, path)


def plot_best_so_far(history: History, path: Path) -> Path:
    """Best reward against trained candidates: what a budget of n trainings buys."""
    best = best_so_far(history)
    cached = len(history.rows) - len(history.trained())
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.step(np.arange(1, len(best) + 1), np.where(np.isfinite(best), best, np.nan), where="post", color="#3182bd")
    ax.set_xlabel(f"trained candidates ({cached} cached repeats not counted)")
    ax.set_ylabel("best reward so far")
    ax.set_title(f"{history.run_dir.name}: best so far ({history.agent})", fontsize=10)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_agents(histories: Sequence[History], path: Path) -> Path:
    """Best-so-far curves of every agent across runs (seeds): mean line, min-max band, each run thin; the y-axis
    starts where the lowest mean stands a tenth of the way in (the first few candidates would flatten the rest)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    lows = []
    colours = {"q-learning": "#3182bd", "random": "#e6550d", "evolution": "#31a354"}
    for agent, runs in sorted(by_agent(histories).items()):
        curves = [best_so_far(h) for h in runs]
        n = min(len(c) for c in curves)
        if n == 0:
            continue
        stack = np.array([c[:n] for c in curves])
        stack[~np.isfinite(stack)] = np.nan
        x = np.arange(1, n + 1)
        colour = colours.get(agent)
        for c in stack:
            ax.plot(x, c, color=colour, alpha=0.25, linewidth=0.8)
        mean = np.nanmean(stack, 0)
        lows.append(mean[n // 10])
        ax.plot(x, mean, color=colour, linewidth=2, label=f"{agent} (mean of {len(runs)} runs)")
        ax.fill_between(x, np.nanmin(stack, 0), np.nanmax(stack, 0), color=colour, alpha=0.15)
    if lows and np.isfinite(min(lows)):
        ax.set_ylim(bottom=min(lows))
    ax.set_xlabel("trained candidates")
    ax.set_ylabel("best reward so far")
    ax.set_title("agents compared at equal numbers of trained blocks (band: min-max over runs)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def by_agent(histories: Sequence[History]) -> dict[str, list[History]]:
    groups: dict[str, list[History]] = {}
    for h in histories:
        groups.setdefault(h.agent, []).append(h)
    return groups


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Lay out, write (creating the folder) and close a figure; the PNG style of every report and experiment."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---- what good blocks have in common ---------------------------------------------------------------------------
def block_features(block: Block) -> dict[str, float]:
    """Per block: layer counts by type, multi-branch (a node feeding two or more others), shortcut (an edge
    that skips a layer of a longer path, as in a residual block), length and density."""
    depth = depths(block)
    succs: dict[int, set[int]] = {}
    for src, dst in block.edges():
        succs.setdefault(src, set()).add(dst)
    counts = Counter(LayerType(layer.type) for layer in block.body)
    return {
        **{f"n_{NAMES[t]}": counts[t] for t in NAMES},
        "multi_branch": float(any(len(s) > 1 for s in succs.values())),
        "shortcut": float(any(depth[dst] - depth[src] > 1 for src, dst in block.edges())),
        "layers": len(block.body),
        "density": block.density(),
    }


def feature_table(top: Sequence[Block], population: Sequence[Block]) -> list[str]:
    """Markdown rows: share of blocks with each layer type / structure, and mean counts, top-k vs all."""

    def stats(blocks: Sequence[Block]) -> dict[str, tuple[float, float]]:
        feats = [block_features(b) for b in blocks]
        if not feats:
            return {}
        return {k: (float(np.mean([f[k] > 0 for f in feats])), float(np.mean([f[k] for f in feats]))) for k in feats[0]}

    t, p = stats(top), stats(population)
    lines = [f"| | top-{len(top)} | all {len(population)} sampled |", "|---|---|---|"]
    for name in NAMES.values():
        key = f"n_{name}"
        lines.append(f"| blocks with {name} (mean count) | {_share(t, key)} | {_share(p, key)} |")
    lines.append(f"| multi-branch blocks | {_pct(t, 'multi_branch')} | {_pct(p, 'multi_branch')} |")
    lines.append(f"| blocks with a shortcut | {_pct(t, 'shortcut')} | {_pct(p, 'shortcut')} |")
    lines.append(f"| mean layers | {_mean(t, 'layers')} | {_mean(p, 'layers')} |")
    lines.append(f"| mean density | {_mean(t, 'density', 2)} | {_mean(p, 'density', 2)} |")
    return lines


def _share(stats: dict[str, tuple[float, float]], key: str) -> str:
    return f"{stats[key][0]:.0%} ({stats[key][1]:.2f})" if stats else "-"


def _pct(stats: dict[str, tuple[float, float]], key: str) -> str:
    return f"{stats[key][0]:.0%}" if stats else "-"


def _mean(stats: dict[str, tuple[float, float]], key: str, digits: int = 1) -> str:
    return f"{stats[key][1]:.{digits}f}" if stats else "-"


# ---- the summary -----------------------------------------------------------------------------------------------
def human(value: float | None) -> str:
    """12.3M, 4.56G: FLOPs and parameter counts at a glance."""
    if value is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def settings_lines(history: History) -> list[str]:
    """The run's settings that decide what it found, then the counts of what it did."""
    cfg, rows = history.config, history.rows
    looked_up = OmegaConf.select(cfg, "space.table") is not None  # a table space: nothing was trained
    training = {} if looked_up else {
        "dataset": "dataset.name", "template": "template", "training epochs": "trainer.max_epochs"}
    pick = {
        **training, "space": "space", "agent (epsilon schedule)": "agent.epsilon_schedule", "alpha": "agent.alpha",
        "population": "agent.population_size", "tournament": "agent.tournament_size",
        "batch per iteration": "agent.batch_size",
        "budget": "agent.budget", "reward": "reward._target_" if looked_up else "reward",
        "seed": "seed",
    }
    lines = [f"- agent: {history.agent}"]
    for label, key in pick.items():
        value = OmegaConf.select(cfg, key)
        if isinstance(value, DictConfig):
            value = ", ".join(f"{k}={v}" for k, v in value.items() if not str(k).startswith("_")
                              and not isinstance(v, DictConfig))
        if value is not None:
            lines.append(f"- {label}: {value}")
    statuses = Counter("cached" if r["cached"] else r["status"] for r in rows)
    iterations = len({r["iteration"] for r in rows})
    wall = sum(r["wall_time"] or 0.0 for r in history.trained())
    lines.append(f"- candidates: {len(rows)} sampled over {iterations} iterations: "
                 + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
    lines.append(f"- training time: {wall / 3600:.2f} h summed over trained candidates")
    return lines


def write_summary(history: History, images: dict[str, Path], drawings: list[Path]) -> Path:
    top_blocks = [parse_block(r["arch"]) for r in history.best]
    seen: dict[str, Block | None] = {}
    for r in history.rows:
        seen.setdefault(r["hash"] or r["arch"], parse_block(r["arch"]))
    population = [b for b in seen.values() if b is not None]
    lines = [f"# Search report: {history.run_dir.name}", "", "## Run settings", *settings_lines(history), ""]
    lines += [f"## Top {len(history.best)} blocks", "",
              "| rank | NSC | reward | accuracy | FLOPs | params | density |", "|---|---|---|---|---|---|---|"]
    for rank, r in enumerate(history.best, start=1):
        lines.append(f"| {rank} | `{r['arch']}` | {_num(r['reward'])} | {_num(r['accuracy'])} | {human(r['flops'])} "
                     f"| {human(r['params'])} | {_num(r['density'], 3)} |")
    lines += ["", "## Search curves", ""] + [f"![{name}]({p.name})" for name, p in images.items()]
    if drawings:
        lines += ["", "## Top blocks drawn", ""] + [f"![{p.stem}]({p.name})" for p in drawings]
    if population and all(b is not None for b in top_blocks):
        lines += ["", "## What the good blocks have in common", "",
                  "Share of blocks holding each layer type (mean count per block in brackets), top-k against every "
                  "distinct block sampled. Multi-branch: some node feeds two or more others. Shortcut: an edge "
                  "that skips a layer of a longer path (as in a residual block).", ""]
        lines += feature_table(top_blocks, population)
    path = history.run_dir / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def report_run(run_dir: str | Path, top_k: int = 5, wandb: bool = True) -> list[Path]:
    """Write the plots, drawings and summary of one search run into its folder; returns the files written."""
    history = load_history(run_dir, top_k)
    if not history.rows:
        raise UserError(f"{run_dir} holds no candidates yet: nothing to report")
    out = history.run_dir
    images = {
        "reward per candidate": plot_rewards(history, out / "reward.png"),
        "best so far": plot_best_so_far(history, out / "best_so_far.png"),
    }
    drawings = []
    for rank, row in enumerate(history.best, start=1):
        block = parse_block(row["arch"])
        if block is not None:
            scores = f"reward {_num(row['reward'])}, accuracy {_num(row['accuracy'])}"
            title = f"rank {rank}: {scores}\n{wrap_code(str(block))}"
            drawings.append(draw_block(block, out / f"top{rank}.png", title))
    summary = write_summary(history, images, drawings)
    if wandb and history.wandb_run_id:
        log_to_wandb(history, [*images.values(), *drawings])
    return [*images.values(), *drawings, summary]


def report_multirun(sweep_dir: Path, runs: Sequence[Path], top_k: int = 5, wandb: bool = True) -> list[Path]:
    """Each run's report, then the agents compared across runs in the sweep folder. Runs without candidates yet
    (still starting) are left out, and so are runs that cannot be read, with a warning and a line in the summary
    naming each: one damaged seed should not hide what the others found."""
    loaded, refused = load_histories(runs, top_k)
    histories = [h for h in loaded if h.rows]
    if not histories and refused:
        raise refused[0]
    if not histories:
        raise UserError(f"no run in {sweep_dir} holds candidates yet: nothing to report")
    for error in refused:
        print(f"warning: left out of the report: {error}", file=sys.stderr)
    written = [p for h in histories for p in report_run(h.run_dir, top_k, wandb)]
    plot = plot_agents(histories, sweep_dir / "agents.png")
    lines = [f"# Multirun report: {sweep_dir.name}", "", "| agent | runs | best reward (mean ± std) | trained blocks |",
             "|---|---|---|---|"]
    for agent, group in sorted(by_agent(histories).items()):
        finals = [b[-1] for b in map(best_so_far, group) if len(b)]
        trained = sorted({len(h.trained()) for h in group})
        lines.append(f"| {agent} | {len(group)} | {np.mean(finals):.4f} ± {np.std(finals):.4f} | "
                     f"{', '.join(map(str, trained))} |")
    links = ", ".join(f"[{h.run_dir.name}]({h.run_dir.name}/summary.md)" for h in histories)
    lines += ["", f"![agents]({plot.name})", "", f"Runs: {links}"]
    if refused:
        lines += ["", "Left out, unreadable:", *(f"- {error}" for error in refused)]
    summary = sweep_dir / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    return [*written, plot, summary]


def load_histories(runs: Sequence[Path], top_k: int) -> tuple[list[History], list[StoreError]]:
    """The histories of the runs that can be read, and the refusals of those that cannot."""
    histories, refused = [], []
    for run in runs:
        try:
            histories.append(load_history(run, top_k))
        except StoreError as e:
            refused.append(e)
    return histories, refused


def report(run_dir: str | Path, top_k: int = 5, wandb: bool = True) -> list[Path]:
    """A search folder's report, or a multirun folder's (every numbered run in it, and the comparison)."""
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    run_dir = Path(run_dir)
    if is_run(run_dir):
        return report_run(run_dir, top_k, wandb)
    runs = sorted((p for p in run_dir.iterdir() if is_run(p)), key=_run_order) if run_dir.is_dir() else []
    if not runs:
        Store.open(run_dir, readonly=True)  # raises the store's own message: not a folder / not a run
    return report_multirun(run_dir, runs, top_k, wandb)


def _run_order(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (sys.maxsize, path.name)


# ---- W&B ---------------------------------------------------------------------------------------------------------
def log_to_wandb(history: History, images: Sequence[Path]) -> None:
    """Add the pictures and the top-k table to the run's W&B run (resumed by id; WANDB_MODE decides online)."""
    try:
        import wandb

        logger = OmegaConf.select(history.config, "logger") or {}
        run = wandb.init(
            id=history.wandb_run_id, resume="allow", project=logger.get("project"), entity=logger.get("entity"),
            dir=str(history.run_dir), mode=wandb_mode(logger.get("mode")), settings=wandb.Settings(console="off"),
        )
        table = wandb.Table(columns=["rank", "nsc", "reward", "accuracy", "flops", "params", "density"],
                            data=[[i, r["arch"], r["reward"], r["accuracy"], r["flops"], r["params"], r["density"]]
                                  for i, r in enumerate(history.best, start=1)])
        run.log({"report/top_k": table, **{f"report/{p.stem}": wandb.Image(str(p)) for p in images}})
        run.finish()
    except Exception as e:  # the files on disk are the report; W&B is a copy
        print(f"warning: report not sent to W&B ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
              file=sys.stderr)


# ---- command line ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blockqnn.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a search run folder, or a multirun folder holding several")
    parser.add_argument("--top-k", type=int, default=5, help="blocks to tabulate and draw (default 5)")
    parser.add_argument("--no-wandb", action="store_true", help="do not send the pictures to the run's W&B run")
    args = parser.parse_args(argv)
    with one_line_errors():
        written = report(args.run_dir, args.top_k, wandb=not args.no_wandb)
        for path in written:
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

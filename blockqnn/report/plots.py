"""The report's pictures, drawn with matplotlib: the paper's search curve, best reward against trained blocks,
the candidates' learning curves (stops marked), the workers' timeline, and agents compared across runs. ``figure``
and ``save_figure`` are the figures of every report and experiment: drawn outside pyplot, so that importing or
calling them leaves the backend of a notebook as it was.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from blockqnn.candidate import Status
from blockqnn.drawing import figure
from blockqnn.report.analysis import History, best_so_far, by_agent


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
    reward = np.array([np.nan if r["status"] == Status.FAILED or r["reward"] is None else r["reward"]
                       for r in rows])
    cached = np.array([bool(r["cached"]) for r in rows])
    failed = np.array([r["status"] == Status.FAILED for r in rows])
    stopped = np.array([r["status"] == Status.STOPPED for r in rows]) & ~cached
    window = max(Counter(r["iteration"] for r in rows).values(), default=1)
    fig, ax = figure(figsize=(9, 4.2))
    shades = ("#f0f0f0", "#dcdcdc")
    for n, (first, last, eps) in enumerate(_epsilon_stages(rows)):
        ax.axvspan(first - 0.5, last + 0.5, color=shades[n % 2], zorder=0, linewidth=0)
        ax.text((first + last) / 2, 1.01, f"ε={eps:g}" if eps is not None else "", transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=7)
    full = ~cached & ~stopped
    ax.scatter(x[full], reward[full], s=9, color="#3182bd", alpha=0.6, label="trained", zorder=2)
    if stopped.any():
        ax.scatter(x[stopped], reward[stopped], s=9, marker="v", color="#9ecae1", label="stopped at a rung (its reward "
                   "there)", zorder=2)
    if cached.any():
        ax.scatter(x[cached], reward[cached], s=9, facecolors="none", edgecolors="#999999", linewidths=0.7,
                   label="cached (reward reused)", zorder=2)
    ax.plot(x, running_mean(reward, window), color="#e6550d", linewidth=2, label=f"running mean ({window})", zorder=3)
    if failed.any():
        floor = np.nanmin(reward) if np.isfinite(reward).any() else 0.0
        ax.scatter(x[failed], np.full(failed.sum(), floor), marker="x", color="#d62728", s=14, label="failed",
                   zorder=3)
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
    fig, ax = figure(figsize=(6.5, 4))
    ax.step(np.arange(1, len(best) + 1), np.where(np.isfinite(best), best, np.nan), where="post", color="#3182bd")
    ax.set_xlabel(f"trained candidates ({cached} cached repeats not counted)")
    ax.set_ylabel("best reward so far")
    ax.set_title(f"{history.run_dir.name}: best so far ({history.agent})", fontsize=10)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


# Learning curves: full-budget candidates, stopped ones (crossed where they stopped), failed ones, and the top-k.
LANE_COLORS = {Status.OK: "#3182bd", Status.STOPPED: "#9ecae1"}  # any other status: failed, red
CURVE_STYLES = {
    Status.OK: dict(color="#3182bd", alpha=0.35, linewidth=0.8, label="full budget"),
    Status.STOPPED: dict(color="#e6550d", alpha=0.45, linewidth=0.8, linestyle="--", label="stopped at a rung"),
    Status.FAILED: dict(color="#d62728", alpha=0.45, linewidth=0.8, linestyle=":", label="failed"),
}


def curve_of(row: dict[str, Any]) -> np.ndarray:
    """A stored curve as floats; an epoch the recipe did not validate is NaN (a gap in the line)."""
    return np.array([np.nan if acc is None else acc for acc in row["curve"]], dtype=float)


def plot_curves(history: History, path: Path) -> Path | None:
    """Validation accuracy after each epoch of every trained candidate: how far the stopped ones had come when
    their rung cut them off, against the full-budget ones and the top-k. Cached repeats (another row's curve)
    are left out; a history without curves (written before they were stored) gets no file: None."""
    rows = [r for r in history.trained() if r.get("curve")]
    if not rows:
        return None
    top = {(r["iteration"], r["position"]): rank for rank, r in enumerate(history.best, start=1)}
    fig, ax = figure(figsize=(7, 4.2))
    _thin_curves(ax, [r for r in rows if (r["iteration"], r["position"]) not in top])
    stopped = [curve_of(r) for r in rows if r["status"] == Status.STOPPED]
    if stopped:
        ax.plot([len(c) for c in stopped], [c[-1] for c in stopped], "x", color="#a63603", markersize=6,
                linestyle="none", label="where each stopped")
    for row in rows:
        rank = top.get((row["iteration"], row["position"]))
        if rank is not None:
            _top_curve(ax, curve_of(row), rank, len(top))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{history.run_dir.name}: learning curves of {len(rows)} trained candidates, {len(stopped)} "
                 "stopped", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def _thin_curves(ax: Axes, rows: Sequence[dict[str, Any]]) -> None:
    """One thin translucent line per candidate, styled by its status; one legend entry per status."""
    labelled: set[str] = set()
    for row in rows:
        style = dict(CURVE_STYLES.get(row["status"], CURVE_STYLES[Status.FAILED]))
        if style["label"] in labelled:
            style["label"] = "_nolegend_"
        labelled.add(style["label"])
        ax.plot(np.arange(1, len(row["curve"]) + 1), curve_of(row), **style)


def _top_curve(ax: Axes, curve: np.ndarray, rank: int, k: int) -> None:
    """A top-k block's curve in bold, its rank written at its end."""
    ax.plot(np.arange(1, len(curve) + 1), curve, color="#31a354", linewidth=2,
            label=f"top-{k}" if rank == 1 else "_nolegend_")
    ax.annotate(str(rank), (len(curve), curve[-1]), xytext=(3, 0), textcoords="offset points", va="center",
                fontsize=7, color="#31a354")


def plot_agents(histories: Sequence[History], path: Path) -> Path:
    """Best-so-far curves of every agent across runs (seeds): mean line, min-max band, each run thin; the y-axis
    starts where the lowest mean stands a tenth of the way in (the first few candidates would flatten the rest)."""
    fig, ax = figure(figsize=(7, 4.2))
    colours = {"q-learning": "#3182bd", "random": "#e6550d", "evolution": "#31a354"}
    lows = []
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


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Lay out and write a figure (creating the folder); the PNG style of every report and experiment."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path




def worker_lanes(rows: Sequence[dict[str, Any]]) -> list[list[tuple[float, float, dict[str, Any]]]]:
    """Trained candidates as (start, end, row) packed into the fewest rows of non-overlapping bars, in start order:
    one row per worker slot (the history keeps when each candidate trained, not on which worker)."""
    lanes: list[list[tuple[float, float, dict[str, Any]]]] = []
    trained = [r for r in rows if not r["cached"] and r.get("started_at") is not None]
    for row in sorted(trained, key=lambda r: r["started_at"]):
        bar = (row["started_at"], row["finished_at"], row)
        free = [lane for lane in lanes if lane[-1][1] <= bar[0] + 1e-6]
        if free:
            max(free, key=lambda lane: lane[-1][1]).append(bar)  # the worker that just freed up
        else:
            lanes.append([bar])
    return lanes


def plot_timeline(history: History, path: Path) -> Path:
    """One row per worker, a bar per trained candidate (stopped ones light, failed in red): idle time at a glance."""
    lanes = worker_lanes(history.rows)
    fig, ax = figure(figsize=(9, max(2.5, 0.6 + 0.28 * len(lanes))))
    if lanes:
        t0 = min(lane[0][0] for lane in lanes)
        span = max(bar[1] for lane in lanes for bar in lane) - t0
        busy = sum(end - start for lane in lanes for start, end, _ in lane)
        for i, lane in enumerate(lanes):
            colors = [LANE_COLORS.get(row["status"], "#de2d26") for _, _, row in lane]
            ax.broken_barh([(start - t0, end - start) for start, end, _ in lane], (i - 0.4, 0.8), color=colors,
                           edgecolor="white", linewidth=0.5)
        ax.set_title(f"{len(lanes)} workers busy {busy / (len(lanes) * span):.0%} of {span:.3g} s "
                     "(a resumed search's pauses count as idle)", fontsize=9)
    ax.set_xlabel("seconds since the first candidate started")
    ax.set_ylabel("worker")
    ax.set_yticks(range(len(lanes)))
    return save_figure(fig, path)

"""The report written into a run folder: pictures, block drawings and ``summary.md``; W&B copies."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from blockqnn.codes import Block
from blockqnn.drawing import draw_block, wrap_code
from blockqnn.errors import UserError
from blockqnn.executors.base import TIMED_OUT
from blockqnn.frames import run_folders
from blockqnn.report.analysis import (
    History,
    best_after,
    by_agent,
    common_budget,
    feature_table,
    load_histories,
    load_history,
    parse_block,
    stopping_effect,
)
from blockqnn.report.plots import plot_agents, plot_best_so_far, plot_curves, plot_rewards, plot_timeline
from blockqnn.store import is_run
from blockqnn.tracking import wandb_mode


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
        "batch per iteration": "agent.batch_size", "budget": "agent.budget",
        "reward": "reward._target_" if looked_up else "reward",
        "seed": "seed",
    }
    lines = [f"- agent: {history.agent}"]
    for label, key in pick.items():
        value = OmegaConf.select(cfg, key)
        if isinstance(value, DictConfig):
            value = _flat(value)
        if value is not None:
            lines.append(f"- {label}: {value}")
    statuses = Counter("cached" if r["cached"] else r["status"] for r in rows)
    iterations = len({r["iteration"] for r in rows})
    wall = sum(r["wall_time"] or 0.0 for r in history.trained())
    lines.append(f"- candidates: {len(rows)} sampled over {iterations} iterations: "
                 + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
    lines.append(f"- training time: {wall / 3600:.2f} h summed over trained candidates")
    return lines


def timed_out_lines(history: History) -> list[str]:
    """The candidates given up at the time limit (``executor.candidate_timeout``), each named: a hang is worth a
    look (a deadlocked data loader, a stuck collective, a frozen node)."""
    late = [r for r in history.rows if not r["cached"] and (r["error"] or "").startswith(TIMED_OUT)]
    if not late:
        return []
    return [f"- timed out (executor.candidate_timeout), recorded failed: {len(late)}",
            *(f"  - `{r['arch']}` (iteration {r['iteration'] + 1}, position {r['position'] + 1}): {r['error']}"
              for r in late)]


def _flat(section: DictConfig) -> str:
    """A config section's own plain settings in one line (``eta=3, rungs=[1, 3]``): its target and subsections
    left out."""
    return ", ".join(f"{k}={v}" for k, v in section.items() if not str(k).startswith("_")
                     and not isinstance(v, DictConfig))


def stopping_lines(history: History) -> list[str]:
    """What stopping weak candidates cost and saved, for a run that stopped some or was set to; nothing for a
    paper-style run (``stopping=none``) or one without a training budget (a table space's stored config may
    lack it)."""
    cfg = history.config
    target = str(OmegaConf.select(cfg, "stopping._target_") or ".NoStopping").rsplit(".", 1)[-1]
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs")
    effect = None if max_epochs is None else stopping_effect(history.rows, int(max_epochs))
    if effect is None or (target == "NoStopping" and not effect.stopped):
        return []
    stopped = sum(effect.stopped.values())
    rungs = ", ".join(f"{n} at epoch {epoch}" for epoch, n in effect.stopped.items())
    share = effect.saved / (effect.epochs + effect.saved) if effect.epochs + effect.saved else 0.0
    settings = _flat(cfg.stopping) if isinstance(cfg.get("stopping"), DictConfig) else ""
    return ["## Stopping weak candidates", "",
            f"- stopping: {target}" + (f" ({settings})" if settings else ""),
            f"- trained to the full budget ({max_epochs} epochs): {effect.full} candidates",
            f"- stopped at a rung: {stopped} candidates" + (f" ({rungs})" if rungs else ""),
            f"- candidate-epochs trained: {effect.epochs}; saved: {effect.saved} ({share:.0%} of what training "
            f"every one of them to the full budget would have cost)", ""]


def write_summary(history: History, images: dict[str, Path], drawings: list[Path]) -> Path:
    top_blocks = [parse_block(r["arch"]) for r in history.best]
    seen: dict[str, Block | None] = {}
    for r in history.rows:
        seen.setdefault(r["hash"] or r["arch"], parse_block(r["arch"]))
    population = [b for b in seen.values() if b is not None]
    lines = [f"# Search report: {history.run_dir.name}", "", "## Run settings", *settings_lines(history),
             *timed_out_lines(history), "",
             *stopping_lines(history)]
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
        "workers over time": plot_timeline(history, out / "timeline.png"),
    }
    curves = plot_curves(history, out / "curves.png")
    if curves is not None:
        images["learning curves"] = curves
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
    budget = common_budget(histories)
    lines = [f"# Multirun report: {sweep_dir.name}", "",
             f"Agents compared at equal numbers of trained blocks: the best reward after the first {budget} trained "
             "blocks of each run (the fewest any run trained).", "",
             f"| agent | runs | best reward after {budget} trained (mean ± std) | trained blocks per run |",
             "|---|---|---|---|"]
    for agent, group in sorted(by_agent(histories).items()):
        bests = [b for b in (best_after(h, budget) for h in group) if b is not None]
        score = f"{np.mean(bests):.4f} ± {np.std(bests):.4f}" if bests else "-"
        lines.append(f"| {agent} | {len(group)} | {score} | {', '.join(str(len(h.trained())) for h in group)} |")
    links = ", ".join(f"[{h.run_dir.name}]({h.run_dir.name}/summary.md)" for h in histories)
    lines += ["", f"![agents]({plot.name})", "", f"Runs: {links}"]
    if refused:
        lines += ["", "Left out, unreadable:", *(f"- {error}" for error in refused)]
    summary = sweep_dir / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    return [*written, plot, summary]


def report(run_dir: str | Path, top_k: int = 5, wandb: bool = True) -> list[Path]:
    """A search folder's report, or a multirun folder's (every numbered run in it, and the comparison)."""
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    runs = run_folders(run_dir)  # refuses a path that is neither
    if is_run(run_dir):
        return report_run(run_dir, top_k, wandb)
    return report_multirun(Path(run_dir), runs, top_k, wandb)


# ---- W&B ---------------------------------------------------------------------------------------------------------
def log_to_wandb(history: History, images: Sequence[Path]) -> None:
    """Add the pictures and the top-k table to the run's W&B run (resumed by id; WANDB_MODE decides online).

    Offline, W&B writes each process's part of a run to its own ``offline-run-*`` folder (the search, each resume,
    this report), all with the run's id; ``wandb sync`` uploads such parts in order of their start time into the
    one run. So the line printed names them all, not this report's part alone (W&B's own advice, silenced here)."""
    try:
        import wandb

        logger = OmegaConf.select(history.config, "logger") or {}
        mode = wandb_mode(logger.get("mode"))
        run = wandb.init(
            id=history.wandb_run_id, resume="allow", project=logger.get("project"), entity=logger.get("entity"),
            dir=str(history.run_dir), mode=mode, settings=wandb.Settings(console="off", silent=True),
        )
        table = wandb.Table(columns=["rank", "nsc", "reward", "accuracy", "flops", "params", "density"],
                            data=[[i, r["arch"], r["reward"], r["accuracy"], r["flops"], r["params"], r["density"]]
                                  for i, r in enumerate(history.best, start=1)])
        run.log({"report/top_k": table, **{f"report/{p.stem}": wandb.Image(str(p)) for p in images}})
        run.finish()
        if mode == "offline":
            print(f"W&B run {history.wandb_run_id} is offline, in parts (search, resumes, report); upload them "
                  f"all with: wandb sync {history.run_dir / 'wandb'}/offline-run-*")
    except Exception as e:  # the files on disk are the report; W&B is a copy
        print(f"warning: report not sent to W&B ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
              file=sys.stderr)

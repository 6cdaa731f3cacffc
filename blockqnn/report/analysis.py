"""What a search found, as data: a stored run read for analysis (``History``), best-so-far curves, agents
grouped across the runs of a multirun, what stopping weak candidates saved, and the structure of blocks (layer
types, multi-branch structure, shortcuts), the paper's analysis of what good blocks have in common. The report and
the experiments build on it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from blockqnn.candidate import Status
from blockqnn.codes import Block, LayerType
from blockqnn.drawing import NAMES, depths
from blockqnn.errors import NSCError, StoreError
from blockqnn.store import Store


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
        """``evolution`` (regularized evolution), ``local`` (local search), ``guided_evolution`` (predictor-guided
        evolution), ``random`` (Q-learning's sampler with epsilon fixed at 1), or ``q-learning``."""
        target = str(OmegaConf.select(self.config, "agent._target_")).rpartition(".")[2]
        named = {"RegularizedEvolution": "evolution", "LocalSearch": "local", "GuidedEvolution": "guided_evolution"}
        if target in named:
            return named[target]
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
    rewards = [r["reward"] if r["status"] == Status.OK and r["reward"] is not None else -math.inf
               for r in history.trained()]
    return np.maximum.accumulate(np.asarray(rewards, dtype=float)) if rewards else np.zeros(0)


def common_budget(histories: Sequence[History]) -> int:
    """The number of trained blocks every run reached: where runs (and agents) are compared fairly."""
    return min((len(h.trained()) for h in histories), default=0)


def best_after(history: History, trained: int) -> float | None:
    """The best reward after the first ``trained`` trained blocks (None if none of them succeeded)."""
    curve = best_so_far(history)[:trained]
    return float(curve[-1]) if len(curve) and np.isfinite(curve[-1]) else None


def by_agent(histories: Sequence[History]) -> dict[str, list[History]]:
    groups: dict[str, list[History]] = {}
    for h in histories:
        groups.setdefault(h.agent, []).append(h)
    return groups


def load_histories(runs: Sequence[Path], top_k: int) -> tuple[list[History], list[StoreError]]:
    """The histories of the runs that can be read, and the refusals of those that cannot."""
    histories, refused = [], []
    for run in runs:
        try:
            histories.append(load_history(run, top_k))
        except StoreError as e:
            refused.append(e)
    return histories, refused


# ---- what stopping at rungs saved -------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoppingEffect:
    """A run's training cost with stopping against without: the candidates that trained the full budget, those
    stopped (how many at each epoch), the candidate-epochs trained, and the epochs the stops saved."""

    full: int
    stopped: dict[int, int]
    epochs: int
    saved: int


def stopping_effect(rows: Sequence[dict[str, Any]], max_epochs: int) -> StoppingEffect:
    """Cached repeats cost no training and are left out; a failed candidate's epochs were paid for, so they count
    as trained, but it neither reached the budget nor was stopped. ``max_epochs``: the full budget."""
    trained = [r for r in rows if not r["cached"]]
    stopped = [r["epochs"] or 0 for r in trained if r["status"] == Status.STOPPED]
    return StoppingEffect(
        full=sum(r["status"] == Status.OK for r in trained),
        stopped=dict(sorted(Counter(stopped).items())),
        epochs=sum(r["epochs"] or 0 for r in trained),
        saved=sum(max(0, max_epochs - epochs) for epochs in stopped),
    )


def busy_hours(history: History) -> float:
    """Hours during which at least one candidate was training: a run's machine time, without the gaps while an
    interrupted search waited to be resumed (a candidate cut off by the interruption started again on resume)."""
    spans = sorted((r["started_at"], r["finished_at"]) for r in history.rows
                   if r["started_at"] is not None and r["finished_at"] is not None)
    busy, covered = 0.0, -math.inf
    for start, end in spans:
        busy += max(0.0, end - max(start, covered))
        covered = max(covered, end)
    return busy / 3600


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



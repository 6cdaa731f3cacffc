"""``python -m blockqnn.search``: the command-line face of ``search()``: the run folder, signals, the closing line."""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from blockqnn.candidate import Status
from blockqnn.cli import fail, hydra_app
from blockqnn.errors import Interrupted
from blockqnn.resume import HISTORY_KEYS, command_line_keys
from blockqnn.search import search
from blockqnn.store import Store

log = logging.getLogger(__name__)


def summary(best: dict[str, Any] | None, run_dir: Path) -> str:
    """The closing lines: the best block, found in which iteration (counted from 1, as the progress line counts),
    and where the run is stored."""
    lines = []
    if best is None:
        lines.append("no candidate finished successfully")
    else:
        lines.append(f"best block: {best['arch']}")
        lines.append(f"  reward {best['reward']:.4f}  accuracy {best['accuracy']:.4f}  "
                     f"(iteration {best['iteration'] + 1}, position {best['position'] + 1})")
    lines.append(f"run stored in {run_dir} (history.sqlite); report: python -m blockqnn.report {run_dir}")
    return "\n".join(lines)


def all_failed(run_dir: Path) -> str:
    """Why a search none of whose candidates finished failed: its most common error (errors that differ only in
    their numbers, a step or a size, count as one), for the exit line."""
    with Store.open(run_dir, readonly=True) as store:
        errors = [(row["error"] or "").strip().split("\n")[0] or "no error recorded"
                  for row in store.candidates() if row["status"] != Status.OK]
    if not errors:
        return "the search sampled no candidate"
    kinds = Counter(re.sub(r"\d+", "#", e) for e in errors)
    kind, count = kinds.most_common(1)[0]
    example = next(e for e in errors if re.sub(r"\d+", "#", e) == kind)
    return f"every candidate failed ({len(errors)}); the most common error ({count} of {len(errors)}): {example}"


@hydra_app("search")
def main(cfg: DictConfig) -> float:
    """One search; returns its best reward, what a sweep that optimises (``hydra/sweeper=optuna``,
    ``conf/hparams_search/``) maximises."""
    hydra = HydraConfig.get()
    run_dir = Path(cfg.resume or hydra.runtime.output_dir)
    group = Path(hydra.sweep.dir).name if hydra.mode == RunMode.MULTIRUN else None
    command_line = command_line_keys(hydra.overrides.task, preset_sections=HISTORY_KEYS)
    try:
        with interruptible():
            best = search(cfg, run_dir, group, command_line)
    except Interrupted as e:
        print(f"interrupted; continue with: python -m blockqnn.search resume={run_dir}", file=sys.stderr, flush=True)
        raise SystemExit(128 + e.signum) from None
    print(summary(best, run_dir), flush=True)
    if best is None:
        fail(all_failed(run_dir))
    return float(best["reward"])


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C and SIGTERM (docker stop, a pre-empted job) raise ``Interrupted`` wherever the search is, training
    included: what finished is in the history, the candidate in progress is left out (async: left ``running``)
    and runs again on resume. Worker processes ignore both (``blockqnn.executors``); the executor stops them."""
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    lightning_notice = logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector")
    level = lightning_notice.level
    lightning_notice.setLevel(logging.WARNING)  # its "Received SIGTERM" would precede the one line
    try:
        yield
    finally:
        lightning_notice.setLevel(level)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


if __name__ == "__main__":
    main()

"""What a running search reports: W&B tracking (``logger=wandb``, or ``logger=none``) and the progress line.

W&B: one run per search, stored under the run folder (``RUN_DIR/wandb``), grouped by the multirun folder so a
sweep's runs sit together. Every finished candidate is logged as it finishes (x-axis ``candidate``) with the
workers' utilization so far (busy time / (capacity x elapsed)); a table of all candidates with their NSC and a
chart of their learning curves (validation accuracy per epoch, a stopped candidate's line ending where it stopped
and named so) every ``table_every`` iterations and at the end; the best block so far in the summary, and its
drawing (``best_block``) whenever it changes. At the end (a stopped search's
too) the history (``history.sqlite``) and the ``top_k`` best blocks (``top_blocks.json``) are logged as artifacts,
and a training's model files likewise (``log_model_artifact``), with the search's artifacts as its inputs
(``record_lineage``); offline, ``wandb sync`` uploads them with the run.
The run id is kept in the search history, so a resumed search continues the same W&B run. Runs are offline unless
the environment says otherwise (``WANDB_MODE``, or ``WANDB_API_KEY`` for online; see ``.env.example``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar

from omegaconf import DictConfig, OmegaConf

from blockqnn.candidate import Candidate, Status
from blockqnn.schema import COUNT, POSITIVE, ProgressConfig, declared, member, setting
from blockqnn.store import DB_NAME, Store

log = logging.getLogger(__name__)
T = TypeVar("T")

# Columns of the W&B candidates table, in order.
TABLE_COLUMNS = (
    "iteration", "position", "arch", "status", "reward", "accuracy", "flops", "params", "density", "epsilon",
    "cached", "epochs", "wall_time", "error",
)
# The best candidate's result fields kept in the run summary, besides its arch.
BEST_SUMMARY = ("reward", "accuracy", "flops", "params")
# The result's numbers logged per candidate (history), besides where it was sampled and the counters.
LOGGED = ("reward", "accuracy", "flops", "params", "density")
# The fields of each block in the top-blocks artifact, after its rank.
TOP_FIELDS = ("arch", "reward", "accuracy", "flops", "params", "density", "iteration", "position")
TOP_FILE = "top_blocks.json"


class Tracker(Protocol):
    """What the search loops tell a tracker; it is opened and always closed by ``tracking(...)``."""

    def tracking(self, cfg: DictConfig, run_dir: Path, store: Store, group: str | None = None
                 ) -> contextlib.AbstractContextManager[None]: ...

    def log_candidate(self, candidate: Candidate, count: int, best: Candidate | None,
                      utilization: float | None = None) -> None: ...

    def end_iteration(self, iteration: int, store: Store) -> None: ...


@member
class WandbSettings:
    """``logger=wandb`` (conf/logger/wandb.yaml), and ``WandbTracker``'s arguments."""

    project: str = setting()
    entity: str | None = setting()
    mode: str | None = setting(choices=("online", "offline", "disabled", "shared"))
    group: str | None = setting()
    tags: list[str] = setting()
    table_every: int = setting(**COUNT)  # 0: only at the end
    console: str = setting(choices=("off", "auto", "wrap", "redirect", "wrap_raw", "wrap_emu"))
    artifacts: bool = setting()
    top_k: int = setting(**POSITIVE)
    init_timeout: float = setting(gt=0)  # seconds an online start may take before the run goes offline


@member
class NoTrackerSettings:
    """``logger=none``: nothing to set."""


@declared("logger", NoTrackerSettings)
class NoTracker:
    """``logger=none``: tracking off. Every tracker is used through ``tracking``."""

    @contextlib.contextmanager
    def tracking(self, cfg: DictConfig, run_dir: Path, store: Store, group: str | None = None) -> Iterator[None]:
        """Start tracking the search and always finish it, marked failed (exit code 1) when the search was killed
        or crashed: a resumed search continues the same W&B run."""
        self.start(cfg, run_dir, store, group)
        try:
            yield
        except BaseException:
            self.finish(store, exit_code=1)
            raise
        self.finish(store)

    def start(self, cfg: DictConfig, run_dir: Path, store: Store, group: str | None = None) -> None:
        pass

    def log_candidate(self, candidate: Candidate, count: int, best: Candidate | None,
                      utilization: float | None = None) -> None:
        pass

    def end_iteration(self, iteration: int, store: Store) -> None:
        pass

    def finish(self, store: Store, exit_code: int = 0) -> None:
        pass


@declared("logger", WandbSettings, member="wandb")
class WandbTracker(NoTracker):
    """``logger=wandb``: see the module docstring; defaults: conf/logger/wandb.yaml. ``mode`` null means: the
    environment's, else offline."""

    def __init__(
        self, *, project: str, entity: str | None, mode: str | None, group: str | None, tags: Sequence[str],
        table_every: int, console: str, artifacts: bool, top_k: int, init_timeout: float,
    ) -> None:
        self.project, self.entity, self.mode, self.group = project, entity, mode, group
        self.tags, self.table_every, self.console = list(tags), table_every, console
        self.artifacts, self.top_k, self.init_timeout = artifacts, top_k, init_timeout
        self.run: Any = None
        self._drawn: tuple[int, int] | None = None  # the best block last drawn, by (iteration, position)

    def start(self, cfg: DictConfig, run_dir: Path, store: Store, group: str | None = None) -> None:
        import wandb

        run_id = store.get("wandb_run_id")
        self.run = online_or_offline(lambda mode: wandb.init(
            project=self.project,
            entity=self.entity,
            group=self.group or group,
            tags=self.tags,
            name=Path(run_dir).name,
            config=OmegaConf.to_container(cfg, resolve=True),
            dir=str(run_dir),
            id=run_id,
            resume="allow" if run_id else None,
            mode=mode,
            job_type="search",
            settings=wandb.Settings(console=self.console, init_timeout=self.init_timeout),
        ), wandb_mode(self.mode), run_dir)
        if run_id is None:
            store.set("wandb_run_id", self.run.id)
        self.run.define_metric("candidate")
        self.run.define_metric("*", step_metric="candidate")

    def log_candidate(self, candidate: Candidate, count: int, best: Candidate | None,
                      utilization: float | None = None) -> None:
        metrics = {k: v for k in LOGGED if (v := getattr(candidate.result, k)) is not None}
        metrics.update(iteration=candidate.iteration, position=candidate.position, epsilon=candidate.epsilon,
                       cached=int(candidate.cached), candidate=count, failed=int(candidate.status == Status.FAILED),
                       stopped=int(candidate.status == Status.STOPPED))
        if utilization is not None:
            metrics["utilization"] = utilization
        if best is not None:
            metrics["best_reward"] = best.result.reward
        with self._tolerated(), tempfile.TemporaryDirectory() as tmp:
            if best is not None:
                self.run.summary.update({"best_arch": best.arch} | {f"best_{k}": getattr(best.result, k)
                                                                     for k in BEST_SUMMARY})
                metrics.update(self._drawing(best, Path(tmp)))
            self.run.log(metrics)  # copies the drawing into the run

    def _drawing(self, best: Candidate, folder: Path) -> dict[str, Any]:
        """``best_block``: the best block drawn into ``folder``, when it changed since the last drawing (an NSC
        block: a table space's cell has no drawing)."""
        import wandb

        from blockqnn.codes import Block, NSCError
        from blockqnn.drawing import draw_block, wrap_code

        where = (best.iteration, best.position)
        if where == self._drawn:
            return {}
        self._drawn = where
        try:
            block = Block.parse(best.arch, max_index=None)
        except NSCError:
            return {}
        caption = f"reward {best.result.reward:.4f}, accuracy {best.result.accuracy:.4f}\n{wrap_code(str(block))}"
        return {"best_block": wandb.Image(str(draw_block(block, folder / "best_block.png", caption)), caption=caption)}

    def end_iteration(self, iteration: int, store: Store) -> None:
        if self.table_every and (iteration + 1) % self.table_every == 0:
            self._log_table(store.candidates())

    @contextlib.contextmanager
    def _tolerated(self) -> Iterator[None]:
        """A tracking failure (W&B down, disk full under wandb/) must not stop a search: the history has it all."""
        try:
            yield
        except Exception as e:  # noqa: BLE001
            log.warning("W&B logging failed, the search goes on (history.sqlite has every candidate): %s", e)

    def finish(self, store: Store, exit_code: int = 0) -> None:
        if self.run is None:
            return
        self._log_table(store.candidates())
        if self.artifacts:
            self._log_artifacts(store)
        self.run.finish(exit_code=exit_code)
        self.run = None

    def _log_artifacts(self, store: Store) -> None:
        """``history.sqlite`` (a snapshot: the store stays open) and the ``top_k`` best blocks, one artifact each,
        named by the run so that a resumed search adds versions."""
        import wandb

        with self._tolerated(), tempfile.TemporaryDirectory() as tmp:
            history = wandb.Artifact(f"history-{self.run.id}", type="history",
                                     metadata={"candidates": len(store.candidates())})
            history.add_file(str(store.snapshot(Path(tmp) / DB_NAME)))  # copied to W&B's staging area here
            self.run.log_artifact(history)
            top = [{"rank": rank, **{k: row[k] for k in TOP_FIELDS}}
                   for rank, row in enumerate(store.best(self.top_k), 1)]
            (Path(tmp) / TOP_FILE).write_text(json.dumps(top, indent=2) + "\n")
            blocks = wandb.Artifact(f"top-blocks-{self.run.id}", type="blocks", metadata={"top_k": self.top_k})
            blocks.add_file(str(Path(tmp) / TOP_FILE))
            self.run.log_artifact(blocks)

    def _log_table(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """The candidates table, and the learning curves of those that trained."""
        import wandb

        data = [[row.get(c) for c in TABLE_COLUMNS] for row in rows]
        logged = {"candidates": wandb.Table(columns=list(TABLE_COLUMNS), data=data)}
        trained = [row for row in rows if not row["cached"] and row.get("curve")]
        with self._tolerated():
            if trained:
                logged["learning_curves"] = wandb.plot.line_series(
                    xs=[list(range(1, len(row["curve"]) + 1)) for row in trained], ys=[row["curve"] for row in trained],
                    keys=[curve_name(row) for row in trained], xname="epoch",
                    title="Validation accuracy per epoch (stopped candidates end where they stopped)")
            self.run.log(logged)


def curve_name(row: Mapping[str, Any]) -> str:
    """A candidate's line in the learning-curves chart: where it was sampled (counted from 1, as the progress line
    counts), and where it was stopped."""
    name = f"iteration {row['iteration'] + 1} #{row['position'] + 1}"
    return f"{name} stopped at epoch {len(row['curve'])}" if row["status"] == Status.STOPPED else name


def record_lineage(run: Any, search_run: str | Path) -> None:
    """A training's input, when its block came from a tracked search: that search's history and top-blocks
    artifacts. Online, they become the run's inputs in W&B's lineage graph (``use_artifact``); W&B refuses
    artifacts as inputs offline, so their names also go into the run's config (``lineage``), which ``wandb sync``
    uploads. A search tracked offline and not synced yet has no artifacts to link: one warning."""
    with Store.open(search_run, readonly=True) as store:
        search_id = store.get("wandb_run_id")
    if search_id is None:
        return
    inputs = {"history": f"history-{search_id}:latest", "top_blocks": f"top-blocks-{search_id}:latest"}
    run.config.update({"lineage": {"search_run": str(search_run), "search_wandb_run": search_id, **inputs}})
    if run.offline or run.disabled:
        return
    for name in inputs.values():
        try:
            run.use_artifact(name)
        except Exception as e:  # noqa: BLE001 - not synced yet, no access: the config still names it
            log.warning("W&B lineage: %s not linked (%s)", name, str(e).strip().splitlines()[0] if str(e) else e)


def log_model_artifact(run: Any, files: Sequence[Path], metadata: Mapping[str, Any]) -> None:
    """A training's model files as one W&B artifact ``model-<run id>`` (type ``model``), with its result."""
    import wandb

    artifact = wandb.Artifact(f"model-{run.id}", type="model",
                              metadata={k: v for k, v in metadata.items() if v is not None})
    for path in files:
        artifact.add_file(str(path))
    run.log_artifact(artifact)


def online_or_offline(start: Callable[[str], T], mode: str, run_dir: str | Path) -> T:
    """``start(mode)``; a W&B server that cannot be reached within the init timeout (``CommError``: no network, a
    wrong host, the service down) is one warning, and ``start("offline")``: the run goes on, logged where
    ``wandb sync`` uploads it once the server is back."""
    import wandb

    try:
        return start(mode)
    except wandb.errors.CommError as e:
        if mode != "online":
            raise
        log.warning("W&B cannot be reached (%s): logging offline instead; `wandb sync %s/wandb/offline-run-*` "
                    "uploads the run later", str(e).strip().splitlines()[0], run_dir)
        return start("offline")


def wandb_mode(mode: str | None) -> str:
    """The configured mode, else ``WANDB_MODE``, else online with an API key and offline without."""
    return mode or os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


# ---- progress -------------------------------------------------------------------------------------------------
@declared("progress", ProgressConfig)
class Progress:
    """One search-level status line: iteration, epsilon, candidates done / cached / failed, best, candidates in
    flight and the workers' utilization so far, time.

    ``mode``: ``line`` rewrites one line in place (a terminal), ``log`` writes a plain log line at most every
    ``every_s`` seconds and at the end, ``off`` is silent, ``auto`` is ``line`` on a terminal and ``log`` otherwise.
    The estimate of the remaining time counts only this session's work, so a resumed search is not flattered.
    """

    def __init__(self, mode: str = "auto", every_s: float = 60.0, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "line" if self.stream.isatty() else "log"
        self.mode, self.every_s = mode, every_s
        self._started = self._last = time.monotonic()
        self._session_done = 0
        self.text = ""

    def update(self, *, iteration: int, iterations: int, epsilon: float, done: int, total: int, cached: int,
               failed: int, best: float | None, new: int = 0, final: bool = False, in_flight: int = 0,
               utilization: float | None = None, stopped: tuple[int, int] | None = None, timed_out: int = 0
               ) -> None:
        """Refresh after ``new`` more candidates of this session (``done`` of ``total`` in the whole search);
        ``stopped``: candidates stopped at a rung and the candidate-epochs that saved (when stopping is on);
        ``timed_out``: failed ones given up at the time limit (``executor.candidate_timeout``), shown once any is."""
        self._session_done += new
        now = time.monotonic()
        elapsed = now - self._started
        rate = self._session_done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else math.nan
        best_text = "-" if best is None else f"{best:.4f}"
        busy = "" if utilization is None else f"workers busy {utilization:.0%}  "
        late = f" ({timed_out} timed out)" if timed_out else ""
        stops = "" if stopped is None else f"stopped {stopped[0]} (-{stopped[1]} epochs), "
        self.text = (
            f"iteration {min(iteration + 1, iterations)}/{iterations}  epsilon {epsilon:.2f}  "
            f"candidates {done}/{total} (cached {cached}, failed {failed}{late}, {stops}in flight {in_flight})  "
            f"best reward {best_text}  {busy}elapsed {_clock(elapsed)}  remaining {_clock(eta)}"
        )
        if self.mode == "line":
            self.stream.write("\r" + self.text + "\x1b[K" + ("\n" if final else ""))
            self.stream.flush()
        elif self.mode == "log" and (final or now - self._last >= self.every_s):
            self._last = now
            log.info(self.text)


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"

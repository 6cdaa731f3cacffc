"""One BlockQNN search, from a laptop to a cluster: ``search()`` builds the parts from the config and runs the loop.

The loop runs in one of two modes (``search.mode``): ``sync`` iterations of B blocks (``blockqnn.search.sync``), or
``async``, every worker busy all the time (``blockqnn.search.asynchronous``); ``auto`` is async whenever the
executor runs more than one candidate at once. A run keeps the mode it started in.

Resume: ``python -m blockqnn.search resume=RUN_DIR`` (or the same command with ``hydra.run.dir=RUN_DIR``) continues a
run killed at any moment, with nothing finished lost or trained again (each mode's module says how). A config that
changes what the history means (``blockqnn.resume.HISTORY_KEYS``) is refused; logger, executor, evaluator and
progress may change.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import get_method, instantiate
from omegaconf import DictConfig

from blockqnn.agents.base import StreamAgent
from blockqnn.errors import RunFolderUnwritable, UserError
from blockqnn.executors.base import EvaluatorFactory, bound
from blockqnn.lock import writer
from blockqnn.resume import check_same_table, open_search_run
from blockqnn.reward import AccuracyReward
from blockqnn.search.asynchronous import AsyncSearch
from blockqnn.search.sync import SyncSearch
from blockqnn.store import Store, is_run
from blockqnn.tracking import Progress

log = logging.getLogger(__name__)


# ---- setting up -----------------------------------------------------------------------------------------------
def search(cfg: DictConfig, run_dir: Path, group: str | None = None, command_line: set[str] | None = None
           ) -> dict[str, Any] | None:
    """Run the search configured by ``cfg`` in ``run_dir``, or resume it if ``run_dir`` holds one (it must when
    ``cfg.resume`` is set); returns the best candidate row. Every part comes from ``cfg``: the executor
    (``executor._target_``) and what scores a candidate (``evaluator._target_``). ``group``: the sweep this run
    belongs to (W&B); ``command_line``: the config keys the command line set (on resume the rest comes from the
    history); None (an API call): ``cfg`` stands whole."""
    with writer(run_dir, foreign=cfg.resume is not None and not is_run(run_dir)):
        try:
            return _search(cfg, run_dir, group, command_line)
        except RunFolderUnwritable as e:  # a full disk, a read-only or removed folder: what to do, in one line
            if not e.resumable:
                raise
            raise RunFolderUnwritable(f"{e}, then continue with: python -m blockqnn.search resume={run_dir} "
                                      "(nothing stored is lost)") from None


def _search(cfg: DictConfig, run_dir: Path, group: str | None, command_line: set[str] | None
            ) -> dict[str, Any] | None:
    cfg, store = open_search_run(cfg, run_dir, command_line)
    resuming = store is not None
    try:
        check_one_device(cfg)
        space = instantiate(cfg.space)
        if resuming:
            check_same_table(space, store)
        agent = instantiate(cfg.agent, space=space, seed=cfg.seed)
        tracker, progress = instantiate(cfg.logger), _progress(cfg)
        executor = build_executor(cfg, space)
        with executor:
            mode = loop_mode(cfg, store.get("mode") if resuming else None, executor, agent)
            executor.serve(instantiate(cfg.evaluator)(cfg=cfg, space=space))
            if not resuming:  # only once every part of the config has proved usable
                store = Store.create(run_dir, cfg)
                store.set("mode", mode)
            restored = store.latest_agent_state()
            if restored is not None:
                agent.load_state_dict(restored[1])
            log.info("%s %s search in %s", "resuming" if resuming else "starting", mode, run_dir)
            with tracker.tracking(cfg, run_dir, store, group):
                parts = dict(agent=agent, space=space, store=store, executor=executor, tracker=tracker,
                             progress=progress, failed_reward=cfg.failed_reward, seed=cfg.seed,
                             stopping=instantiate(cfg.stopping))
                if mode == "sync":
                    SyncSearch(**parts).run()
                else:
                    AsyncSearch(**parts, prefetch=cfg.search.prefetch).run()
        best = store.best(1)
        return best[0] if best else None
    finally:
        if store is not None:
            store.close()


def build_executor(cfg: DictConfig, space: Any) -> Any:
    """The configured executor; with ``workers=auto``, a table space's candidates are looked up in this process (a
    lookup costs microseconds: worker processes would only add their pipes)."""
    if space.tabular and cfg.executor.get("workers") == "auto":
        return instantiate(cfg.executor, workers=0)
    return instantiate(cfg.executor)


def loop_mode(cfg: DictConfig, stored: str | None, executor: Any, agent: Any) -> str:
    """``sync`` or ``async``: the run's own mode on resume (its history is written the one way), else
    ``search.mode``, where ``auto`` is async whenever the executor runs more than one candidate at once and the
    agent can take one block at a time (``blockqnn.agents.base.StreamAgent``). ``stored``: the resumed run's mode."""
    asked = cfg.search.mode
    if stored is not None:
        if asked not in ("auto", stored):
            raise UserError(f"search.mode={asked}: this run was searched in {stored} mode and continues in it")
        return stored
    streams = isinstance(agent, StreamAgent)
    if asked == "async" and not streams:
        raise UserError(f"search.mode=async: the agent {type(agent).__name__} learns by iterations only; use "
                        "search.mode=sync")
    return ("async" if executor.capacity > 1 and streams else "sync") if asked == "auto" else asked


def _progress(cfg: DictConfig) -> Progress:
    try:
        return Progress(**cfg.progress)
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None


def candidate_evaluator(cfg: DictConfig, space: Any) -> EvaluatorFactory:
    """What each worker builds once, the default ``evaluator``: the candidate evaluator (build, train, score) over
    the search's own space, after checking here that the space can be scored (a bad config stops the search with
    one line before anything is stored), trying the recipe where candidates train."""
    from blockqnn.evaluate import candidate_factory  # imports torch: only once the config is good

    check_scorable(cfg, space)
    return candidate_factory(cfg, space)


def function_evaluator(cfg: DictConfig, space: Any, fn: str) -> EvaluatorFactory:
    """An ``evaluator`` that scores a candidate by ``fn(arch, cfg) -> Result``, a function named by its dotted path
    (a surrogate, a zero-cost proxy, a test's stand-in): each worker imports it by that name."""
    return bound(get_method(fn), cfg)


def check_scorable(cfg: DictConfig, space: Any) -> None:
    """A table space must cover the space and be scored by accuracy: a bad config stops the search with one message
    before anything is stored, instead of failing every candidate alike."""
    if not space.tabular:
        return
    if not isinstance(instantiate(cfg.reward), AccuracyReward):
        raise UserError(f"a table space rewards the table's accuracy alone (it has no FLOPs or density), but the "
                        f"reward is {cfg.reward._target_}: use reward=accuracy")
    space.check_complete()


def check_one_device(cfg: DictConfig) -> None:
    """A search trains each candidate on one device: candidates, not gradients, are what it spreads out."""
    if str(cfg.trainer.devices) != "1":
        raise UserError(
            f"a search trains each candidate on one device (trainer.devices=1, got {cfg.trainer.devices}): spread "
            "candidates over GPUs with executor.workers or executor=ray; DDP is for python -m blockqnn.train"
        )

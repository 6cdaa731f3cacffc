"""``python -m blockqnn.search``: one BlockQNN search, from a laptop to a cluster.

Each iteration the agent samples B blocks; each block is looked up in the history first (a block already
evaluated in this run, by canonical hash, is recorded as a *cached* copy instead of being trained again), the
rest go to the executor and are recorded one by one as they finish. When all B are in, the agent learns from
them and its state is checkpointed in the same transaction that marks the iteration done. B counts sampled
blocks, cached ones included; failed candidates are rewarded ``failed_reward``.

Resume: ``python -m blockqnn.search resume=RUN_DIR`` (or the same command with ``hydra.run.dir=RUN_DIR``) restores
the agent after its last finished iteration and samples the next one again from the restored random state, which
gives the same blocks: those already stored are reused, the rest run. A config that changes what the history
means (``blockqnn.resume.HISTORY_KEYS``) is refused; logger, executor and progress may change.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig

from blockqnn.cli import fail, hydra_app
from blockqnn.errors import StoreError, UserError
from blockqnn.resume import check_same_table, open_search_run, overridden_keys
from blockqnn.store import Store
from blockqnn.tracking import Progress

log = logging.getLogger(__name__)


# ---- the loop -------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Search:
    """The state of one running search; ``run`` is the whole loop."""

    cfg: DictConfig
    agent: Any
    space: Any
    store: Store
    executor: Any
    tracker: Any
    progress: Progress
    evaluate: Callable[[str, DictConfig], Any]  # blockqnn.evaluate.evaluate_candidate, or a stand-in in tests
    seen: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # hash -> first evaluation
    counts: dict[str, int] = dataclasses.field(default_factory=lambda: defaultdict(int))
    best: dict[str, Any] | None = None

    def run(self) -> None:
        for row in self.store.candidates():
            self._count(row)
        while not self.agent.done:
            self.iteration()
        self._show_progress(final=True)

    def iteration(self) -> None:
        it, epsilon = self.agent.iteration, self.agent.epsilon
        trajectories = self.agent.sample()
        archs = [self.space.decode(t) for t in trajectories]
        hashes = [self.space.canonical_hash(a) for a in archs]
        rows = self._stored(it, archs)
        todo, repeats = self._new_blocks(it, epsilon, archs, hashes, rows)
        for pos, result in self.executor.map(self.evaluate, todo, self.cfg):
            row = dict(iteration=it, position=pos, arch=archs[pos], hash=hashes[pos], epsilon=epsilon, cached=0)
            rows[pos] = self._record(row | dataclasses.asdict(result))
            for other in repeats.pop(hashes[pos]):
                rows[other] = self._record_copy(rows[pos], it, other, archs[other], epsilon)
        self.agent.update(trajectories, [self._reward(rows[pos]) for pos in range(len(archs))])
        self.store.checkpoint(it, self.agent.state_dict())
        self.tracker.end_iteration(it, self.store)

    def _new_blocks(self, it: int, epsilon: float, archs: list[str], hashes: list[str], rows: dict[int, dict]
                    ) -> tuple[list[tuple[int, str]], dict[str, list[int]]]:
        """Record blocks evaluated before as cached copies; return the ``(position, arch)`` to evaluate and, per
        hash, the later positions of the same block in this batch (recorded as copies once it is evaluated)."""
        todo, repeats = [], {}
        for pos, (arch, h) in enumerate(zip(archs, hashes)):
            if pos in rows:
                continue
            if h in self.seen:
                rows[pos] = self._record_copy(self.seen[h], it, pos, arch, epsilon)
            elif h in repeats:
                repeats[h].append(pos)
            else:
                repeats[h] = []
                todo.append((pos, arch))
        return todo, repeats

    def _stored(self, iteration: int, archs: list[str]) -> dict[int, dict[str, Any]]:
        """This iteration's candidates already in the history (a resumed iteration), checked against the sample."""
        rows = {row["position"]: row for row in self.store.candidates(iteration)}
        for pos, row in rows.items():
            if pos >= len(archs) or row["arch"] != archs[pos]:
                raise StoreError(f"the history of iteration {iteration} does not match the agent's sample at "
                                 f"position {pos}: the run folder was written by a different search")
        return rows

    def _record_copy(self, first: dict[str, Any], iteration: int, pos: int, arch: str, epsilon: float) -> dict:
        now = time.time()
        copy = first | dict(iteration=iteration, position=pos, arch=arch, epsilon=epsilon, cached=1,
                            wall_time=0.0, started_at=now, finished_at=now)
        return self._record(copy)

    def _record(self, row: dict[str, Any]) -> dict[str, Any]:
        if not row["cached"]:
            row["finished_at"] = time.time()
            row["started_at"] = row["finished_at"] - row["wall_time"]
        self.store.record(row)
        self._count(row)
        self.tracker.log_candidate(row, self.counts["done"], self.best)
        self._show_progress(new=1)
        return row

    def _count(self, row: dict[str, Any]) -> None:
        self.counts["done"] += 1
        self.counts["cached"] += row["cached"]
        self.counts["failed"] += row["status"] != "ok"
        if not row["cached"] and row["status"] == "ok":  # a failure may be transient (OOM, lost worker): retry it
            self.seen.setdefault(row["hash"], row)
        if row["status"] == "ok" and (self.best is None or row["reward"] > self.best["reward"]):
            self.best = row

    def _reward(self, row: dict[str, Any]) -> float:
        return row["reward"] if row["status"] == "ok" else float(self.cfg.failed_reward)

    def _show_progress(self, new: int = 0, final: bool = False) -> None:
        self.progress.update(
            iteration=self.agent.iteration, iterations=self.agent.num_iterations, epsilon=self.agent.epsilon,
            done=self.counts["done"], total=self.agent.total_samples, cached=self.counts["cached"],
            failed=self.counts["failed"], best=None if self.best is None else self.best["reward"], new=new,
            final=final,
        )


# ---- setting up -----------------------------------------------------------------------------------------------
def search(
    cfg: DictConfig,
    run_dir: Path,
    group: str | None = None,
    evaluate: Callable[[str, DictConfig], Any] | None = None,
    overridden: set[str] | None = None,
) -> dict[str, Any] | None:
    """Run the search configured by ``cfg`` in ``run_dir``, or resume it if ``run_dir`` holds one (it must when
    ``cfg.resume`` is set); returns the best candidate row. ``evaluate`` replaces candidate evaluation (tests).
    ``overridden``: the config keys the command line set; on resume the rest comes from the history."""
    cfg, store = open_search_run(cfg, run_dir, overridden)
    resuming = store is not None
    try:
        check_one_device(cfg)
        space = instantiate(cfg.space)
        if resuming:
            check_same_table(space, store)
        agent = instantiate(cfg.agent, space=space, seed=cfg.seed)
        tracker, executor, progress = instantiate(cfg.logger), instantiate(cfg.executor), _progress(cfg)
        trial = evaluate is None
        evaluate = evaluate or prepared_evaluator(cfg)
        with executor:
            if trial:
                try_recipe_on(executor, cfg)
            store = store or Store.create(run_dir, cfg)  # only once every part of the config has proved usable
            restored = store.latest_agent_state()
            if restored is not None:
                agent.load_state_dict(restored[1])
            log.info("%s search in %s", "resuming" if resuming else "starting", run_dir)
            with tracker.tracking(cfg, run_dir, store, group):
                Search(cfg, agent, space, store, executor, tracker, progress, evaluate).run()
        best = store.best(1)
        return best[0] if best else None
    finally:
        if store is not None:
            store.close()


def _progress(cfg: DictConfig) -> Progress:
    try:
        return Progress(**cfg.progress)
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None


def prepared_evaluator(cfg: DictConfig) -> Callable[[str, DictConfig], Any]:
    """``evaluate_candidate``, after building the space and reward once: a bad config stops the search with one
    line before anything is stored. Imports torch, so only once the config is good."""
    from blockqnn.evaluate import evaluate_candidate, prepare

    prepare(cfg)
    return evaluate_candidate


def try_recipe_on(executor: Any, cfg: DictConfig) -> None:
    """One batch of the smallest block, trained by the executor where candidates train (a Ray worker's GPU, a
    local worker): a recipe or data that fails there stops the search before its history exists."""
    from blockqnn.evaluate import try_recipe

    for _ in executor.map(try_recipe, [(0, "")], cfg):
        pass


def check_one_device(cfg: DictConfig) -> None:
    """A search trains each candidate on one device: candidates, not gradients, are what it spreads out."""
    if str(cfg.trainer.devices) != "1":
        raise UserError(
            f"a search trains each candidate on one device (trainer.devices=1, got {cfg.trainer.devices}): spread "
            "candidates over GPUs with executor.workers or executor=ray; DDP is for python -m blockqnn.train"
        )


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
                  for row in store.candidates() if row["status"] != "ok"]
    if not errors:
        return "the search sampled no candidate"
    kinds = Counter(re.sub(r"\d+", "#", e) for e in errors)
    kind, count = kinds.most_common(1)[0]
    example = next(e for e in errors if re.sub(r"\d+", "#", e) == kind)
    return f"every candidate failed ({len(errors)}); the most common error ({count} of {len(errors)}): {example}"


@hydra_app("search")
def main(cfg: DictConfig) -> None:
    hydra = HydraConfig.get()
    run_dir = Path(cfg.resume or hydra.runtime.output_dir)
    group = Path(hydra.sweep.dir).name if hydra.mode == RunMode.MULTIRUN else None
    overridden = overridden_keys(list(hydra.overrides.task))
    signal.signal(signal.SIGTERM, _interrupt)  # docker stop, a pre-empted job: end like Ctrl-C, cleanly
    try:
        best = search(cfg, run_dir, group, overridden=overridden)
    except KeyboardInterrupt:
        print(f"interrupted; continue with: python -m blockqnn.search resume={run_dir}", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    print(summary(best, run_dir), flush=True)
    if best is None:
        fail(all_failed(run_dir))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()

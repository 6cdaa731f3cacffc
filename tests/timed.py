"""A candidate evaluator that takes time, for the asynchronous loop's tests: it sleeps 5-40 ms (drawn from the
architecture, so the same block always takes the same time; ``BLOCKQNN_TEST_SLOWDOWN`` multiplies it), logs each
evaluation it starts to the file named by ``BLOCKQNN_TEST_EVALUATIONS`` (one line per evaluation, appended
atomically, from any worker process), then scores the block from the table space. It imports no torch (a worker
process starts in a second, not twenty, on a busy machine). ``python -m tests.timed RUN_DIR OVERRIDES...`` runs a
search with it; ``python -m tests.timed --curves RUN_DIR OVERRIDES...`` one with ``CurveEvaluator`` (learning
curves, stopping at rungs)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from functools import cache
from pathlib import Path

from hydra.utils import instantiate

from blockqnn.candidate import Result, Status
from blockqnn.config import config_key

LOG_ENV = "BLOCKQNN_TEST_EVALUATIONS"
SLOWDOWN_ENV = "BLOCKQNN_TEST_SLOWDOWN"  # a factor on every evaluation's sleep (default 1)
NODE_ENV = "BLOCKQNN_TEST_NODE"  # where an evaluation ran, logged beside it (a Ray node's name)


def seconds(arch: str) -> float:
    return 0.005 + 0.035 * (int(hashlib.sha256(arch.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF)


@cache
def _space(key: str):
    return instantiate(json.loads(key))


def timed_evaluate(arch: str, cfg) -> Result:
    if os.environ.get(LOG_ENV):
        fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{arch}\t{os.environ.get(NODE_ENV, '')}\n".encode())
        finally:
            os.close(fd)
    time.sleep(seconds(arch) * float(os.environ.get(SLOWDOWN_ENV, 1)))
    accuracy = float(_space(config_key(cfg.space)).lookup(arch))
    return Result(Status.OK, accuracy, accuracy, wall_time=seconds(arch))


class CurveEvaluator:
    """A stand-in that trains by the table: ``epochs`` epochs whose validation accuracy rises to the block's table
    accuracy (a per-block shape drawn from the architecture), stopped at a rung below its cutoff as
    ``blockqnn.fit.RungStop`` would. What the loop's stopping needs, in milliseconds and without torch."""

    def __init__(self, cfg) -> None:
        self.space, self.epochs = instantiate(cfg.space), int(cfg.trainer.max_epochs)

    def curve(self, arch: str) -> list[float]:
        final = float(self.space.lookup(arch))
        speed = 0.5 + int(hashlib.sha256(arch.encode()).hexdigest()[8:16], 16) / 0xFFFFFFFF
        rising = [round(final * (1 - 0.5 ** (speed * e)) / (1 - 0.5 ** (speed * self.epochs)), 6)
                  for e in range(1, self.epochs)]
        return [*rising, final]  # the table's own accuracy at the full budget

    def __call__(self, job) -> Result:
        curve = self.curve(job.arch)
        for epoch, cutoff in sorted((job.cutoffs or {}).items()):
            if curve[epoch - 1] < cutoff:
                curve = curve[:epoch]
                break
        stopped = len(curve) < self.epochs
        return Result(Status.STOPPED if stopped else Status.OK, curve[-1], curve[-1], epochs=len(curve),
                      wall_time=0.001 * len(curve), curve=curve)


def evaluations(log: Path, node: str | None = None, since: int = 0) -> list[str]:
    """The blocks evaluated so far, in order (``node``: those on that node only; ``since``: from that many
    evaluations on)."""
    lines = [line.split("\t") for line in (log.read_text().splitlines() if log.exists() else [])]
    return [arch for arch, where in lines[since:] if node is None or where == node]


if __name__ == "__main__":
    from blockqnn.config import compose
    from blockqnn.search import search
    from tests.helpers import scored_by
    from tests.timed import CurveEvaluator, timed_evaluate  # by their module's name: a Ray worker imports them

    if sys.argv[1] == "--curves":  # the CurveEvaluator
        run_dir, *overrides = sys.argv[2:]
        cfg = compose("search", overrides)
        search(scored_by(cfg, CurveEvaluator), Path(run_dir))
    else:
        run_dir, *overrides = sys.argv[1:]
        search(scored_by(compose("search", overrides), timed_evaluate), Path(run_dir))

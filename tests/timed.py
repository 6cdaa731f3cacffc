"""A candidate evaluator that takes time, for the asynchronous loop's tests: it sleeps 5-40 ms (drawn from the
architecture, so the same block always takes the same time), logs each evaluation it starts to the file named by
``BLOCKQNN_TEST_EVALUATIONS`` (one line per evaluation, appended atomically, from any worker process), then scores
the block from the table space. It imports no torch (a worker process starts in a second, not twenty, on a busy
machine). ``python -m tests.timed RUN_DIR OVERRIDES...`` runs a search with it."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from hydra.utils import instantiate

from blockqnn.config import config_key

LOG_ENV = "BLOCKQNN_TEST_EVALUATIONS"


def seconds(arch: str) -> float:
    return 0.005 + 0.035 * (int(hashlib.sha256(arch.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF)


@dataclass
class TableResult:
    """The fields of ``blockqnn.evaluate.Result`` a table space fills."""

    status: str
    accuracy: float
    reward: float
    wall_time: float


@cache
def _space(key: str):
    return instantiate(json.loads(key))


def timed_evaluate(arch: str, cfg) -> TableResult:
    if os.environ.get(LOG_ENV):
        fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, (arch + "\n").encode())
        finally:
            os.close(fd)
    time.sleep(seconds(arch))
    accuracy = float(_space(config_key(cfg.space)).lookup(arch))
    return TableResult("ok", accuracy, accuracy, seconds(arch))


def evaluations(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


if __name__ == "__main__":
    from blockqnn.config import compose
    from blockqnn.search import search

    run_dir, *overrides = sys.argv[1:]
    search(compose("search", overrides), Path(run_dir), evaluate=timed_evaluate)

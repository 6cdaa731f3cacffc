"""A candidate's plain data, no torch: what a worker is asked (``Job``), what it earned (``Result``) and the
candidate as the search loop carries it from sampling to the history (``Candidate``), with the one set of status
words (``Status``). They cross from the search process to wherever candidates train and back: a search whose
candidates train in workers never imports torch itself."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """A candidate's status, stored as its text (a ``StrEnum`` equals its word: histories written before read as
    they were)."""

    RUNNING = "running"  # sampled and sent to a worker, no result yet (asynchronous searches)
    OK = "ok"  # trained for the whole recipe and scored
    STOPPED = "stopped"  # stopped at a rung (blockqnn.stopping), scored there
    FAILED = "failed"  # its error says why; the agent learns ``failed_reward``


def candidate_seed(seed: int, block_hash: str) -> int:
    """The seed a candidate trains with: the same in every process for the same run seed and block (unlike
    Python's ``hash``), so that a block trained again (a resumed search) trains the same."""
    return int(hashlib.sha256(f"{seed}/{block_hash}".encode()).hexdigest()[:8], 16)


@dataclass(frozen=True)
class Job:
    """What a worker needs to evaluate one candidate, computed once by the search: the block's code as sampled, its
    canonical hash, the seed its training draws from and the rung cut-offs (epoch -> the accuracy it must reach
    there to go on; None: no stopping)."""

    arch: str
    hash: str
    seed: int
    cutoffs: Mapping[int, float] | None = None


@dataclass
class Result:
    """What a candidate earned; plain data (``dataclasses.asdict``) for the store, the agent and the logs.

    accuracy is the validation accuracy (a fraction) after the last epoch trained; flops are forward FLOPs per
    image; epochs counts the epochs completed and curve holds the validation accuracy after each of them (None
    where the recipe did not validate); gpu_memory is the most GPU memory its training allocated, in MiB (None on
    a CPU); fields not reached before a failure stay None.
    """

    status: Status
    accuracy: float | None = None
    reward: float | None = None
    flops: float | None = None
    params: int | None = None
    density: float | None = None
    epochs: int = 0
    wall_time: float = 0.0
    error: str | None = None
    curve: list[float | None] | None = None
    gpu_memory: float | None = None

    @classmethod
    def of(cls, returned: Any) -> Result:
        """What an evaluator returned, as a Result: a Result as it is; a dataclass with some of its fields (a
        surrogate's or a test's stand-in result, which imports nothing of blockqnn) completed by the defaults."""
        if isinstance(returned, cls) and isinstance(returned.status, Status):
            return returned
        return cls(**dataclasses.asdict(returned) | {"status": Status(returned.status)})


@dataclass(kw_only=True)
class Candidate:
    """One sampled block as the search loop knows it, built once when the block is sampled and carried to the
    history (``blockqnn.store`` maps it onto its columns and back). Its ``result`` is None while it runs.

    ``(iteration, position)`` is where the agent sampled it (asynchronous searches: ``divmod`` of its sampling
    order by B); ``hash`` is the block's canonical hash, computed with ``arch`` from one parse; ``cached``: its result
    is a copy of the first evaluation of the same block (``copy_of``), or will be once that one finishes. The times
    are ``time.time()`` seconds; the events number the asynchronous loop's changes to the agent
    (``blockqnn.search.asynchronous``).
    """

    iteration: int
    position: int
    arch: str
    hash: str
    epsilon: float
    cached: bool = False
    result: Result | None = None
    dispatched_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    sampled_event: int | None = None
    incorporated_event: int | None = None

    @property
    def status(self) -> Status:
        return Status.RUNNING if self.result is None else self.result.status

    def finish(self, result: Result) -> Candidate:
        """This candidate with the result its own training earned, which ran for ``result.wall_time`` until now."""
        self.result, self.finished_at = result, time.time()
        self.started_at = self.finished_at - result.wall_time
        return self

    def copy_of(self, first: Candidate) -> Candidate:
        """This candidate recorded with the result of ``first``, the first evaluation of the same block: nothing
        trained, so no training time; its own sampling (where, epsilon, events) stays."""
        self.cached, self.result = True, dataclasses.replace(first.result, wall_time=0.0)
        self.started_at = self.finished_at = time.time()
        return self

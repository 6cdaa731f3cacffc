"""A candidate's plain data, no torch: what a worker is asked (``Job``) and what it earned (``Result``), with the
one set of status words (``Status``). They cross from the search process to wherever candidates train and back:
a search whose candidates train in workers never imports torch itself."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


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

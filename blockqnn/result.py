"""What a candidate earned (``Result``): plain data that crosses from where candidates train to the search process,
which records it. No torch here: a search whose candidates train in workers never imports torch itself."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Result:
    """What a candidate earned; plain data (``dataclasses.asdict``) for the store, the agent and the logs.

    accuracy is the validation accuracy (a fraction) after the last epoch trained; flops are forward FLOPs per
    image; epochs counts the epochs completed and curve holds the validation accuracy after each of them (None
    where the recipe did not validate); gpu_memory is the most GPU memory its training allocated, in MiB (None on
    a CPU); fields not reached before a failure stay None.
    """

    status: str  # "ok" | "stopped" (at a rung, blockqnn.stopping) | "failed"
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

"""Where candidates are evaluated: in this process, in long-lived local worker processes, or on a Ray cluster.

Every executor offers the search loop ``submit(fn, key, arch, cfg)`` (run ``fn(arch, cfg)`` when a worker is
free), ``next_finished()`` (wait for any submitted candidate; its ``(key, result)``), ``capacity`` (how many
candidates run at once) and ``pending`` (submitted, not yet returned). The asynchronous loop keeps ``capacity``
candidates in flight with these; ``map(fn, items, cfg)`` runs a batch of ``(key, arch)`` through them and yields
``(key, result)`` in finishing order (the synchronous loop). A candidate whose process dies (killed, out of host
memory) comes back as a failed result instead of stopping the search.

The paper's distributed framework maps onto these: the *master* is the search loop with the agent, the
*controller* is the executor handing blocks out, the *compute nodes* are the executor's workers (GPUs of this
machine for ``local``, of a whole cluster for ``ray``).

This module imports neither torch nor ray at load: worker processes set ``CUDA_VISIBLE_DEVICES`` before the
first ``import torch`` of the evaluator.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from blockqnn.errors import UserError

Evaluator = Callable[[str, Any], Any]
# What stops a search (Ctrl-C, docker stop): the search process handles them; its workers never see them.
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
Item = tuple[int, str]


def failed_result(error: str) -> Any:
    """A failed ``Result`` for a candidate the executor itself lost (worker died, task could not run)."""
    from blockqnn.evaluate import Result

    return Result(status="failed", error=error)


def call(fn: Evaluator, arch: str, cfg: Any) -> Any:
    """``fn(arch, cfg)``, with an escaping exception turned into a failed result (evaluators should not raise).

    Bad input (``UserError``, e.g. data missing on this node) is no candidate's fault and would fail every one of
    them: it is passed on to stop the search with one line."""
    try:
        return fn(arch, cfg)
    except UserError:
        raise
    except Exception as e:  # one candidate must never stop the search
        return failed_result(f"{type(e).__name__}: {e}")




class Batches:
    """``map`` on top of ``submit`` / ``next_finished``: the synchronous loop's batch of candidates."""

    def map(self, fn: Evaluator, items: Iterable[Item], cfg: Any) -> Iterator[tuple[int, Any]]:
        count = 0
        for key, arch in items:
            self.submit(fn, key, arch, cfg)
            count += 1
        for _ in range(count):
            yield self.next_finished()




def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"

"""What the search loops ask of an executor, and what every executor shares.

An executor is told once what to run (``serve(factory)``: a picklable ``factory(budget)`` that builds the evaluator;
each worker builds it once, when it starts, with the ``blockqnn.threads.ThreadBudget`` the executor grants it, and
keeps it, with its data on the device, for every candidate), then offers
``submit(key, job)`` (evaluate the candidate a ``blockqnn.candidate.Job`` describes when a worker is free),
``next_finished()`` (wait for any submitted candidate; its ``(key, result)``), ``capacity`` (how many candidates run
at once) and ``pending`` (submitted, not yet returned). The asynchronous loop keeps ``capacity`` candidates in
flight with these; ``map(items)`` runs a batch of ``(key, job)`` through them and yields ``(key, result)`` in
finishing order (the synchronous loop). A candidate whose process dies (killed, out of host memory) comes back as
a failed result instead of stopping the search.

The paper's distributed framework maps onto these: the *master* is the search loop with the agent, the *controller*
is the executor handing blocks out, the *compute nodes* are the executor's workers (GPUs of this machine for
``local``, of a whole cluster for ``ray``).

This package imports neither torch nor ray at load: worker processes set ``CUDA_VISIBLE_DEVICES`` before the first
``import torch`` of the evaluator.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from blockqnn.candidate import Job, Result, Status
from blockqnn.errors import UserError
from blockqnn.threads import ThreadBudget

Evaluator = Callable[[Job], Result]  # evaluator(job) -> what the candidate earned
EvaluatorFactory = Callable[[ThreadBudget], Evaluator]  # picklable: sent to each worker once, called with its budget
# What stops a search (Ctrl-C, docker stop): the search process handles them; its workers never see them.
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
Item = tuple[Any, Job]  # (the caller's key, the candidate)


class Executor(Protocol):
    """Where candidates are evaluated (the module docstring); a context manager that owns its workers."""

    @property
    def capacity(self) -> int: ...

    @property
    def pending(self) -> int: ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...

    def serve(self, factory: EvaluatorFactory) -> None:
        """Build the evaluator where candidates run (bad input there, ``UserError``, is raised here)."""

    def submit(self, key: Any, job: Job) -> None: ...

    def next_finished(self) -> tuple[Any, Result]: ...

    def map(self, items: Iterable[Item]) -> Iterator[tuple[Any, Result]]: ...


class Bound:
    """An evaluator function of ``(arch, cfg)`` with its config: stand-ins in tests and benchmarks, and the plain
    functions of ``blockqnn.evaluate``, served like the candidate evaluator (``serve(bound(fn, cfg))``)."""

    def __init__(self, fn: Callable[[str, Any], Any], cfg: Any) -> None:
        self.fn, self.cfg = fn, cfg

    def __call__(self, job: Job) -> Any:
        return self.fn(job.arch, self.cfg)


def bound(fn: Callable[[str, Any], Any], cfg: Any) -> EvaluatorFactory:
    """A factory for ``Bound(fn, cfg)``; picklable when ``fn`` is a module-level function."""
    return _Factory(Bound, fn, cfg)


class _Factory:
    """``cls(*args)`` on call: a picklable factory without lambdas, for evaluators that size no threads of their own
    (stand-ins): the worker's budget is not passed on."""

    def __init__(self, cls: Callable[..., Evaluator], *args: Any) -> None:
        self.cls, self.args = cls, args

    def __call__(self, budget: ThreadBudget | None = None) -> Evaluator:
        return self.cls(*self.args)


def factory(cls: Callable[..., Evaluator], *args: Any) -> EvaluatorFactory:
    """A picklable factory that builds ``cls(*args)`` in the worker (the worker's thread budget unused)."""
    return _Factory(cls, *args)


def failed_result(error: str) -> Result:
    """A failed ``Result`` for a candidate the executor itself lost (worker died, task could not run)."""
    return Result(status=Status.FAILED, error=error)


class TimeLimit:
    """How long a candidate may run (``executor.candidate_timeout``) before it is given up: recorded failed ("timed
    out after N s") and its worker killed and replaced, so that a hang (a deadlocked data loader, a stuck collective,
    a frozen node) never stalls the search.

    ``timeout``: seconds, None (no limit) or ``auto``: ``multiple`` x the slowest candidate finished so far (by its
    own ``wall_time``; failures left out), never less than ``floor`` seconds, which is the whole limit until the
    first candidate has finished. A real hang is caught after at most that, and a legitimately slow candidate, up
    to ``multiple`` times the slowest seen, is not (training times of a space's blocks spread widely:
    docs/scaling.md#synchronous-or-asynchronous-searchmode)."""

    def __init__(self, timeout: float | str | None, multiple: float, floor: float) -> None:
        self.timeout, self.multiple, self.floor = timeout, float(multiple), float(floor)
        self.slowest = 0.0

    def seconds(self) -> float | None:
        """The limit now (None: none)."""
        if self.timeout is None:
            return None
        if self.timeout == "auto":
            return max(self.floor, self.multiple * self.slowest)
        return float(self.timeout)

    def observe(self, result: Any) -> None:
        """A finished candidate: its time raises an ``auto`` limit."""
        wall_time = getattr(result, "wall_time", None)
        if getattr(result, "status", None) != Status.FAILED and isinstance(wall_time, int | float):
            self.slowest = max(self.slowest, float(wall_time))

    def left(self, since: Iterable[float]) -> float | None:
        """Seconds until the first of candidates started at (monotonic) ``since`` runs out (0 if one has); None
        when nothing can time out."""
        limit, starts = self.seconds(), list(since)
        if limit is None or not starts:
            return None
        return max(0.0, min(starts) + limit - time.monotonic())

    def expired(self, since: float) -> bool:
        limit = self.seconds()
        return limit is not None and time.monotonic() - since >= limit

    def given_up(self, since: float) -> Any:
        """The failed result of a candidate started at ``since`` and given up now."""
        result = failed_result(f"{TIMED_OUT} {self.seconds():.0f} s")
        result.wall_time = time.monotonic() - since
        return result


TIMED_OUT = "timed out after"  # how a given-up candidate's error starts (progress line, report)


def call(evaluator: Evaluator, job: Job) -> Result:
    """``evaluator(job)``, with an escaping exception turned into a failed result (evaluators should not
    raise). Bad input (``UserError``, e.g. data missing on this node) is no candidate's fault and would fail every
    one of them: it is passed on to stop the search with one line."""
    try:
        return evaluator(job)
    except UserError:
        raise
    except Exception as e:  # one candidate must never stop the search
        return failed_result(f"{type(e).__name__}: {e}")


class Batches:
    """``map`` on top of ``submit`` / ``next_finished``: the synchronous loop's batch of candidates."""

    def map(self, items: Iterable[Item]) -> Iterator[tuple[Any, Result]]:
        count = 0
        for key, job in items:
            self.submit(key, job)
            count += 1
        for _ in range(count):
            yield self.next_finished()


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"

"""Candidates on a Ray cluster: one task each, retried when its worker dies."""

from __future__ import annotations

import time
from typing import Any

from blockqnn.candidate import Job
from blockqnn.errors import UserError
from blockqnn.executors.base import (
    Batches,
    Evaluator,
    EvaluatorFactory,
    TimeLimit,
    call,
    failed_result,
    first_line,
)
from blockqnn.schema import AUTO, COUNT, declared, member, setting
from blockqnn.threads import NO_BUDGET, ThreadBudget


@member
class RayInitSettings:
    """``ray.init``'s options for a Ray instance the search starts (``address: null``)."""

    num_cpus: int | None = setting(**COUNT)
    num_gpus: int | None = setting(**COUNT)
    include_dashboard: bool = setting()
    log_to_driver: bool = setting()


@member
class RaySettings:
    """``executor=ray`` (conf/executor/ray.yaml), and ``RayExecutor``'s arguments."""

    address: str | None = setting()
    num_gpus: float = setting(ge=0)
    num_cpus: float = setting(ge=0)
    max_retries: int = setting(**COUNT)
    init: RayInitSettings | None = setting()
    candidate_timeout: float | str | None = setting(gt=0, pattern=AUTO)
    timeout_multiple: float = setting(gt=0)
    timeout_floor: float = setting(gt=0)


@declared("executor", RaySettings)
class RayExecutor(Batches):
    """Each candidate is one Ray task with ``num_gpus`` (fractions share a GPU) and ``num_cpus``.

    ``address``: null joins the cluster ``ray start`` runs on this machine, else starts a local Ray instance
    (``init`` holds its ``ray.init`` options); ``auto`` joins the cluster this machine belongs to; or a
    ``ray://`` address. Ray retries a candidate whose worker or node died ``max_retries`` times (on another
    node where one is left); after that it is recorded failed. Ray's worker processes are reused: each builds the
    evaluator once (its data on the device) and keeps it for the search's later candidates. Its thread budget is
    Ray's: a task's worker is set up for its ``num_cpus``. A task running past ``candidate_timeout``
    (``TimeLimit``) is cancelled, its worker process killed (Ray starts another), and recorded failed. Ray runs
    tasks in the order they were submitted as slots free up, so a task's clock starts once fewer than ``capacity``
    tasks submitted before it are still unfinished: not while it waits for a free slot (a synchronous batch is
    submitted whole).
    """

    def __init__(
        self,
        address: str | None = None,
        num_cpus: float = 1,
        num_gpus: float = 0,
        max_retries: int = 2,
        init: dict[str, Any] | None = None,
        candidate_timeout: float | str | None = None,
        timeout_multiple: float = 10.0,
        timeout_floor: float = 1800.0,
    ) -> None:
        self.address, self.num_cpus, self.num_gpus, self.max_retries = address, num_cpus, num_gpus, max_retries
        self.init = {k: v for k, v in dict(init or {}).items() if v is not None}
        self.limit = TimeLimit(candidate_timeout, timeout_multiple, timeout_floor)
        self._started = False

    def __enter__(self) -> RayExecutor:
        import ray

        if not ray.is_initialized():
            try:
                ray.init(address=self.address, **self.init)
            except (ConnectionError, ValueError) as e:  # no cluster there; ``init`` options for a running one
                raise UserError(f"executor.address={self.address}: {e}") from None
            self._started = True
        options = dict(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=self.max_retries)
        self._task = ray.remote(**options)(_evaluate)
        self._probe = ray.remote(**options)(_built)
        # Ray object ref -> (key, when it could start: None while capacity tasks submitted before it are unfinished)
        self._pending: dict[Any, tuple[Any, float | None]] = {}
        self._factory: Any = None
        return self

    @property
    def capacity(self) -> int:
        """Candidates the cluster runs at once: its GPUs (or CPUs) divided by one candidate's share."""
        import ray

        resources = ray.cluster_resources()
        share, kind = (self.num_gpus, "GPU") if self.num_gpus else (self.num_cpus, "CPU")
        return max(1, int(resources.get(kind, 0) / share)) if share else 1

    @property
    def pending(self) -> int:
        return len(self._pending)

    def serve(self, factory: EvaluatorFactory) -> None:
        """The factory goes to the object store once; each Ray worker process builds its evaluator at its first
        candidate and keeps it. One worker builds it now, so that bad input there stops the search at once."""
        import ray

        self._factory = ray.put(_Tagged(factory, NO_BUDGET))
        self._get(self._probe.remote(self._factory))

    def submit(self, key: Any, job: Job) -> None:
        self._pending[self._task.remote(self._factory, job)] = (key, None)

    def _start_clocks(self) -> list[float]:
        """The first ``capacity`` unfinished tasks in submission order run now: their clocks start if they had not;
        the start times of all running ones."""
        running = list(self._pending)[:self.capacity] if self.limit.seconds() is not None else []
        for ref in running:
            key, since = self._pending[ref]
            if since is None:
                self._pending[ref] = (key, time.monotonic())
        return [self._pending[ref][1] for ref in running]

    def next_finished(self) -> tuple[Any, Any]:
        """The first task to finish, or the first past its time limit (cancelled, its worker process killed)."""
        import ray
        from ray.exceptions import RayError

        while True:
            left = self.limit.left(self._start_clocks())
            done, _ = ray.wait(list(self._pending), num_returns=1, timeout=left)
            if done:
                break
            expired = [ref for ref, (_, since) in self._pending.items()
                       if since is not None and self.limit.expired(since)]
            if expired:
                return self._give_up(expired[0])
        key, _ = self._pending.pop(done[0])
        try:
            result = self._get(done[0])
        except RayError as e:
            return key, failed_result(f"lost after {self.max_retries} retries: {first_line(e)}")
        self.limit.observe(result)
        return key, result

    def _give_up(self, ref: Any) -> tuple[Any, Any]:
        """Cancel a task past its time limit, killing the worker process that runs it (Ray starts another)."""
        import ray

        ray.cancel(ref, force=True)
        key, since = self._pending.pop(ref)
        return key, self.limit.given_up(since)

    @staticmethod
    def _get(ref: Any) -> Any:
        """``ray.get``, with bad input raised in a task (``UserError``) raised as itself."""
        import ray
        from ray.exceptions import RayError

        try:
            return ray.get(ref)
        except RayError as e:
            if isinstance(getattr(e, "cause", None), UserError):
                raise e.cause from None
            raise

    def __exit__(self, *exc: object) -> None:
        import ray

        if self._started:
            ray.shutdown()
            self._started = False


class _Tagged:
    """A factory and the budget it builds with, with an identity that survives pickling: a Ray worker process keeps
    one evaluator per search."""

    def __init__(self, factory: EvaluatorFactory, budget: ThreadBudget) -> None:
        import uuid

        self.factory, self.budget, self.tag = factory, budget, uuid.uuid4().hex


# The evaluator a Ray worker process built, by its search's tag: a task is a plain function, so what the process keeps
# between its tasks (the local executor's worker keeps it in ``_serve``) lives here.
_EVALUATORS: dict[str, Evaluator] = {}


def _evaluator(tagged: _Tagged) -> Evaluator:
    if tagged.tag not in _EVALUATORS:
        _EVALUATORS.clear()  # a process serves one search at a time
        _EVALUATORS[tagged.tag] = tagged.factory(tagged.budget)
    return _EVALUATORS[tagged.tag]


def _built(tagged: _Tagged) -> None:
    _evaluator(tagged)


def _evaluate(tagged: _Tagged, job: Job) -> Any:
    return call(_evaluator(tagged), job)

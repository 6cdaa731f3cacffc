"""Candidates on this machine: in the search process, or in long-lived worker processes (one per GPU or core)."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from typing import Any

from blockqnn.candidate import Job
from blockqnn.executors.base import (
    STOP_SIGNALS,
    Batches,
    Evaluator,
    EvaluatorFactory,
    TimeLimit,
    call,
    failed_result,
)
from blockqnn.executors.lifetime import die_with, private, release
from blockqnn.schema import AUTO, declared, member, setting
from blockqnn.threads import NO_BUDGET, ThreadBudget, cpu_threads, cpu_workers


def visible_gpus() -> list[str]:
    """GPU ids this process may use (``CUDA_VISIBLE_DEVICES`` if set), found without initialising CUDA."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]



@member
class LocalSettings:
    """``executor=local`` (conf/executor/local.yaml), and ``LocalExecutor``'s arguments."""

    workers: int | str = setting(ge=0, pattern=AUTO)  # 0: in the search process
    threads: int | str = setting(ge=1, pattern=AUTO)
    flops_per_thread: float = setting(ge=0)
    workers_per_gpu: int = setting(ge=1)
    candidate_timeout: float | str | None = setting(gt=0, pattern=AUTO)
    timeout_multiple: float = setting(gt=0)
    timeout_floor: float = setting(gt=0)


@declared("executor", LocalSettings, member="local")
class LocalExecutor(Batches):
    """Candidates on this machine: one at a time in this process, or long-lived worker processes.

    ``workers``: ``auto`` is ``workers_per_gpu`` workers per visible GPU when that makes more than one; on a machine
    without GPUs, as many CPU workers as the usable cores hold at ``threads`` each (``auto``: one thread, what a
    small candidate trains fastest on); in-process (0) when that is one. A number forces that many workers (GPU
    i % count each, or CPU workers). Several workers per GPU pack small candidates onto a big GPU. ``threads``: the
    torch threads a worker's candidates may use (``auto``: the cores this process may use divided among the
    workers, ``blockqnn.threads``); ``flops_per_thread``: a candidate gets one thread per that many forward FLOPs
    per image, within that budget (0: always the whole budget).
    Workers pay imports, CUDA start-up and data loading once, then serve candidates until the search ends; a worker
    whose candidate runs past ``candidate_timeout`` (``TimeLimit``) is killed and started again, and the candidate
    recorded failed. In-process candidates (0 workers) have no time limit: nothing could stop one but the search.
    """

    def __init__(self, *, workers: int | str, threads: int | str, workers_per_gpu: int, flops_per_thread: float,
                 candidate_timeout: float | str | None, timeout_multiple: float, timeout_floor: float) -> None:
        self.workers, self.threads, self.workers_per_gpu = workers, threads, workers_per_gpu
        self.flops_per_thread = float(flops_per_thread)
        self.limit = TimeLimit(candidate_timeout, timeout_multiple, timeout_floor)
        self.budget = NO_BUDGET  # each worker's, set when entered
        self._pool: list[_Worker] = []
        self._queue: deque[tuple[Any, Job]] = deque()  # (key, job) waiting for a worker
        self._busy: dict[_Worker, Any] = {}
        self._finished: deque[tuple[Any, Any]] = deque()
        self._evaluator: Evaluator | None = None  # in-process

    def __enter__(self) -> LocalExecutor:
        gpus = visible_gpus()
        count = self._auto_workers(gpus) if self.workers == "auto" else self.workers
        threads = cpu_threads(count) if self.threads == "auto" else int(self.threads)
        self.budget = ThreadBudget(threads, self.flops_per_thread)
        method = start_method(gpus)
        self._pool = [_Worker(i, _worker_env(i, gpus, threads), self.budget, method) for i in range(count)]
        return self

    def _auto_workers(self, gpus: list[str]) -> int:
        """``workers=auto``: see the class docstring. The search process itself needs a few percent of one core
        (experiments/bench_search.py), so it is given none of its own."""
        per_worker = 1 if self.threads == "auto" else int(self.threads)
        slots = len(gpus) * self.workers_per_gpu if gpus else cpu_workers(per_worker)
        return slots if slots > 1 else 0

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        """Workers finish their candidate and stop; when the search stops on an error or a signal, at once (what
        they were training is not in the history as finished, and runs again on resume)."""
        for worker in self._pool:
            if exc_type is None:
                worker.stop()
            else:
                worker.kill()
        self._pool, self._busy = [], {}
        self._queue.clear()
        self._finished.clear()

    @property
    def capacity(self) -> int:
        return max(1, len(self._pool))

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._busy) + len(self._finished)

    def serve(self, factory: EvaluatorFactory) -> None:
        """Every worker builds its evaluator now, side by side (imports, data, the recipe's trial), with its thread
        budget; in-process, this process does. A worker that cannot (bad input) stops the search here."""
        if not self._pool:
            self._evaluator = factory(self.budget)
            return
        job = pickle.dumps(factory)
        for worker in self._pool:
            worker.send_factory(job)
        for worker in self._pool:
            worker.ready()

    def submit(self, key: Any, job: Job) -> None:
        self._queue.append((key, job))
        self._feed()

    def next_finished(self) -> tuple[Any, Any]:
        if not self._pool:
            key, job = self._queue.popleft()
            return key, call(self._evaluator, job)
        while not self._finished:
            self._collect()
        return self._finished.popleft()

    def _feed(self) -> None:
        for worker in self._pool:
            if not self._queue:
                return
            if worker not in self._busy:
                key, job = self._queue.popleft()
                self._busy[worker] = key
                worker.submit(key, job)

    def _collect(self) -> None:
        """Wait for a result, a dead worker or the first candidate past its time limit."""
        busy = list(self._busy)
        ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy],
                     timeout=self.limit.left(w.since for w in busy))
        for worker in busy:
            if worker.conn in ready or worker.process.sentinel in ready:
                key, result = worker.receive(self._busy.pop(worker))
                self.limit.observe(result)
                self._finished.append((key, result))
            elif self.limit.expired(worker.since):
                self._finished.append((self._busy.pop(worker), self.limit.given_up(worker.since)))
                worker.replace()
        self._feed()


def start_method(gpus: list[str]) -> str:
    """How workers start. CPU workers on Linux fork from the search process, which has imported torch and Lightning
    already (checking the config): a worker is ready in about a second instead of importing them again (7 s here,
    bench_workers.py). GPU workers spawn (CUDA does not survive a fork), as do workers elsewhere (macOS: fork is
    unsafe with its system libraries) and a worker started again mid-search, when W&B's threads run in this process.
    """
    return "fork" if not gpus and sys.platform == "linux" else "spawn"


def _worker_env(index: int, gpus: list[str], threads: int) -> dict[str, str]:
    if gpus:
        return {"CUDA_VISIBLE_DEVICES": gpus[index % len(gpus)]}
    # torch takes its default thread count from OMP_NUM_THREADS at import: workers must not oversubscribe cores.
    return {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


class _Worker:
    """One spawned process serving candidates over a pipe with the evaluator it built from its factory and budget."""

    def __init__(self, index: int, env: dict[str, str], budget: ThreadBudget, method: str = "spawn") -> None:
        self.index, self.env, self.budget = index, env, budget
        self._start(method)

    def _start(self, method: str = "spawn") -> None:
        context = mp.get_context(method)
        self.conn, child = context.Pipe()
        private(self.conn.fileno())  # the search's end: no worker forked later keeps it
        self.process = context.Process(
            target=_serve, args=(child, self.env, self.budget, os.getpid()), name=f"blockqnn-worker-{self.index}",
            daemon=True,
        )
        # Started with Ctrl-C and SIGTERM blocked, the child inherits the mask from its first instruction: a signal
        # sent to the process group while it is still starting (importing torch) cannot print its traceback.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        child.close()

    def send_factory(self, job: bytes) -> None:
        self._factory = job
        self.conn.send(job)

    def ready(self) -> None:
        """Wait until the evaluator is built; what stopped it (bad input, a dead process) is raised here."""
        try:
            error = self.conn.recv()
        except (EOFError, OSError):
            self.process.join()
            raise RuntimeError(f"worker process died while starting (exit code {self.process.exitcode})") from None
        if error is not None:
            raise error

    def submit(self, key: Any, job: Job) -> None:
        if not self.process.is_alive():
            self._restart()
        self.since = time.monotonic()
        self.conn.send((key, job))

    def receive(self, position: int) -> tuple[int, Any]:
        """The result for ``position``, or a failed one when the process died before sending it."""
        try:
            position, result = self.conn.recv()
        except (EOFError, OSError):
            self.process.join()
            error = f"worker process died (exit code {self.process.exitcode})"
            self._restart()
            return position, failed_result(error)
        if isinstance(result, BaseException):
            raise result
        return position, result

    def replace(self) -> None:
        """A new process in place of this one, which is killed: it hangs (or is stopped) past its time limit."""
        self.process.kill()
        self._restart()

    def _restart(self) -> None:
        """A new process in place of a dead one, with its evaluator built again."""
        self._close()
        self.process.join()
        self._start()
        if getattr(self, "_factory", None) is not None:
            self.send_factory(self._factory)
            self.ready()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(timeout=30)
        self.kill()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self._close()

    def _close(self) -> None:
        release(self.conn.fileno())
        self.conn.close()


def _serve(conn: Connection, env: dict[str, str], budget: ThreadBudget, search: int) -> None:
    """A worker's life: set its device, build the evaluator from the factory it is sent and its ``budget`` of
    threads, then evaluate candidates until told to stop, or until the search (pid ``search``) is gone. Ctrl-C (sent
    to the whole process group by a terminal) and SIGTERM are blocked: the search process decides, and stops its
    workers. A search that dies without stopping them (SIGKILL, out of memory) takes them along
    (``blockqnn.executors.lifetime``): the kernel kills them on Linux, and elsewhere their pipe ends (a forked worker
    keeps no other end of it)."""
    die_with(search)
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    os.environ.update(env)
    evaluator = None
    while (message := _next(conn)) is not None:
        if isinstance(message, bytes):  # a factory: build the evaluator, then say ready (or why not)
            try:
                evaluator = pickle.loads(message)(budget)
                conn.send(None)
            except Exception as e:  # bad input, raised again in the search process
                conn.send(e)
            continue
        key, job = message
        try:
            result = call(evaluator, job)
        except Exception as e:  # bad input, raised again in the search process
            result = e
        conn.send((key, result))


def _next(conn: Connection) -> Any:
    """The next message from the search; None (stop) when the search is gone."""
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None



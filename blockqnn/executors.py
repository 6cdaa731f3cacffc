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

import contextlib
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import subprocess
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

from blockqnn.errors import UserError
from blockqnn.threads import cpu_threads, policy_env

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


# ---- local ----------------------------------------------------------------------------------------------------
class Batches:
    """``map`` on top of ``submit`` / ``next_finished``: the synchronous loop's batch of candidates."""

    def map(self, fn: Evaluator, items: Iterable[Item], cfg: Any) -> Iterator[tuple[int, Any]]:
        count = 0
        for key, arch in items:
            self.submit(fn, key, arch, cfg)
            count += 1
        for _ in range(count):
            yield self.next_finished()


class LocalExecutor(Batches):
    """Candidates on this machine: one at a time in this process, or long-lived worker processes.

    ``workers``: ``auto`` is ``workers_per_gpu`` workers per visible GPU when that makes more than one, else
    in-process (0); a number forces that many workers (GPU i % count each, or CPU workers). Several workers per GPU
    pack small candidates onto a big GPU. ``threads``: the torch threads a worker's candidates may use (``auto``: the
    cores this process may use divided among the workers, ``blockqnn.threads``); ``flops_per_thread``: a candidate
    gets one thread per that many forward FLOPs per image, within that budget (0: always the whole budget).
    Workers pay imports, CUDA start-up and data loading once, then serve candidates until the search ends.
    """

    def __init__(self, workers: int | str = "auto", threads: int | str = "auto", workers_per_gpu: int = 1,
                 flops_per_thread: float = 0.0) -> None:
        if workers != "auto" and (not isinstance(workers, int) or workers < 0):
            raise ValueError(f"executor.workers must be auto or a number >= 0, got {workers!r}")
        if not isinstance(workers_per_gpu, int) or workers_per_gpu < 1:
            raise ValueError(f"executor.workers_per_gpu must be a number >= 1, got {workers_per_gpu!r}")
        self.workers, self.threads, self.workers_per_gpu = workers, threads, workers_per_gpu
        self.flops_per_thread = float(flops_per_thread)
        self._environ: dict[str, str | None] = {}
        self._pool: list[_Worker] = []
        self._queue: deque[tuple[Any, str, bytes | tuple]] = deque()  # (key, arch, job) waiting for a worker
        self._busy: dict[_Worker, Any] = {}
        self._finished: deque[tuple[Any, Any]] = deque()
        self._job: tuple[Any, Any, bytes] | None = None

    def __enter__(self) -> LocalExecutor:
        gpus = visible_gpus()
        slots = len(gpus) * self.workers_per_gpu
        count = (slots if slots > 1 else 0) if self.workers == "auto" else self.workers
        threads = cpu_threads(count) if self.threads == "auto" else int(self.threads)
        policy = policy_env(threads, self.flops_per_thread)
        self._pool = [_Worker(i, _worker_env(i, gpus, threads) | policy) for i in range(count)]
        if not self._pool:  # candidates train in this process
            self._environ = {k: os.environ.get(k) for k in policy}
            os.environ.update(policy)
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        """Workers finish their candidate and stop; when the search stops on an error or a signal, at once (what
        they were training is not in the history as finished, and runs again on resume)."""
        for worker in self._pool:
            if exc_type is None:
                worker.stop()
            else:
                worker.kill()
        for key, value in self._environ.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._pool, self._busy, self._environ = [], {}, {}
        self._queue.clear()
        self._finished.clear()

    @property
    def capacity(self) -> int:
        return max(1, len(self._pool))

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._busy) + len(self._finished)

    def submit(self, fn: Evaluator, key: Any, arch: str, cfg: Any) -> None:
        if not self._pool:
            self._queue.append((key, arch, (fn, cfg)))
            return
        self._queue.append((key, arch, self._pickled(fn, cfg)))
        self._feed()

    def next_finished(self) -> tuple[Any, Any]:
        if not self._pool:
            key, arch, (fn, cfg) = self._queue.popleft()
            return key, call(fn, arch, cfg)
        while not self._finished:
            self._collect()
        return self._finished.popleft()

    def _pickled(self, fn: Evaluator, cfg: Any) -> bytes:
        """The job sent to workers, pickled once per (evaluator, config) rather than once per candidate."""
        if self._job is None or self._job[0] is not fn or self._job[1] is not cfg:
            self._job = (fn, cfg, pickle.dumps((fn, cfg)))
        return self._job[2]

    def _feed(self) -> None:
        for worker in self._pool:
            if not self._queue:
                return
            if worker not in self._busy:
                key, arch, job = self._queue.popleft()
                self._busy[worker] = key
                worker.submit(key, arch, job)

    def _collect(self) -> None:
        busy = list(self._busy)
        ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
        for worker in [w for w in busy if w.conn in ready or w.process.sentinel in ready]:
            self._finished.append(worker.receive(self._busy.pop(worker)))
        self._feed()


def _worker_env(index: int, gpus: list[str], threads: int) -> dict[str, str]:
    if gpus:
        return {"CUDA_VISIBLE_DEVICES": gpus[index % len(gpus)]}
    # torch takes its default thread count from OMP_NUM_THREADS at import: workers must not oversubscribe cores.
    return {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


class _Worker:
    """One spawned process serving candidates over a pipe; it keeps the last (fn, cfg) it was sent."""

    def __init__(self, index: int, env: dict[str, str]) -> None:
        self.index, self.env = index, env
        self._start()

    def _start(self) -> None:
        self.conn, child = mp.get_context("spawn").Pipe()
        self.process = mp.get_context("spawn").Process(
            target=_serve, args=(child, self.env), name=f"blockqnn-worker-{self.index}", daemon=True
        )
        # Started with Ctrl-C and SIGTERM blocked, the child inherits the mask from its first instruction: a signal
        # sent to the process group while it is still starting (importing torch) cannot print its traceback.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        child.close()
        self._job: bytes | None = None

    def submit(self, position: int, arch: str, job: bytes) -> None:
        if not self.process.is_alive():
            self._restart()
        self.conn.send((position, arch, None if job is self._job else job))
        self._job = job

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

    def _restart(self) -> None:
        self.conn.close()
        self.process.join()
        self._start()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(timeout=30)
        self.kill()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


def _serve(conn: Connection, env: dict[str, str]) -> None:
    """A worker's life: set its device, then evaluate candidates until told to stop. Ctrl-C (sent to the whole
    process group by a terminal) and SIGTERM are blocked: the search process decides, and stops its workers."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    os.environ.update(env)
    fn = cfg = None
    while (message := conn.recv()) is not None:
        position, arch, job = message
        if job is not None:
            fn, cfg = pickle.loads(job)
        try:
            result = call(fn, arch, cfg)
        except Exception as e:  # bad input, raised again in the search process
            result = e
        conn.send((position, result))


# ---- ray ------------------------------------------------------------------------------------------------------
class RayExecutor(Batches):
    """Each candidate is one Ray task with ``num_gpus`` (fractions share a GPU) and ``num_cpus``.

    ``address``: null starts a local Ray instance (``init`` holds its ``ray.init`` options), ``auto`` joins the
    cluster this machine belongs to, or a ``ray://`` address. Ray retries a candidate whose worker died
    ``max_retries`` times; after that it is recorded failed. Ray's worker processes are reused, so evaluators'
    per-process caches (data on the device) survive between candidates.
    """

    def __init__(
        self,
        address: str | None = None,
        num_cpus: float = 1,
        num_gpus: float = 0,
        max_retries: int = 2,
        init: dict[str, Any] | None = None,
    ) -> None:
        self.address, self.num_cpus, self.num_gpus, self.max_retries = address, num_cpus, num_gpus, max_retries
        self.init = {k: v for k, v in dict(init or {}).items() if v is not None}
        self._started = False

    def __enter__(self) -> RayExecutor:
        import ray

        if not ray.is_initialized():
            try:
                ray.init(address=self.address, **self.init)
            except ConnectionError as e:
                raise UserError(f"executor.address={self.address}: {e}") from None
            self._started = True
        self._task = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=self.max_retries)(call)
        self._pending: dict[Any, Any] = {}
        self._refs: tuple[Any, Any, Any, Any] | None = None
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

    def submit(self, fn: Evaluator, key: Any, arch: str, cfg: Any) -> None:
        import ray

        if self._refs is None or self._refs[0] is not fn or self._refs[1] is not cfg:
            self._refs = (fn, cfg, ray.put(fn), ray.put(cfg))  # shipped to the object store once, not per task
        self._pending[self._task.remote(self._refs[2], arch, self._refs[3])] = key

    def next_finished(self) -> tuple[Any, Any]:
        import ray
        from ray.exceptions import RayError

        (ref,), _ = ray.wait(list(self._pending), num_returns=1)
        key = self._pending.pop(ref)
        try:
            return key, ray.get(ref)
        except RayError as e:
            if isinstance(getattr(e, "cause", None), UserError):
                raise e.cause from None
            return key, failed_result(f"lost after {self.max_retries} retries: {_first_line(e)}")

    def __exit__(self, *exc: object) -> None:
        import ray

        if self._started:
            ray.shutdown()
            self._started = False


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"

"""Candidates on a Ray cluster: one task each, retried when its worker dies."""

from __future__ import annotations

from typing import Any

from blockqnn.errors import UserError
from blockqnn.executors.base import Batches, Evaluator, _first_line, call, failed_result


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



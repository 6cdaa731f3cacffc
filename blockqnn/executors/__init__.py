"""Where candidates are evaluated: the protocol (``base``), this machine's worker processes (``local``) and a
Ray cluster (``ray``). Importing this package imports neither torch nor ray."""

from blockqnn.executors.base import Batches, call
from blockqnn.executors.local import LocalExecutor
from blockqnn.executors.ray import RayExecutor

__all__ = ["Batches", "LocalExecutor", "RayExecutor", "call"]

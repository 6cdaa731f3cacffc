"""Shared fixtures: composed configs, a small generated NAS-Bench-201 table, one torch thread per test.

W&B never touches the network in tests: runs are forced offline here, before anything imports wandb, and stage
their artifacts in a temporary folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.pop("WANDB_API_KEY", None)
# Where W&B stages the artifacts an offline run logs until `wandb sync` (by default under the user's home).
os.environ.setdefault("WANDB_DATA_DIR", tempfile.mkdtemp(prefix="blockqnn-tests-wandb-"))

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Two OpenMP threads per pytest worker oversubscribe a 2-core machine and can slow training tenfold."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def compose():
    """``compose(*overrides)``: the search config ``python -m blockqnn.search OVERRIDES`` would run with."""
    from blockqnn.config import compose as compose_config

    return lambda *overrides, config_name="search": compose_config(config_name, overrides)


@pytest.fixture(scope="session")
def nb201_table(tmp_path_factory) -> Path:
    """A structured synthetic NAS-Bench-201 table (all 15,625 cells, accuracy in percent)."""
    from blockqnn.spaces.nasbench201 import write_synthetic_table

    return write_synthetic_table(tmp_path_factory.mktemp("nb201") / "table.csv", seed=0)


@pytest.fixture
def table_search(nb201_table):
    """Overrides for a fast, deterministic search on the table space (no training, no tracking, silent), in the
    test's process (so its stand-in evaluators need not be picklable) unless a test names its workers."""
    return [
        "space=nasbench201", f"space.table={nb201_table}", "reward=accuracy", "logger=none", "progress.mode=off",
        "agent.batch_size=8", "agent.schedule_scale=0.05", "agent.alpha=0.2", "executor.workers=0",
    ]

"""Histories written before the classes moved into packages (``blockqnn.agent.QLearningAgent``, ...) still resume and
report: their stored targets are read as the classes' current ones."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest

from blockqnn.config import MOVED_TARGETS
from blockqnn.report import report
from blockqnn.search import search
from blockqnn.store import DB_NAME, Store
from tests.helpers import dying_after, history, scored_by


def written_before_the_move(run_dir) -> None:
    """Rewrite a history's stored config with the targets the old layout wrote."""
    with closing(sqlite3.connect(run_dir / DB_NAME)) as conn, conn:
        (text,) = conn.execute("SELECT value FROM run WHERE key = 'config'").fetchone()
        for old, new in MOVED_TARGETS.items():
            text = text.replace(f"_target_: {new}\n", f"_target_: {old}\n")
        conn.execute("UPDATE run SET value = ? WHERE key = 'config'", (text,))


@pytest.mark.parametrize("agent", ["qlearning", "evolution"])
def test_a_history_with_the_old_targets_resumes_and_reports(compose, table_search, tmp_path, agent):
    reference, run = tmp_path / "reference", tmp_path / "old"
    if agent == "evolution":  # the table search's Q-learning settings, as a budget
        table_search = [o for o in table_search if not o.startswith(("agent.schedule_scale", "agent.alpha"))]
        table_search.append("agent.budget=48")
    search(compose(*table_search, f"agent={agent}"), reference)
    with pytest.raises(KeyboardInterrupt):
        search(scored_by(compose(*table_search, f"agent={agent}"), dying_after(9)), run)
    written_before_the_move(run)
    with closing(sqlite3.connect(run / DB_NAME)) as conn:
        stored = conn.execute("SELECT value FROM run WHERE key = 'config'").fetchone()[0]
    assert "blockqnn.nasbench201.NASBench201Space" in stored  # really the old layout's names
    with Store.open(run, readonly=True) as store:
        assert store.config().space._target_ == "blockqnn.spaces.NASBench201Space"
    search(compose(*table_search, f"agent={agent}", f"resume={run}"), run)
    assert history(run) == history(reference)
    assert (run / "summary.md") in report(run, top_k=1, wandb=False)

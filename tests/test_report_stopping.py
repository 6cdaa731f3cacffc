"""The report of a search that stopped weak candidates at rungs: learning curves with the stops marked, and what
the stops saved in summary.md, every expected number worked out here from the stored rows."""

import pytest
from PIL import Image

from blockqnn.report import analysis, plots
from blockqnn.report import summary as report
from blockqnn.stopping import STOPPED
from tests.helpers import make_run

MAX_EPOCHS, RUNGS = 9, (1, 3)


@pytest.fixture
def drawn(monkeypatch):
    """The figures the report saves, by path, kept open for the test to read."""
    figures, save = {}, plots.save_figure

    def keep(fig, path):
        figures[path] = fig
        return save(fig, path)

    monkeypatch.setattr(plots, "save_figure", keep)
    return figures


def stopping_run(tmp_path, **kwargs):
    return make_run(tmp_path / "run", max_epochs=MAX_EPOCHS, rungs=RUNGS, **kwargs)


def test_curves_show_every_trained_candidate_and_mark_where_each_stopped(tmp_path, drawn):
    history = analysis.load_history(stopping_run(tmp_path), 3)
    trained = [r for r in history.trained() if r["curve"]]
    stopped = [r for r in trained if r["status"] == STOPPED]
    assert {r["epochs"] for r in stopped} == set(RUNGS)  # the run stops at each rung
    assert any(r["cached"] and r["curve"] for r in history.rows) and any(not r["curve"] for r in history.trained())
    path = plots.plot_curves(history, tmp_path / "curves.png")
    ax = drawn[path].axes[0]
    lines = [line for line in ax.lines if line.get_linestyle() != "None"]
    assert sorted(tuple(line.get_ydata()) for line in lines) == sorted(tuple(r["curve"]) for r in trained)
    [marks] = [line for line in ax.lines if line.get_marker() == "x"]
    assert list(marks.get_xdata()) == [r["epochs"] for r in stopped]
    assert list(marks.get_ydata()) == [r["curve"][-1] for r in stopped]
    bold = [line for line in lines if line.get_linewidth() > 1.5]
    assert sorted(tuple(line.get_ydata()) for line in bold) == sorted(tuple(r["curve"]) for r in history.best)
    assert all(r["epochs"] == MAX_EPOCHS for r in history.best)
    legend = {text.get_text() for text in ax.get_legend().get_texts()}
    assert legend == {"full budget", "stopped at a rung", "where each stopped", "top-3"}
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", "validation accuracy") and ax.get_title()
    with Image.open(path) as im:
        assert im.size[0] > 200 and im.size[1] > 200


def test_the_report_links_the_curves_only_when_the_history_has_some(tmp_path):
    with_curves, without = stopping_run(tmp_path / "a"), make_run(tmp_path / "b" / "run")
    assert with_curves / "curves.png" in report.report(with_curves, top_k=2, wandb=False)
    assert "![learning curves](curves.png)" in (with_curves / "summary.md").read_text()
    written = report.report(without, top_k=2, wandb=False)
    assert not (without / "curves.png").exists() and without / "curves.png" not in written
    assert "curves.png" not in (without / "summary.md").read_text()
    assert {"reward.png", "best_so_far.png", "timeline.png", "top1.png", "summary.md"} <= {p.name for p in written}

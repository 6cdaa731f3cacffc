"""The report of a search that stopped weak candidates at rungs: learning curves with the stops marked, and what
the stops saved in summary.md, every expected number worked out here from the stored rows."""

from collections import Counter
from pathlib import Path

import pytest
from matplotlib.colors import to_hex
from PIL import Image

from blockqnn.candidate import Status
from blockqnn.report import analysis, plots
from blockqnn.report import summary as report
from tests.helpers import make_run

STOPPED = Status.STOPPED  # the status a candidate stopped at a rung has

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


def test_stopping_effect_adds_up_from_the_rows(tmp_path):
    rows = analysis.load_history(stopping_run(tmp_path), 1).rows
    effect = analysis.stopping_effect(rows, MAX_EPOCHS)
    trained = [r for r in rows if not r["cached"]]
    stopped = [r for r in trained if r["status"] == STOPPED]
    failed = [r for r in trained if r["status"] == "failed"]
    assert effect.full == sum(r["status"] == "ok" for r in trained) > 0
    assert effect.stopped == Counter(r["epochs"] for r in stopped) and list(effect.stopped) == sorted(RUNGS)
    assert effect.epochs == sum(r["epochs"] for r in trained)
    assert effect.saved == sum(MAX_EPOCHS - r["epochs"] for r in stopped) > 0
    # what every non-failed candidate would have cost at the full budget, the failures' epochs on top
    assert effect.epochs + effect.saved == MAX_EPOCHS * (effect.full + len(stopped)) + sum(r["epochs"] for r in failed)


def test_summary_says_what_stopping_saved(tmp_path):
    run = stopping_run(tmp_path)
    report.report(run, top_k=2, wandb=False)
    effect = analysis.stopping_effect(analysis.load_history(run, 1).rows, MAX_EPOCHS)
    section = (run / "summary.md").read_text().split("## Stopping weak candidates")[1].split("\n## ")[0]
    share = effect.saved / (effect.epochs + effect.saved)
    assert "- stopping: ASHA (rungs=[1, 3], max_epochs=9)" in section
    assert f"- trained to the full budget ({MAX_EPOCHS} epochs): {effect.full} candidates" in section
    at_rungs = ", ".join(f"{n} at epoch {epoch}" for epoch, n in effect.stopped.items())
    assert f"- stopped at a rung: {sum(effect.stopped.values())} candidates ({at_rungs})" in section
    assert f"- candidate-epochs trained: {effect.epochs}; saved: {effect.saved} ({share:.0%} of" in section


def test_summary_of_a_run_set_to_stop_that_stopped_none_says_so(tmp_path):
    run = make_run(tmp_path / "run", max_epochs=MAX_EPOCHS)  # stopping=asha stored, no rung reached
    report.report(run, top_k=1, wandb=False)
    summary = (run / "summary.md").read_text()
    assert "- stopped at a rung: 0 candidates\n" in summary and "saved: 0 (0% of" in summary


def test_summary_of_a_run_without_stopping_has_no_stopping_section(tmp_path):
    run = make_run(tmp_path / "run")
    report.report(run, top_k=1, wandb=False)
    assert "Stopping" not in (run / "summary.md").read_text()
    assert analysis.load_history(run, 1).config.stopping._target_.endswith(".NoStopping")  # as histories read


def test_the_reward_curve_and_the_timeline_show_stopped_candidates_as_stopped_not_failed(tmp_path, drawn):
    history = analysis.load_history(stopping_run(tmp_path), 3)
    status = Counter(r["status"] for r in history.rows if not r["cached"])
    assert status[STOPPED] and status["failed"]
    ax = drawn[plots.plot_rewards(history, tmp_path / "reward.png")].axes[0]
    marks = {c.get_label(): len(c.get_offsets()) for c in ax.collections if not c.get_label().startswith("_")}
    assert marks["failed"] == sum(r["status"] == "failed" for r in history.rows)
    assert marks["stopped at a rung (its reward there)"] == status[STOPPED]
    for i, row in enumerate(history.rows):  # two workers' worth of timings
        row["started_at"], row["finished_at"] = i // 2, i // 2 + 1
    ax = drawn[plots.plot_timeline(history, tmp_path / "timeline.png")].axes[0]
    drawn_colors = Counter(to_hex(c) for bars in ax.collections for c in bars.get_facecolors())
    laned = Counter(row["status"] for lane in plots.worker_lanes(history.rows) for _, _, row in lane)
    assert drawn_colors[plots.LANE_COLORS[STOPPED]] == laned[STOPPED] > 0
    assert drawn_colors["#de2d26"] == laned["failed"]


def test_busy_hours_count_overlapping_candidates_once_and_skip_a_resumed_runs_gap():
    from omegaconf import OmegaConf

    def out(start, end, dispatched=None):
        return {"dispatched_at": dispatched, "started_at": start, "finished_at": end}

    rows = [out(0, 1800, dispatched=0), out(900, 3600), out(1000, 2000),  # two workers: 1 h busy
            out(90_000, 91_800, dispatched=3000),  # cut off by a kill, trained again when resumed the next day
            out(None, None)]  # sent out when the search was killed: never finished
    history = analysis.History(Path("run"), OmegaConf.create({}), rows, [], None)
    assert analysis.busy_hours(history) == 1.5

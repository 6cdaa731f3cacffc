"""The command-line face (``blockqnn.cli``): bad input as one ``error:`` line and exit status 1, a bug with its
traceback; the help pages."""

from __future__ import annotations

import re

import pytest

from blockqnn.cli import describe, one_line_errors, user_errors
from blockqnn.codes import Block, NSCError
from tests.helpers import run_cli


def test_one_line_errors_for_bad_input(capsys):
    with pytest.raises(SystemExit) as exit_info, one_line_errors(full=False):
        Block.parse("[(1,9,0,0,0),(2,7,0,0,0)]")
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.startswith("error: layer 1") and err.count("\n") == 1
    with pytest.raises(NSCError), one_line_errors(full=True):
        Block.parse("(1,1)")
    with pytest.raises(ZeroDivisionError), one_line_errors(full=False):  # a bug keeps its traceback
        _ = 1 / 0
    assert describe(user_errors(FileNotFoundError(2, "No such file or directory", "/x.csv"))) == (
        "No such file or directory: /x.csv")


def test_missing_configs_are_one_clear_error(monkeypatch, tmp_path, capsys):
    """A package without its configs says how to get them instead of failing inside Hydra."""
    import blockqnn.config

    monkeypatch.setattr(blockqnn.config, "CONF_DIR", tmp_path / "conf")
    with pytest.raises(SystemExit) as exit_info, one_line_errors(full=False):
        blockqnn.config.compose("search")
    assert exit_info.value.code == 1 and "configs are missing" in capsys.readouterr().err


# ---- help pages ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_search_help_lists_the_presets_the_groups_a_user_picks_resume_and_the_docs():
    from blockqnn.config import CONF_DIR
    from blockqnn.help import one_line

    out = run_cli("--help")
    assert out.returncode == 0, out.stderr
    page = out.stdout
    assert "powered by Hydra" not in page and "agent_preset" not in page
    for preset in (CONF_DIR / "experiment").glob("*.yaml"):
        assert re.search(rf"^  {preset.stem} +{re.escape(one_line(preset.read_text()))}$", page, re.M), preset.stem
    datasets = sorted(f"{p.stem}*" if p.stem == "digits" else p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
    assert re.search(rf"^  dataset +{re.escape(', '.join(datasets))}$", page, re.M)  # every member, digits in use
    assert re.search(r"^  nasbench201 +Tune the small-budget Q-learning", page, re.M)  # hparams_search
    assert "resume=RUN_DIR" in page and "--cfg job" in page and "docs/" in page
    quickstart = run_cli("experiment=quickstart", "--help").stdout  # the page follows the command line
    assert re.search(r"^  stopping +asha\*, none$", quickstart, re.M)


@pytest.mark.slow
def test_train_and_report_help_say_what_they_do_how_to_resume_and_where_the_docs_are():
    train = run_cli("--help", module="train")
    assert train.returncode == 0, train.stderr
    assert re.search(r"^  trainer +early_stop, final\*, smoke$", train.stdout, re.M)
    assert "resume=RUN_DIR" in train.stdout and "docs/" in train.stdout and "--cfg job" in train.stdout
    report = run_cli("--help", module="report")
    assert report.returncode == 0 and "multirun" in report.stdout and "blockqnn.history" in report.stdout


def test_a_preset_is_listed_by_the_first_line_of_its_file(tmp_path, monkeypatch):
    import blockqnn.help

    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\n# My preset: details\nseed: 1\n")
    (tmp_path / "experiment" / "bare.yaml").write_text("seed: 2\n")
    monkeypatch.setattr(blockqnn.help, "CONF_DIR", tmp_path)
    assert blockqnn.help.presets("experiment").splitlines() == ["  bare", "  mine  My preset"]

"""The command-line face (``blockqnn.cli``): bad input as one ``error:`` line and exit status 1, a bug with its
traceback."""

from __future__ import annotations

import pytest

from blockqnn.cli import describe, one_line_errors, user_errors
from blockqnn.codes import Block, NSCError


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

"""Continuing a run folder (``resume=RUN_DIR``): an interrupted search ends with the history it would have had,
from any working folder and with the settings it was started with; a config that changes what the history means, or
a history another search wrote, is refused."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from blockqnn.errors import UserError
from blockqnn.resume import HISTORY_KEYS, check_same_history, command_line_keys
from blockqnn.search import search
from blockqnn.spaces.nasbench201 import NASBench201Space, write_synthetic_table
from blockqnn.store import DB_NAME, Store, StoreError
from tests.helpers import dying_after, folder_digest, history, scored_by


def test_interrupted_search_resumes_to_the_same_history(compose, table_search, tmp_path):
    """In-process kill at an arbitrary candidate (tests/test_search_command.py kills a real process)."""
    reference = tmp_path / "reference"
    search(compose(*table_search), reference)
    for stop_after in (5, 13):  # inside the first iteration, and inside a later one
        run = tmp_path / f"killed-{stop_after}"
        with pytest.raises(KeyboardInterrupt):
            search(scored_by(compose(*table_search), dying_after(stop_after)), run)
        assert 0 < len(history(run)[0]) < len(history(reference)[0])
        search(compose(*table_search, f"resume={run}"), run)
        assert history(run) == history(reference)


def test_a_run_resumes_from_another_working_folder(compose, table_search, nb201_table, tmp_path, monkeypatch):
    """Relative data and table paths are stored absolute: ``resume=`` works from anywhere."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    shutil.copy(nb201_table, tmp_path / "a" / "table.csv")
    monkeypatch.chdir(tmp_path / "a")
    args = [a for a in table_search if not a.startswith("space.table")] + ["space.table=table.csv"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    search(compose(*args), reference)
    with pytest.raises(KeyboardInterrupt):
        search(scored_by(compose(*args), dying_after(5)), run)
    monkeypatch.chdir(tmp_path / "b")
    overrides = ["logger=none", "progress.mode=off", f"resume={run}"]
    search(compose(*overrides), run, command_line=command_line_keys(overrides, HISTORY_KEYS))
    assert history(run) == history(reference)


def test_resume_with_a_moved_table_must_find_the_same_accuracies(compose, table_search, nb201_table, tmp_path):
    run = tmp_path / "run"
    search(compose(*table_search), run)
    before = folder_digest(run)
    moved = shutil.copy(nb201_table, tmp_path / "moved.csv")
    other = write_synthetic_table(tmp_path / "other.csv", seed=1)
    partial = tmp_path / "partial.csv"
    partial.write_text("".join(nb201_table.read_text().splitlines(True)[:2]))
    for table in (other, partial):  # other accuracies; stored candidates missing
        with pytest.raises(UserError, match="not the table the search started with"):
            search(compose(*table_search, f"space.table={table}", f"resume={run}"), run)
    assert folder_digest(run) == before
    search(compose(*table_search, f"space.table={moved}", f"resume={run}"), run)  # same table, new place: fine


def test_resume_alone_continues_a_run_started_with_other_settings(compose, table_search, tmp_path):
    """``resume=RUN_DIR`` needs none of the original overrides: unset sections come from the history."""
    reference, run = tmp_path / "reference", tmp_path / "run"
    search(compose(*table_search), reference)
    with pytest.raises(KeyboardInterrupt):
        search(scored_by(compose(*table_search), dying_after(5)), run)
    overrides = ["logger=none", "progress.mode=off", f"resume={run}"]
    assert command_line_keys(overrides, HISTORY_KEYS) == {"logger", "progress.mode", "resume"}
    search(compose(*overrides), run, command_line=command_line_keys(overrides, HISTORY_KEYS))
    assert history(run) == history(reference)
    with pytest.raises(UserError, match=r"agent\.alpha"):  # a key the command line does set must agree
        overrides = [*overrides, "agent.alpha=0.9"]
        search(compose(*overrides), run, command_line=command_line_keys(overrides, HISTORY_KEYS))


def test_resume_naming_one_leaf_keeps_the_rest_of_its_section(compose, table_search, tmp_path):
    """``resume=RUN trainer.accelerator=cpu`` changes where candidates train, not the stored recipe."""
    run = tmp_path / "run"
    search(compose(*table_search, "trainer.max_epochs=3", "agent.epsilon_override=1.0"), run)
    overrides = ["logger=none", "progress.mode=off", "trainer.accelerator=cpu", f"resume={run}"]
    search(compose(*overrides), run, command_line=command_line_keys(overrides, HISTORY_KEYS))
    with Store.open(run, readonly=True) as store:
        assert store.config().trainer.max_epochs == 3 and store.config().agent.epsilon_override == 1.0


def test_resume_refuses_a_config_that_changes_the_history(compose, table_search, tmp_path):
    search(compose(*table_search), tmp_path)
    before = folder_digest(tmp_path)
    for change, key in [("agent.alpha=0.3", "agent.alpha"), ("seed=1", "seed"), ("failed_reward=-1", "failed_reward"),
                        ("agent=random", "agent.epsilon_override")]:
        with pytest.raises(UserError, match=key.replace(".", r"\.")):
            search(compose(*table_search, change, f"resume={tmp_path}"), tmp_path)
    assert folder_digest(tmp_path) == before


def test_resume_allows_harmless_changes_and_trains_nothing_again(compose, table_search, tmp_path):
    search(compose(*table_search), tmp_path)
    rows, state = history(tmp_path)
    evaluated = []
    harmless = compose(*table_search, "executor.threads=1", "executor.workers=0", "progress.mode=log",
                       "output_root=elsewhere", "trainer.accelerator=cpu", "trainer.eval_batch_size=64",
                       f"resume={tmp_path}")
    search(scored_by(harmless, lambda arch, cfg: evaluated.append(arch)), tmp_path)
    assert evaluated == [] and history(tmp_path) == (rows, state)


def test_changed_keys_are_named():
    with pytest.raises(UserError, match=r"dataset\.val_size \(300 -> 200\)"):
        check_same_history({"dataset": {"val_size": 300, "source": {"root": "a"}}, "logger": {"project": "x"}},
                           {"dataset": {"val_size": 200, "source": {"root": "b"}}, "logger": {"project": "y"}})
    check_same_history({"dataset": {"source": {"root": "a"}}, "executor": {"workers": 1}},  # data moved: allowed
                       {"dataset": {"source": {"root": "b"}}, "executor": {"workers": 4}})


def test_a_setting_added_since_a_run_was_stored_changes_nothing_while_off():
    stored = {"dataset": {"source": {"root": "a"}}, "agent": {"model": {"proposals": 1}}}  # written before the
    check_same_history(stored, {"dataset": {"source": {"root": "a", "train_size": None}},  # two settings existed
                                "agent": {"model": {"proposals": 1, "exploit": False}}})
    with pytest.raises(UserError, match=r"dataset\.source\.train_size \(<unset> -> 10000\)"):
        check_same_history(stored, {**stored, "dataset": {"source": {"root": "a", "train_size": 10000}}})
    for on in (True, 0, ""):  # a switch turned on; zero and empty are values, not "off"
        with pytest.raises(UserError, match=rf"agent\.model\.exploit \(<unset> -> {on}\)"):
            check_same_history(stored, {**stored, "agent": {"model": {"proposals": 1, "exploit": on}}})


def test_resume_of_a_folder_written_by_another_search_is_refused(compose, table_search, nb201_table, tmp_path):
    search(compose(*table_search), tmp_path)
    other = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    accuracy = NASBench201Space(nb201_table).lookup(other)
    with sqlite3.connect(tmp_path / DB_NAME) as db:  # pretend the last iteration was never checkpointed...
        db.execute("DELETE FROM agent_checkpoints")
        db.execute("UPDATE candidates SET arch = ?, accuracy = ? WHERE iteration = 0 AND position = 0",
                   (other, accuracy))  # ...and its first block (true to the table) differs from the sample
    with pytest.raises(StoreError, match="does not match the agent's sample"):
        search(compose(*table_search, f"resume={tmp_path}"), tmp_path)


def test_a_resume_opens_the_history_once(compose, table_search, tmp_path, monkeypatch):
    """Hydra's run-folder resolvers only glance at the folder's files (resolved here as Hydra resolves them, several
    times); the search opens the history once and carries the config it read."""
    from omegaconf import OmegaConf

    search(compose(*table_search), tmp_path)
    opened, open_store = [], Store.open.__func__
    monkeypatch.setattr(Store, "open", classmethod(lambda cls, *a, **k: opened.append(a) or open_store(cls, *a, **k)))
    hydra = OmegaConf.create({"resume": str(tmp_path), "dir": "${blockqnn.search_dir:${resume},new}",
                              "record": "${blockqnn.search_hydra_subdir:${dir},stamp}"})
    for _ in range(3):
        assert OmegaConf.to_container(hydra, resolve=True)["record"] == ".hydra/resume-stamp"
    search(compose(*table_search, f"resume={tmp_path}"), tmp_path)
    assert opened == [(tmp_path,)]

"""``blockqnn.history``: runs, multiruns and lists of them as DataFrames, read-only, every schema version."""

import sqlite3
import subprocess
import sys
from contextlib import closing

import pandas as pd
import pytest

import blockqnn
from blockqnn.store import DB_NAME, Store, StoreError
from tests.helpers import REPO, cli_env, damage, folder_digest, make_run
from tests.test_old_histories import VERSIONS, candidates, old_history


def stored(run):
    with Store.open(run, readonly=True) as store:
        return store.candidates()


def sweep(folder, jobs):
    """A multirun folder as Hydra leaves it: numbered runs, each with the overrides it was started with."""
    for number, (agent, seed, overrides) in enumerate(jobs):
        run = make_run(folder / str(number), agent=agent, seed=seed, max_epochs=3, rungs=(1,))
        (run / ".hydra").mkdir()
        (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return folder


def test_a_run_is_one_row_per_candidate_in_sampling_order_with_typed_columns(tmp_path):
    run = make_run(tmp_path / "run")
    with Store.open(run) as store:  # a candidate still training, as an asynchronous search leaves it
        store.write([{"iteration": 9, "position": 0, "arch": "[(1,7,0,0,0)]", "status": "running",
                      "dispatched_at": 1764500000.5, "cached": 0}])
    frame = blockqnn.history(run)
    rows = stored(run)
    assert len(frame) == len(rows) + 1 and set(frame["run"]) == {str(run)}
    assert frame["arch"].tolist()[:-1] == [r["arch"] for r in rows]
    assert frame["reward"].iloc[:-1].fillna(-1).tolist() == pytest.approx([r["reward"] or -1 for r in rows])
    assert frame["status"].iloc[-1] == "running"
    assert frame["dispatched_at"].iloc[-1] == pd.Timestamp("2025-11-30 10:53:20.5", tz="UTC")
    assert frame["cached"].sum() == sum(r["cached"] for r in rows) > 0 and frame["cached"].dtype == "boolean"
    assert "curve" not in frame and frame["params"].dtype == "Int64"


def test_a_multirun_gets_each_runs_overrides_as_typed_columns_and_leaves_out_a_damaged_run(tmp_path):
    folder = sweep(tmp_path / "sweep", [("q-learning", 0, ["agent=qlearning", "seed=0"]),
                                        ("random", 1, ["agent=random", "seed=1"]),
                                        ("random", 2, ["agent=random", "seed=2"])])
    damage(folder / "2", "DELETE FROM run WHERE key = 'config'")
    with pytest.warns(UserWarning, match=r"left out: .*/2/history.sqlite .*\(no stored config\)"):
        frame = blockqnn.history(folder)
    assert frame.groupby(["agent", "seed"]).size().to_dict() == {("qlearning", 0): 24, ("random", 1): 24}
    assert frame["seed"].dtype == "int64"
    best = frame[~frame["cached"]].groupby("agent")["reward"].max()
    assert best["random"] == pytest.approx(max(r["reward"] or 0 for r in stored(folder / "1")))
    both = blockqnn.history([folder / "0", folder / "1"])
    assert both.drop(columns="run").equals(frame.drop(columns="run"))
    with pytest.raises(StoreError, match="no stored config"):
        blockqnn.history(folder / "2")


def test_curves_are_one_row_per_trained_candidate_and_epoch(tmp_path):
    run = make_run(tmp_path / "run", max_epochs=4, rungs=(1, 2))
    curves = blockqnn.history(run, curves=True)
    trained = [r for r in stored(run) if not r["cached"] and r["curve"]]
    assert len(curves) == sum(len(r["curve"]) for r in trained)
    first = curves[(curves.iteration == trained[0]["iteration"]) & (curves.position == trained[0]["position"])]
    assert first["epoch"].tolist() == list(range(1, len(trained[0]["curve"]) + 1))
    assert first["val_acc"].tolist() == pytest.approx(trained[0]["curve"])
    stopped = curves[curves.status == "stopped"].groupby(["iteration", "position"])["epoch"].max()
    assert set(stopped) == {1, 2}


@pytest.mark.parametrize("version", VERSIONS)
def test_histories_of_every_schema_version_read_and_keep_their_bytes(tmp_path, version):
    run = old_history(tmp_path / "run", version, VERSIONS[version])
    before = folder_digest(run)
    frame = blockqnn.history(run)
    assert frame["arch"].tolist() == [r["arch"] for r in candidates()]
    assert frame["status"].tolist() == ["ok", "failed", "ok", "ok", "ok", "ok"]
    assert frame["sampled_event"].isna().all() and blockqnn.history(run, curves=True).empty
    assert folder_digest(run) == before


def test_reading_neither_waits_for_nor_blocks_a_search_that_is_writing(tmp_path):
    run = make_run(tmp_path / "run")
    with closing(sqlite3.connect(run / DB_NAME, timeout=0)) as search:
        search.execute("BEGIN IMMEDIATE")  # the search in the middle of writing a candidate
        search.execute("INSERT INTO candidates (iteration, position, arch, status, cached) "
                       "VALUES (99, 0, 'x', 'ok', 0)")
        frame = blockqnn.history(run)  # the committed rows, without waiting for the writer
        search.commit()  # and the writer is not held up by the reader (timeout 0: any lock would fail here)
    assert len(frame) == len(stored(run)) - 1


def test_a_path_that_is_no_run_is_refused_in_one_line(tmp_path):
    with pytest.raises(StoreError, match="is not a search run"):
        blockqnn.history(tmp_path)
    with pytest.raises(StoreError, match="is not a folder"):
        blockqnn.history(tmp_path / "nothing")


def test_import_blockqnn_stays_light():
    code = "import sys, blockqnn; assert 'pandas' not in sys.modules and 'torch' not in sys.modules; " \
           "print(blockqnn.history.__module__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "blockqnn.frames"

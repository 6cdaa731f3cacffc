"""The progress line and W&B tracking, read back from offline runs with wandb's own record format."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from pathlib import Path

import pytest

from blockqnn.search import search
from blockqnn.store import Store
from blockqnn.tracking import Progress, WandbTracker, curve_name, wandb_mode
from tests.helpers import cli_env, read_wandb_file, read_wandb_run, run_cli

STATE = dict(iteration=1, iterations=4, epsilon=0.9, done=10, total=40, cached=2, failed=1, best=0.61234,
             in_flight=3, utilization=0.876)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_on_a_terminal():
    out = Terminal()
    progress = Progress(stream=out)
    progress.update(**STATE, new=10)
    progress.update(**STATE | {"done": 40, "iteration": 4}, new=30, final=True)
    first, second = out.getvalue().split("\r")[1:]
    assert first.startswith("iteration 2/4  epsilon 0.90  candidates 10/40 (cached 2, failed 1, in flight 3)  "
                            "best reward 0.6123  workers busy 88%")
    assert "elapsed 0:00:00" in first and "remaining" in first
    assert second.startswith("iteration 4/4") and second.endswith("\n") and first.count("\n") == 0


def test_progress_logs_plain_lines_when_not_a_terminal(caplog):
    out = io.StringIO()
    progress = Progress(every_s=3600, stream=out)
    with caplog.at_level(logging.INFO, logger="blockqnn.tracking"):
        for _ in range(5):
            progress.update(**STATE, new=1)
        progress.update(**STATE, final=True)
    assert out.getvalue() == ""
    assert len(caplog.records) == 1 and "candidates 10/40" in caplog.records[0].getMessage()


def test_progress_off_and_bad_mode(caplog):
    out = Terminal()
    with caplog.at_level(logging.INFO, logger="blockqnn.tracking"):
        Progress(mode="off", stream=out).update(**STATE, final=True)
    assert out.getvalue() == "" and not caplog.records
    with pytest.raises(ValueError, match="progress.mode"):
        Progress(mode="fancy")


def test_wandb_mode_follows_the_environment(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_mode(None) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_mode(None) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(None) == "disabled" and wandb_mode("offline") == "offline"


def test_search_is_tracked_offline_and_a_resume_continues_the_run(compose, table_search, tmp_path):
    args = [a for a in table_search if a != "logger=none"] + ["logger=wandb", "logger.table_every=2"]
    search(compose(*args), tmp_path, group="sweep-1")
    with Store.open(tmp_path, readonly=True) as store:
        rows, run_id, best = store.candidates(), store.get("wandb_run_id"), store.best(1)[0]
    [run] = read_wandb_run(tmp_path)
    assert run["id"] == run_id and run["group"] == "sweep-1"
    assert run["config"]["agent"]["batch_size"] == 8 and run["config"]["space"]["table"].endswith(".csv")
    logged = [h for h in run["history"] if "reward" in h]  # in finishing order, each as it finished
    assert [h["candidate"] for h in logged] == list(range(1, len(rows) + 1))
    keys = ("iteration", "position", "reward", "accuracy", "epsilon", "cached", "failed")
    assert sorted(tuple(h[k] for k in keys) for h in logged) == [
        (r["iteration"], r["position"], r["reward"], r["accuracy"], r["epsilon"], r["cached"], 0) for r in rows]
    assert logged[-1]["best_reward"] == best["reward"]
    assert run["summary"]["best_arch"] == best["arch"] and run["summary"]["best_reward"] == best["reward"]
    final_table = run["tables"][-1]
    assert [row[final_table["columns"].index("arch")] for row in final_table["data"]] == [r["arch"] for r in rows]
    assert len(run["tables"]) >= 2  # periodic tables too

    search(compose(*args, f"resume={tmp_path}"), tmp_path)  # a finished run: nothing new, same W&B run
    runs = read_wandb_run(tmp_path)
    assert len(runs) == 2 and {r["id"] for r in runs} == {run_id}


def artifacts(run_dir: Path) -> dict:
    """The artifacts the offline runs under ``run_dir`` logged: name -> {path in the artifact: staged file}."""
    found = {}
    for path in sorted((run_dir / "wandb").glob("offline-run-*/*.wandb")):
        for record in read_wandb_file(path):
            if record.WhichOneof("record_type") == "artifact":
                a = record.artifact
                found[a.name] = {"type": a.type, "metadata": json.loads(a.metadata or "{}"),
                                 "files": {c.path: Path(c.local_path) for c in a.manifest.contents}}
    return found


def test_a_search_logs_its_history_and_top_blocks_as_artifacts(compose, table_search, tmp_path):
    args = [a for a in table_search if a != "logger=none"] + ["logger=wandb", "logger.top_k=3"]
    search(compose(*args), tmp_path / "run")
    with Store.open(tmp_path / "run", readonly=True) as store:
        rows, run_id, best = store.candidates(), store.get("wandb_run_id"), store.best(3)
    found = artifacts(tmp_path / "run")
    assert set(found) == {f"history-{run_id}", f"top-blocks-{run_id}", f"run-{run_id}-candidates"}  # and the table
    history = found[f"history-{run_id}"]
    assert history["type"] == "history" and history["metadata"]["candidates"] == len(rows)
    with sqlite3.connect(history["files"]["history.sqlite"]) as db:  # the staged copy, what `wandb sync` uploads
        assert db.execute("SELECT arch FROM candidates ORDER BY iteration, position").fetchall() == [
            (r["arch"],) for r in rows]
    top = json.loads(found[f"top-blocks-{run_id}"]["files"]["top_blocks.json"].read_text())
    assert [(b["rank"], b["arch"], b["reward"]) for b in top] == [(i, r["arch"], r["reward"]) for i, r in
                                                                   enumerate(best, 1)]

    search(compose(*args, "logger.artifacts=false"), tmp_path / "quiet")
    assert [name for name in artifacts(tmp_path / "quiet") if not name.startswith("run-")] == []


@pytest.mark.slow
def test_a_search_shows_learning_curves_with_their_stops_and_draws_each_new_best_block(compose, tmp_path):
    """A real search that trains (digits, stops at epoch 1): the learning-curves chart holds every trained
    candidate's validation accuracy per epoch, a stopped one's line named where it stopped; the best block is
    drawn each time it changes."""
    cfg = compose("experiment=quickstart", "agent.batch_size=4", "agent.budget=8", "trainer.max_epochs=3",
                  "stopping=asha", "stopping.rungs=[1]", "executor.workers=0", "progress.mode=off",
                  "logger.table_every=1")
    search(cfg, tmp_path)
    with Store.open(tmp_path, readonly=True) as store:
        trained = [r for r in store.candidates() if not r["cached"]]
        best = store.best(1)[0]
    [run] = read_wandb_run(tmp_path)
    [curves] = [t for t in run["tables"][::-1] if t["columns"] == ["step", "lineKey", "lineVal"]][:1]
    lines: dict[str, list] = {}
    for epoch, key, value in curves["data"]:
        lines.setdefault(key, []).append((epoch, round(value, 6)))
    assert lines == {curve_name(r): [(e, round(v, 6)) for e, v in enumerate(r["curve"], start=1)] for r in trained}
    assert any(key.endswith("stopped at epoch 1") for key in lines), sorted(lines)  # some were stopped
    logged = [h for h in run["history"] if "reward" in h]
    rewards = [h["reward"] for h in logged if not h["cached"] and h.get("failed") == 0]
    improvements = sum(r > max(rewards[:i], default=-1) for i, r in enumerate(rewards))
    drawn = [h for h in logged if "best_block/path" in h]
    assert len(drawn) == improvements >= 1
    assert drawn[-1]["best_block/caption"].startswith(f"reward {best['reward']:.4f}")
    assert (run["folder"] / "files" / drawn[-1]["best_block/path"]).is_file()


def test_tracker_without_a_run_finishes_quietly(tmp_path):
    tracker = WandbTracker()
    with Store.create(tmp_path, {}) as store:
        tracker.finish(store)  # finish before start (a search that failed early)
        assert tracker.run is None and store.get("wandb_run_id") is None  # no run was created on the way
    assert not (tmp_path / "wandb").exists()


def test_a_tracking_failure_does_not_stop_the_search(compose, table_search, tmp_path, monkeypatch, caplog):
    def broken_log(self, metrics):
        raise OSError("No space left on device")

    args = [a for a in table_search if a != "logger=none"] + ["logger=wandb"]
    reference = tmp_path / "reference"
    search(compose(*table_search), reference)
    import wandb.sdk.wandb_run

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", broken_log)
    with caplog.at_level(logging.WARNING, logger="blockqnn.tracking"):
        search(compose(*args), tmp_path / "run")
    assert "W&B logging failed" in caplog.text
    with Store.open(reference, readonly=True) as ref, Store.open(tmp_path / "run", readonly=True) as run:
        assert [r["arch"] for r in run.candidates()] == [r["arch"] for r in ref.candidates()]


UNREACHABLE = {"WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "a" * 40}  # port 9: nothing listens


def online_but_unreachable() -> dict:
    env = cli_env(UNREACHABLE)
    env.pop("WANDB_MODE", None)
    return env


@pytest.mark.slow
def test_an_unreachable_wandb_server_is_one_warning_and_an_offline_run(table_search, tmp_path):
    args = [a for a in table_search if a != "logger=none"]
    done = run_cli(*args, "logger=wandb", "logger.mode=online", "logger.init_timeout=3", f"hydra.run.dir={tmp_path}",
                   env=online_but_unreachable())
    assert done.returncode == 0, done.stderr
    printed = done.stdout + done.stderr
    assert printed.count("W&B cannot be reached") == 1 and "wandb sync" in printed, printed
    with Store.open(tmp_path, readonly=True) as store:
        rows, run_id = store.candidates(), store.get("wandb_run_id")
    [run] = read_wandb_run(tmp_path)  # the offline run `wandb sync` uploads later, with every candidate in it
    assert run["id"] == run_id and len([h for h in run["history"] if "reward" in h]) == len(rows) > 0


@pytest.mark.slow
def test_a_training_with_an_unreachable_wandb_server_goes_on_offline(tmp_path):
    smoke = ["dataset=synthetic", "template=tiny", "trainer=smoke", "trainer.limit_train_batches=2", "onnx=null",
             "program=null", f"data_dir={tmp_path / 'data'}", "block=[[1,1,3,0,0],[2,5,0,0,1],[3,7,0,0,0]]"]
    out = tmp_path / "out"
    done = run_cli(*smoke, "logger=wandb", "logger.mode=online", "logger.init_timeout=3", f"hydra.run.dir={out}",
                   env=online_but_unreachable(), module="train")
    printed = done.stdout + done.stderr
    assert done.returncode == 0 and printed.count("W&B cannot be reached") == 1, printed[-3000:]
    [run] = read_wandb_run(out)
    assert run["id"] == (out / "wandb_run_id").read_text().strip() and (out / "result.json").is_file()

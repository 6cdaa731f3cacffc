"""Runs and sweeps as pandas DataFrames: ``blockqnn.history(path)``, the table to analyse a search with.

One row per candidate of a run folder, of every run of a multirun folder (a Hydra sweep), or of a list of either,
with the command-line overrides each run was started with as columns (``agent``, ``seed``, ``agent.alpha``, ...):
a sweep groups by what it swept. ``curves=True`` gives the learning curves instead, one row per trained candidate
and epoch (long form: ``groupby``, ``pivot``, seaborn). Every history is opened read-only (SQLite's ``mode=ro``,
``blockqnn.store``): reading a search that is still running neither blocks nor alters it, and histories of every
schema version this project wrote read, the columns they lack as missing values. docs/analysis.md shows the
comparisons the experiments make in a few lines each.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from blockqnn.errors import StoreError
from blockqnn.store import CANDIDATE_COLUMNS, Store, is_run

RUN = "run"  # the column naming each row's run folder
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"  # the overrides Hydra recorded when the run first started
TIMES = ("started_at", "finished_at", "dispatched_at")  # seconds since the epoch in the store; UTC datetimes here
INTEGERS = ("params", "epochs", "sampled_event", "incorporated_event")  # may be missing: pandas' nullable Int64
CANDIDATE = ("iteration", "position", "arch", "hash", "status")  # what names a candidate in the long curve table
CURVE = ("epoch", "val_acc")


def history(paths: str | Path | Sequence[str | Path], curves: bool = False) -> pd.DataFrame:
    """The candidates of the runs ``paths`` names (a run folder, a multirun folder, or a list of either), one row
    each in sampling order: ``run``, the run's overrides, then the stored columns (``arch``: the NSC code or the
    NAS-Bench-201 cell; ``status`` ok, failed, stopped or running; ``cached``: a repeat, not trained; times as UTC
    datetimes, ``wall_time`` in seconds). ``curves=True``: one row per trained candidate and epoch, its validation
    accuracy after that epoch (``epoch`` counted from 1). A run of a multirun that cannot be read is left out with
    a warning (one damaged seed should not hide what the others found); a run named directly raises its
    ``StoreError``."""
    frames = []
    for path in [paths] if isinstance(paths, str | Path) else paths:
        for run in run_folders(path):
            try:
                frames.append(run_frame(run, curves))
            except StoreError as error:
                if is_run(path):
                    raise
                warnings.warn(f"left out: {error}", stacklevel=2)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[RUN, *_columns(curves)])


def run_folders(path: str | Path) -> list[Path]:
    """The run folders ``path`` names: itself when it holds a history, else the runs of the multirun folder it is
    (numbered jobs in their order, then any others by name); refuses, in one line, a path that is neither."""
    path = Path(path)
    if is_run(path):
        return [path]
    runs = sorted((p for p in path.iterdir() if is_run(p)), key=_run_order) if path.is_dir() else []
    if not runs:
        Store.open(path, readonly=True)  # raises the store's own message: not a folder / not a run
    return runs


def overrides(run: Path) -> dict[str, Any]:
    """The command-line overrides a run was first started with (Hydra's ``.hydra/overrides.yaml``), typed as
    Hydra reads them (``seed=1`` an int); none for a run started outside the command line."""
    path = run / OVERRIDES_FILE
    if not path.is_file():
        return {}
    parsed = OverridesParser.create().parse_overrides(yaml.safe_load(path.read_text()) or [])
    return {o.key_or_group: o.value() for o in parsed if not o.is_delete()}


def run_frame(run: Path, curves: bool = False) -> pd.DataFrame:
    """One run's candidates (or, ``curves``, learning curves) as ``history`` gives them."""
    with Store.open(run, readonly=True) as store:
        rows = sorted(store.candidates() + store.running(), key=lambda r: (r["iteration"], r["position"]))
    settings = {RUN: str(run), **overrides(run)}
    if curves:
        rows = [{**{k: row[k] for k in CANDIDATE}, "epoch": epoch, "val_acc": accuracy}
                for row in rows if not row["cached"] for epoch, accuracy in enumerate(row["curve"] or [], start=1)]
    frame = pd.DataFrame(rows, columns=_columns(curves))
    if not curves:
        frame = frame.astype({"cached": "boolean", **dict.fromkeys(INTEGERS, "Int64")})
        for column in TIMES:
            frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
    for position, (key, value) in enumerate(settings.items()):
        frame.insert(position, key, [value] * len(frame))
    return frame


def _columns(curves: bool) -> list[str]:
    return [*CANDIDATE, *CURVE] if curves else [c for c in CANDIDATE_COLUMNS if c != "curve"]


def _run_order(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (sys.maxsize, path.name)

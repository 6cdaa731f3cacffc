"""A refused start leaves no folder it created: the run or sweep folder's parents (``runs/search/``,
``runs/multirun/``), the data folder a download would have filled (``data/``), a sweep folder holding nothing
but Hydra's ``multirun.yaml``, and in a run folder it was to resume, the ``.hydra`` folder and job log Hydra made
there (a resume reads the run only once the job starts: a damaged one is refused after Hydra has written).

Hydra creates the run (or sweep) folder with its parents before the job starts, and a dataset creates its folder
before it finds it cannot download; neither undoes it when the start is then refused. So ``FolderWatch``, a Hydra
callback (``hydra.callbacks`` in ``conf/search.yaml`` and ``conf/train.yaml``), notes before anything is written
which of those folders do not exist yet, and ``remove_new_empty_folders`` (called by ``blockqnn.cli`` when a start
ends in an ``error:`` line) removes those that still hold nothing. A folder that holds anything else (a history, a
download, the user's files) is never touched; the job's own folder is ``blockqnn.cli.discard_unused_output_dir``'s.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

SWEEP_RECORD = "multirun.yaml"  # what Hydra writes into a sweep folder before it launches a job

_new: list[Path] = []  # the topmost folders this start may create that did not exist when it began
_sweeps: list[Path] = []  # sweep folders this start created: their multirun.yaml alone goes too
_logs: list[Path] = []  # job logs this start creates in a run folder that exists: they go with a refusal


class FolderWatch(Callback):
    """Notes, before Hydra writes anything, the folders a start may create that do not exist yet."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _note(config, "hydra.run.dir")
        run = _resolved(config, "hydra.run.dir")
        if run is not None and run.is_dir():  # a resume: Hydra's record and log of it may be new there
            record, log = run / ".hydra", run / f"{config.hydra.job.name}.log"
            if not record.exists():
                _new.append(record)
            if not log.exists():
                _logs.append(log)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _note(config, "hydra.sweep.dir")
        sweep = _resolved(config, "hydra.sweep.dir")
        if sweep is not None and not sweep.exists():
            _sweeps.append(sweep)


def forget() -> None:
    """A new start: nothing noted yet (a process may run several, as the tests do)."""
    _new.clear()
    _sweeps.clear()
    _logs.clear()


def remove_new_empty_folders() -> None:
    """Remove what the refused start created and left empty: each noted folder that holds nothing but empty
    folders (and, in a sweep folder it created, Hydra's ``multirun.yaml``), and the job log it began in a run
    folder it was to resume."""
    for sweep in _sweeps:
        record = sweep / SWEEP_RECORD
        if record.is_file() and _empty(sweep, allowed={record}):
            record.unlink()
    for log in _logs:
        log.unlink(missing_ok=True)
    for folder in sorted(_new, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and _empty(folder):
            _remove_empty_tree(folder)
    forget()


def _note(config: DictConfig, *keys: str) -> None:
    for key in (*keys, "data_dir"):
        folder = _resolved(config, key)
        if folder is None or folder.exists():
            continue
        while not folder.parent.exists():
            folder = folder.parent
        _new.append(folder)


def _resolved(config: DictConfig, key: str) -> Path | None:
    """The folder ``key`` names, absolute; None when it cannot be resolved yet (the start then fails on it, before
    writing)."""
    with contextlib.suppress(Exception):  # a Hydra callback that raises only prints a warning: stay silent
        value = OmegaConf.select(config, key, throw_on_missing=True)
        return None if value is None else Path(str(value)).absolute()
    return None


def _empty(folder: Path, allowed: frozenset[Path] | set[Path] = frozenset()) -> bool:
    """Whether ``folder`` holds nothing but empty folders (and the files ``allowed``)."""
    return all(p in allowed or (p.is_dir() and _empty(p, allowed)) for p in folder.iterdir())


def _remove_empty_tree(folder: Path) -> None:
    for child in folder.iterdir():
        _remove_empty_tree(child)
    folder.rmdir()

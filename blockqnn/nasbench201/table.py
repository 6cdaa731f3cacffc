"""The converted table: per dataset, the 200-epoch test accuracy (what comparisons of search strategies select
on), the 12-epoch validation accuracy (the benchmark's own reward) and the 12-epoch training time (its simulated
cost), each the mean over the seeds the file holds, as the API's ``get_metrics(..., is_random=False)`` averages.

A value is the one after the last epoch (``'<set>@<epochs - 1>'``, as ``ResultsCount.get_eval(iepoch=None)``); a
training time is the sum of ``train_times`` over the epochs (``get_train``'s ``all_time``). Accuracies stay in
percent, as the files hold them; the space reads percent (``metric_unit: auto``).
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blockqnn.errors import TableError
from blockqnn.nasbench201.official import Results, read_benchmark


@dataclass(frozen=True)
class Column:
    """One CSV column: which schedule (hp), which training set (the file's dataset name) and which evaluation
    set's accuracy; ``eval_set=None`` is the training time."""

    name: str
    hp: str
    dataset: str
    eval_set: str | None


def _dataset_columns(prefix: str, tested: str, test_set: str, searched: str) -> tuple[Column, ...]:
    return (
        Column(f"{prefix}_test_acc", "200", tested, test_set),
        Column(f"{prefix}_val12_acc", "12", searched, "x-valid"),
        Column(f"{prefix}_train12_s", "12", searched, None),
    )


# CIFAR-10's test accuracy is of the net trained on train + valid ('cifar10', which has no validation set); its
# reward and cost are those of the net trained on train alone ('cifar10-valid'), as NAS-Bench-201's
# simulate_train_eval takes them. CIFAR-100 and ImageNet16-120 split their test set into x-valid and x-test.
COLUMNS = (
    *_dataset_columns("cifar10", "cifar10", "ori-test", "cifar10-valid"),
    *_dataset_columns("cifar100", "cifar100", "x-test", "cifar100"),
    *_dataset_columns("imagenet16", "ImageNet16-120", "x-test", "ImageNet16-120"),
)


@dataclass(frozen=True)
class Converted:
    """What ``convert`` wrote: the architectures, the columns, and the columns left out for want of values."""

    architectures: int
    columns: tuple[str, ...]
    left_out: dict[str, int]  # column -> how many architectures lack it


def convert(src: Path, out: Path) -> Converted:
    """Read ``src`` whole, then write ``out`` at once: a file that fails anywhere leaves ``out`` untouched."""
    rows = {arch: {c.name: column_value(results, c, f"{src}: architecture {index}") for c in COLUMNS}
            for index, arch, results in read_benchmark(src)}
    if not rows:
        raise TableError(f"{src}: the file holds no architectures")
    lacking = {c.name: sum(row[c.name] is None for row in rows.values()) for c in COLUMNS}
    kept = tuple(name for name, n in lacking.items() if n == 0)
    if not kept:
        raise TableError(f"{src}: no architecture has any of the columns {[c.name for c in COLUMNS]}")
    write_csv(out, ("arch", *kept), ([arch, *(repr(row[name]) for name in kept)] for arch, row in rows.items()))
    return Converted(len(rows), kept, {name: n for name, n in lacking.items() if n})


def column_value(results: Results, column: Column, where: str) -> float | None:
    """The column's mean over the seeds; None when the file has no such result (NAS-Bench-201 v1.0's 12-epoch
    schedule holds cifar10-valid alone), a one-line error when a result lacks a key the API reads."""
    arch_results = results[column.hp]
    seeds = _key(arch_results, "dataset_seed", where).get(column.dataset)
    if not seeds:
        return None
    trials = _key(arch_results, "all_results", where)
    values = [_trial_value(_key(trials, (column.dataset, seed), where), column, f"{where} seed {seed}")
              for seed in seeds]
    return None if None in values else sum(values) / len(values)


def _trial_value(trial: Mapping[str, Any], column: Column, where: str) -> float | None:
    epochs = int(_key(trial, "epochs", where))
    if column.eval_set is None:
        times = _key(trial, "train_times", where)
        return None if times is None else float(sum(_key(times, i, where) for i in range(epochs)))
    accuracy = _key(trial, "eval_acc1es", where).get(f"{column.eval_set}@{epochs - 1}")
    return None if accuracy is None else float(accuracy)


def _key(mapping: Any, key: Any, where: str) -> Any:
    if not isinstance(mapping, Mapping) or key not in mapping:
        raise TableError(f"{where}: no {key!r} where the official layout has one")
    return mapping[key]


def write_csv(out: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """``out`` replaced whole or not at all; a folder or a write that fails (read-only, disk full) is one line."""
    if out.is_dir():
        raise TableError(f"{out} is a folder: give the CSV file to write")
    try:
        _write_atomically(out, header, rows)
    except OSError as e:
        raise TableError(f"cannot write {out}: {e.strerror or e}") from None


def _write_atomically(out: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """A temp file beside ``out``, renamed over it: an interrupted write never leaves half a table behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the table from the other users of a shared folder
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

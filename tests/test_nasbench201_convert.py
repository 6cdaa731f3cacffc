"""``python -m blockqnn.nasbench201 convert``: each official layout, written here small (four cells, two seeds, every
epoch, the official key names), converts to the seed means, which the table space and a search then read; bad input
is one line, exit 1, and the table already at OUT left as it was."""

from __future__ import annotations

import bz2
import csv
import pickle
from pathlib import Path
from statistics import fmean

import numpy as np
import pytest
import torch

from blockqnn.spaces.nasbench201 import NASBench201Space
from tests.helpers import run_cli

CONV = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
ARCHS = [
    "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|none~2|",
    CONV,
    "|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|avg_pool_3x3~2|",
    "|nor_conv_1x1~0|+|skip_connect~0|nor_conv_1x1~1|+|none~0|skip_connect~1|nor_conv_3x3~2|",
]
# The evaluation sets each training set is scored on (api_utils.py, ArchResults.get_metrics' docstring).
EVAL_SETS = {"cifar10-valid": ("x-valid", "ori-test"), "cifar10": ("ori-test",),
             "cifar100": ("x-valid", "x-test", "ori-test"), "ImageNet16-120": ("x-valid", "x-test", "ori-test")}
SEEDS = {"12": (111, 777), "200": (777, 888)}
EPOCHS = {"12": 12, "200": 200}
# What each column must hold, spelled out as the benchmark's API is queried: (hp, dataset, eval_acc1es key), or
# the training time of (hp, dataset).
EXPECTED = {
    "cifar10_test_acc": ("200", "cifar10", "ori-test@199"), "cifar10_val12_acc": ("12", "cifar10-valid", "x-valid@11"),
    "cifar10_train12_s": ("12", "cifar10-valid", None),
    "cifar100_test_acc": ("200", "cifar100", "x-test@199"), "cifar100_val12_acc": ("12", "cifar100", "x-valid@11"),
    "cifar100_train12_s": ("12", "cifar100", None),
    "imagenet16_test_acc": ("200", "ImageNet16-120", "x-test@199"),
    "imagenet16_val12_acc": ("12", "ImageNet16-120", "x-valid@11"),
    "imagenet16_train12_s": ("12", "ImageNet16-120", None),
}


# ---- the official layouts, small -----------------------------------------------------------------------------------
def results_count(arch: str, dataset: str, seed: int, epochs: int, rng: np.random.Generator) -> dict:
    """A ``ResultsCount.state_dict()``: every attribute its ``__init__`` and ``reset_eval`` set."""
    def curve(low: float, high: float) -> dict[int, float]:
        return {e: float(v) for e, v in enumerate(rng.uniform(low, high, epochs))}

    sets = EVAL_SETS[dataset]
    evals = {name: curve(10, 95) for name in sets}
    return {
        "name": dataset, "net_state_dict": None, "train_acc1es": curve(10, 99), "train_acc5es": curve(50, 100),
        "train_losses": curve(0, 3), "train_times": curve(5, 20),
        "arch_config": {"name": "infer.tiny", "channel": 16, "num_cells": 5, "arch_str": arch, "class_num": 10},
        "params": 0.5, "flop": 80.0, "seed": seed, "epochs": epochs, "latency": [0.01],
        "eval_names": list(sets),
        "eval_acc1es": {f"{name}@{e}": acc for name, accs in evals.items() for e, acc in accs.items()},
        "eval_times": {f"{name}@{e}": float(rng.uniform(0.5, 2)) for name in sets for e in range(epochs)},
        "eval_losses": {f"{name}@{e}": float(rng.uniform(0, 3)) for name in sets for e in range(epochs)},
    }


def arch_results(index: int, arch: str, hp: str, rng: np.random.Generator, datasets=tuple(EVAL_SETS)) -> dict:
    """An ``ArchResults.state_dict()``: its trials under (dataset, seed), its seeds per dataset."""
    trials = {(d, s): results_count(arch, d, s, EPOCHS[hp], rng) for d in datasets for s in SEEDS[hp]}
    return {"arch_index": index, "arch_str": arch, "all_results": trials,
            "dataset_seed": {d: list(SEEDS[hp]) for d in datasets}, "clear_net_done": False}


def benchmark(hp_names=("12", "200"), seed=0, less_datasets=tuple(EVAL_SETS)) -> dict:
    """The dict both releases hold; NAS-Bench-201 names the hps ``less``/``full`` (api_201.py)."""
    rng = np.random.default_rng(seed)
    infos = {i: {name: arch_results(i, arch, hp, rng, less_datasets if hp == "12" else tuple(EVAL_SETS))
                 for name, hp in zip(hp_names, ("12", "200"), strict=True)} for i, arch in enumerate(ARCHS)}
    return {"meta_archs": list(ARCHS), "arch2infos": infos, "evaluated_indexes": list(range(len(ARCHS)))}


def pbz2(path: Path, obj) -> Path:
    with bz2.BZ2File(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)  # api_utils.py's pickle_save
    return path


def write_nb201_pth(path: Path, data: dict) -> Path:
    torch.save(data, path)
    return path


def write_nats_folder(path: Path, data: dict) -> Path:
    """NATS-tss-v1_0-3ffb9-simple/: the meta file, then one file per architecture holding its {hp: results}."""
    path.mkdir()
    pbz2(path / "meta.pickle.pbz2", {"meta_archs": data["meta_archs"], "evaluated_indexes": data["evaluated_indexes"]})
    for index, infos in data["arch2infos"].items():
        pbz2(path / f"{index:06d}.pickle.pbz2", infos)
    return path


LAYOUTS = {
    "NAS-Bench-201-v1_1-096897.pth": lambda p: write_nb201_pth(p, benchmark(("less", "full"))),
    "NATS-tss-v1_0-3ffb9.pickle.pbz2": lambda p: pbz2(p, benchmark()),
    "NATS-tss-v1_0-3ffb9-simple": lambda p: write_nats_folder(p, benchmark()),
}


def expected_means(data: dict) -> dict[str, dict[str, float]]:
    """{arch: {column: the mean over the seeds of what the file holds}}, from the written dict."""
    def mean(infos: dict, hp: str, dataset: str, key: str | None) -> float:
        archres = infos[hp] if hp in infos else infos[{"12": "less", "200": "full"}[hp]]
        trials = [archres["all_results"][(dataset, s)] for s in archres["dataset_seed"][dataset]]
        return fmean(sum(t["train_times"].values()) if key is None else t["eval_acc1es"][key] for t in trials)

    return {data["meta_archs"][i]: {col: mean(infos, *spec) for col, spec in EXPECTED.items()}
            for i, infos in data["arch2infos"].items()}


def read_csv(path: Path) -> tuple[list[str], dict[str, dict[str, float]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = {row.pop("arch"): {k: float(v) for k, v in row.items()} for row in reader}
    return reader.fieldnames, rows


def convert(*args: str):
    return run_cli("convert", *map(str, args), module="nasbench201")


# ---- converting ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_each_official_layout_converts_to_the_seed_means(tmp_path, name):
    src, out = LAYOUTS[name](tmp_path / name), tmp_path / "out" / "nb201.csv"
    done = convert(src, out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {out}: 4 architectures") and not done.stderr
    header, rows = read_csv(out)
    assert header == ["arch", *EXPECTED]
    want = expected_means(benchmark(("less", "full")) if name.endswith(".pth") else benchmark())
    assert list(rows) == ARCHS
    for arch in ARCHS:
        assert rows[arch] == pytest.approx(want[arch], rel=1e-12), arch


def test_the_space_reads_the_converted_table_and_a_search_rewards_the_12_epoch_validation(tmp_path):
    """The benchmark's own protocol: the 12-epoch validation accuracy as the reward, the test accuracy beside it."""
    from blockqnn.config import compose
    from blockqnn.search import search
    from blockqnn.store import Store

    out = tmp_path / "nb201.csv"
    assert convert(LAYOUTS["NATS-tss-v1_0-3ffb9.pickle.pbz2"](tmp_path / "tss.pickle.pbz2"), out).returncode == 0
    want = expected_means(benchmark())[CONV]
    assert NASBench201Space(out, metric_column="cifar100_test_acc").lookup(CONV) == \
        pytest.approx(want["cifar100_test_acc"] / 100)
    table = [f"space.table={out}", "space.metric_column=cifar100_val12_acc", "space.ops=[nor_conv_3x3]"]
    run = tmp_path / "run"
    run.mkdir()
    search(compose("search", ["experiment=nasbench201", *table, "agent=random", "agent.budget=3", "logger=none",
                              "progress.mode=off"]), run)
    with Store.open(run, readonly=True) as store:
        rows = store.candidates()
    assert [r["accuracy"] for r in rows] == pytest.approx([want["cifar100_val12_acc"] / 100] * 3)


def test_results_a_release_lacks_leave_their_columns_out_with_a_note(tmp_path):
    """NAS-Bench-201 v1.0's 12-epoch schedule ('less') holds cifar10-valid alone (api_201.py's history)."""
    src = write_nb201_pth(tmp_path / "NAS-Bench-201-v1_0-e61699.pth",
                          benchmark(("less", "full"), less_datasets=("cifar10-valid",)))
    done = convert(src, tmp_path / "t.csv")
    assert done.returncode == 0, done.stderr
    header, _ = read_csv(tmp_path / "t.csv")
    lacking = ["cifar100_val12_acc", "cifar100_train12_s", "imagenet16_val12_acc", "imagenet16_train12_s"]
    assert header == ["arch", *(c for c in EXPECTED if c not in lacking)]
    assert [line for line in done.stdout.splitlines() if line.startswith("note: ")] == \
        [f"note: {c} left out: 4 of 4 architectures lack it" for c in lacking]


def test_help_names_the_layouts_and_the_columns():
    done = run_cli("convert", "--help", module="nasbench201")
    assert done.returncode == 0 and "_val12_acc" in done.stdout and "NATS-tss" in done.stdout


# ---- bad input: one line, exit 1, OUT untouched --------------------------------------------------------------------
def written(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def without_schedule(hp: str) -> dict:
    data = benchmark()
    for infos in data["arch2infos"].values():
        del infos[hp]
    return data


def trial_without(key: str, hp: str) -> dict:
    """Architecture 2's last cifar100 trial under ``hp`` without ``key``."""
    data = benchmark()
    del data["arch2infos"][2][hp]["all_results"][("cifar100", SEEDS[hp][-1])][key]
    return data


def incomplete_folder(path: Path) -> Path:
    (write_nats_folder(path, benchmark()) / "000003.pickle.pbz2").unlink()
    return path


def empty_folder(path: Path) -> Path:
    path.mkdir()
    return path


# case: (how SRC is made from a path, what the error line says)
BAD = {
    "missing": (lambda p: p, "src.pickle.pbz2 not found"),
    "unknown layout": (lambda p: written(p.with_suffix(".json"), b"{}"), "unknown layout"),
    "not torch": (lambda p: written(p.with_suffix(".pth"), b"not a torch file"), "not a readable torch.save file"),
    "damaged bz2": (lambda p: written(p, b"BZh9 damaged"), "not a readable bz2 pickle"),
    "no arch2infos": (lambda p: write_nb201_pth(p.with_suffix(".pth"), {"meta_archs": ARCHS}), "no 'arch2infos'"),
    "no 200 epochs": (lambda p: pbz2(p, without_schedule("200")), "expected 'less' and 'full'"),
    "no eval_acc1es": (lambda p: pbz2(p, trial_without("eval_acc1es", "200")),
                       "architecture 2 seed 888: no 'eval_acc1es'"),
    "no train_times": (lambda p: pbz2(p, trial_without("train_times", "12")),
                       "architecture 2 seed 777: no 'train_times'"),
    "size space": (lambda p: pbz2(p, benchmark() | {"meta_archs": ["8:16:24:32:40"] * 4}),
                   "not a NAS-Bench-201 architecture"),
    "folder without meta": (empty_folder, "without meta.pickle.pbz2"),
    "incomplete folder": (incomplete_folder, "no 000003.pickle.pbz2 for architecture 3"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_leaves_out_alone(tmp_path, case):
    make, message = BAD[case]
    src = make(tmp_path / "src.pickle.pbz2")
    out = tmp_path / "out.csv"
    out.write_text("arch,accuracy\n")  # a table from before: a failed conversion must not replace it
    done = convert(src, out)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr
    assert out.read_text() == "arch,accuracy\n" and [p.name for p in tmp_path.glob(".out.csv*")] == []


def test_a_folder_as_out_is_one_line(tmp_path):
    src = pbz2(tmp_path / "tss.pickle.pbz2", benchmark())
    done = convert(src, tmp_path)
    assert done.returncode == 1 and done.stderr == f"error: {tmp_path} is a folder: give the CSV file to write\n"

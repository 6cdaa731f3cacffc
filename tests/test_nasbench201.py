"""The NAS-Bench-201 table space: arch strings, the space protocol, tables and their errors, the experiment."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf.errors import MissingMandatoryValue

from blockqnn.agents.qlearning import QLearningAgent
from blockqnn.spaces.nasbench201 import (
    OPS,
    NASBench201Space,
    TableError,
    TableNotFoundError,
    all_archs,
    format_arch,
    parse_arch,
    synthetic_scores,
    write_synthetic_table,
)

ROOT = Path(__file__).resolve().parents[1]
RESNET = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|none~2|"
CONV = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
POOL = "|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|avg_pool_3x3~2|"


def write_table(path: Path, rows, header=("arch", "accuracy")) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ---- architecture strings -----------------------------------------------------------------------------------------
def test_format_and_parse_round_trip():
    ops = ("nor_conv_3x3", "none", "nor_conv_3x3", "skip_connect", "none", "none")
    assert format_arch(ops) == RESNET
    assert parse_arch(RESNET) == ops
    assert parse_arch(" |nor_conv_3x3~0|+ |none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|none~2| ") == ops


@pytest.mark.parametrize(
    "text",
    ["", "|none~0|", "|none~0|+|none~0|none~1|", "|none~1|+|none~0|none~1|+|none~0|none~1|none~2|",
     "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|extra", "(1,4,0,0,0)"],
)
def test_malformed_arch_strings_are_clear_errors(text):
    with pytest.raises(TableError, match="not a NAS-Bench-201 architecture"):
        parse_arch(text)


def test_all_archs_are_the_15625_distinct_cells():
    archs = all_archs()
    assert len(archs) == len(set(archs)) == 5**6
    assert RESNET in archs and all(parse_arch(a) for a in archs[:50])


# ---- the space --------------------------------------------------------------------------------------------------
@pytest.fixture
def small_table(tmp_path) -> Path:
    return write_table(tmp_path / "t.csv", [(RESNET, "93.5"), (CONV, "94.1"), (POOL, "71.0")])


def test_space_protocol(small_table):
    space = NASBench201Space(small_table)
    state, actions = space.start, []
    for edge in range(6):
        legal = space.actions(state)
        assert legal == tuple((edge, op) for op in OPS)
        probs = space.exploration_probs(state)
        assert probs.shape == (5,) and np.isclose(probs.sum(), 1.0) and np.ptp(probs) == 0
        state = legal[3]
        actions.append(state)
        assert space.is_final(state) == (edge == 5)
    assert space.decode(actions) == CONV
    assert space.encode(CONV) == actions
    with pytest.raises(TableError, match="6 edges in order"):
        space.decode(actions[::-1])


def test_canonical_hash_is_the_normalised_string(small_table):
    space = NASBench201Space(small_table)
    assert space.canonical_hash(RESNET) == space.canonical_hash(RESNET.replace("|+|", "| + |"))
    assert space.canonical_hash(RESNET) != space.canonical_hash(CONV)


def test_restricted_ops(small_table):
    space = NASBench201Space(small_table, ops=["nor_conv_3x3", "skip_connect"])
    assert [op for _, op in space.actions(space.start)] == ["nor_conv_3x3", "skip_connect"]
    assert space.best() == (CONV, pytest.approx(0.941))
    with pytest.raises(TableError, match="not in this space's ops"):
        space.encode(RESNET)
    with pytest.raises(ValueError, match="space.ops"):
        NASBench201Space(small_table, ops=["sep_conv_3x3"])
    with pytest.raises(TableError, match="no architecture that uses only"):
        NASBench201Space(small_table, ops=["none"]).best()


# ---- tables -----------------------------------------------------------------------------------------------------
PERCENT, FRACTION = ("93.5", "94.1", "71.0"), ("0.935", "0.941", "0.71")


@pytest.mark.parametrize(
    ("values", "unit"), [(PERCENT, "auto"), (FRACTION, "auto"), (FRACTION, "fraction"), (PERCENT, "percent")]
)
def test_percent_and_fraction_tables_give_fractions(tmp_path, values, unit):
    table = write_table(tmp_path / "t.csv", zip((RESNET, CONV, POOL), values))
    space = NASBench201Space(table, metric_unit=unit)
    assert space.lookup(RESNET) == pytest.approx(0.935)
    assert space.lookup(POOL) == pytest.approx(0.71)
    assert space.best() == (CONV, pytest.approx(0.941))


def test_low_accuracies_in_percent_need_the_unit(tmp_path):
    table = write_table(tmp_path / "t.csv", [(RESNET, "0.5"), (CONV, "0.9")])
    assert NASBench201Space(table, metric_unit="percent").lookup(CONV) == pytest.approx(0.009)
    assert NASBench201Space(table).lookup(CONV) == pytest.approx(0.9)


def test_spreadsheet_byte_order_mark_is_ignored(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text(f"arch,accuracy\n{CONV},0.9\n", encoding="utf-8-sig")
    assert NASBench201Space(table).lookup(CONV) == pytest.approx(0.9)


def test_rows_of_one_arch_are_averaged_and_extra_columns_ignored(tmp_path):
    table = write_table(tmp_path / "t.csv", [(RESNET, "90", "x"), (CONV, "94", "y"), (RESNET, "92", "z")],
                        header=("arch_str", "valid_acc", "note"))
    space = NASBench201Space(table, arch_column="arch_str", metric_column="valid_acc")
    assert space.lookup(RESNET) == pytest.approx(0.91)
    assert len(space.metrics) == 2


def test_unknown_architecture_is_a_clear_error(small_table):
    space = NASBench201Space(small_table)
    with pytest.raises(TableError, match="is not in .*t.csv \\(3 architectures\\)"):
        space.lookup("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")


def test_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(TableNotFoundError, match="nope.csv not found") as caught:
        NASBench201Space(tmp_path / "nope.csv")
    assert isinstance(caught.value, FileNotFoundError) and "\n" not in str(caught.value)


@pytest.mark.parametrize(("kwargs", "missing"), [({"metric_column": "test_acc"}, "'test_acc'"),
                                                 ({"arch_column": "arch_str"}, "'arch_str'")])
def test_missing_columns_are_named(small_table, kwargs, missing):
    with pytest.raises(TableError, match=f"no column {missing} \\(columns: \\['arch', 'accuracy'\\]\\)"):
        NASBench201Space(small_table, **kwargs)


@pytest.mark.parametrize(
    ("rows", "message"),
    [([(RESNET, "93.5"), (CONV, "n/a")], "t.csv:3: accuracy 'n/a' is not a number"),
     ([(RESNET, "93.5"), (CONV, "nan")], "t.csv:3: accuracy 'nan' is not a number"),
     ([(RESNET, "inf")], "t.csv:2: accuracy 'inf' is not a number"),
     ([(RESNET, "93.5"), ("resnet", "90")], "t.csv:3: not a NAS-Bench-201 architecture"),
     ([(RESNET, "150")], "spans \\[1.5, 1.5\\]"),
     ([(RESNET, "-0.2"), (CONV, "0.5")], "spans \\[-0.2, 0.5\\]"),
     ([], "no rows")],
)
def test_bad_table_contents_are_one_line_errors(tmp_path, rows, message):
    table = write_table(tmp_path / "t.csv", rows)
    with pytest.raises(TableError, match=message) as caught:
        NASBench201Space(table)
    assert "\n" not in str(caught.value)


def test_a_table_must_cover_every_cell_the_search_may_sample(tmp_path, small_table):
    NASBench201Space(write_synthetic_table(tmp_path / "full.csv")).check_complete()
    NASBench201Space(small_table, ops=["nor_conv_3x3"]).check_complete()  # the one cell over these ops is there
    with pytest.raises(TableError, match=r"lacks 15622 of the 15625 architectures .* e\.g\. \|none~0\|"):
        NASBench201Space(small_table).check_complete()


def test_synthetic_table_round_trips_and_has_structure(tmp_path):
    scores = synthetic_scores(seed=0)
    assert len(scores) == 5**6 and all(0.0 <= v <= 1.0 for v in scores.values())
    space = NASBench201Space(write_synthetic_table(tmp_path / "s.csv", seed=0))
    assert space.lookup(CONV) == pytest.approx(scores[CONV], abs=1e-6)
    best = parse_arch(space.best()[0])
    assert best[0] == best[4] == "nor_conv_3x3"  # the rewarded deep path 0 -> 1 -> 3
    dead = [v for a, v in scores.items() if parse_arch(a)[3:] == ("none",) * 3]
    assert max(dead) < min(v for a, v in scores.items() if parse_arch(a)[3:] != ("none",) * 3)
    assert write_synthetic_table(tmp_path / "other.csv", seed=1).read_text() != (tmp_path / "s.csv").read_text()


# ---- with configs and the agent ---------------------------------------------------------------------------------
def test_space_config_needs_a_table_and_instantiates(small_table):
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        unset = compose(overrides=["+space=nasbench201"]).space
        cfg = compose(overrides=["+space=nasbench201", f"space.table={small_table}"]).space
    with pytest.raises(MissingMandatoryValue):
        instantiate(unset)
    assert instantiate(cfg).lookup(CONV) == pytest.approx(0.941)


def test_agent_searches_the_table_and_restores(nb201_table):
    space = NASBench201Space(nb201_table)
    agent = QLearningAgent(space, alpha=0.3, batch_size=8, schedule_scale=0.05, seed=0)
    for _ in range(4):
        batch = agent.sample()
        agent.update(batch, [space.lookup(space.decode(t)) for t in batch])
    clone = QLearningAgent(space, alpha=0.3, batch_size=8, schedule_scale=0.05, seed=1)
    clone.load_state_dict(json.loads(json.dumps(agent.state_dict())))
    assert "(-1, '')" in clone.state_dict()["q"]
    assert [space.decode(t) for t in clone.sample()] == [space.decode(t) for t in agent.sample()]


def experiment_script():
    path = ROOT / "experiments" / "agent_vs_random_table.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # registered: it defines dataclasses
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("agent", ["qlearning", "evolution"])
def test_experiment_script_searches_as_the_search_loop_does(nb201_table, tmp_path, agent):
    """The experiment's figures are those of ``python -m blockqnn.search experiment=nasbench201 agent=NAME``."""
    from blockqnn.config import compose as compose_search
    from blockqnn.search import search
    from blockqnn.store import Store

    script = experiment_script()
    table = [f"space.table={nb201_table}", "space.ops=[none,skip_connect,nor_conv_3x3]"]  # 729 cells: repeats
    space = instantiate(compose_search("search", ["experiment=nasbench201", *table]).space)
    cfg = script.agent_config(agent, 60, table, ["agent.batch_size=4"])
    metrics, distinct = script.search_table(instantiate(cfg, space=space, seed=3), space)
    search(compose_search("search", ["experiment=nasbench201", *table, f"agent={agent}", "agent.budget=60",
                                     "agent.batch_size=4", "seed=3", "logger=none", "progress.mode=off"]), tmp_path)
    with Store.open(tmp_path, readonly=True) as store:
        rows = store.candidates()
    assert metrics == [r["accuracy"] for r in rows] and len(rows) == 60
    assert distinct[-1] == sum(not r["cached"] for r in rows) < 60


@pytest.mark.slow
def test_experiment_script_runs_on_a_synthetic_table(tmp_path):
    png = tmp_path / "plot.png"
    cmd = [sys.executable, "experiments/agent_vs_random_table.py", "--synthetic", "--seeds", "3", "--budgets", "16",
           "32", "--output", str(png), "--agents", "qlearning+model", "qlearning", "random", "evolution",
           "qlearning+model:agent.model.proposals=4", "qlearning+model:agent.model.warmup=5"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env(), check=True)
    lines = done.stdout.splitlines()
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
    assert {"q-learning+model", "q-learning", "random", "evolution", "q-learning, budget 32 read at M"} <= set(rows)
    assert any(row.startswith("16 (") for row in rows) and any(row.startswith("32 (") for row in rows)
    assert rows["q-learning+model"].split("|")[3] != rows["q-learning"].split("|")[3]  # its overrides applied
    tests = [line for line in lines if line.startswith("- M = ")]
    assert len(tests) == 2 and all(line.count(" p = ") == 3 and "q-learning+model" in line for line in tests)
    assert png.stat().st_size > 10_000


@pytest.mark.slow
def test_experiment_script_bad_table_is_one_line_error(tmp_path):
    cmd = [sys.executable, "experiments/agent_vs_random_table.py", "--table", str(tmp_path / "missing.csv")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env())
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and "missing.csv not found" in done.stderr


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}

"""The NAS-Bench-201 cell as a search space whose rewards come from a table: compare agents in seconds.

The cell has 4 nodes and 6 edges, each edge one operation, written ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``
(node 1 from node 0; node 2 from 0 and 1; node 3 from 0, 1 and 2). The agent picks one op per edge in that order;
an action is ``(edge, op)`` and, as in the NSC space, the state is the last action.

No table is shipped: the user supplies a CSV with one row per architecture (architecture string and metric
columns named in ``conf/space/nasbench201.yaml``), e.g. one ``python -m blockqnn.nasbench201 convert`` writes from
the official files. Several rows of one architecture (e.g. one per training seed) are averaged.
``write_synthetic_table`` makes a structured stand-in for trying things out and for tests.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from blockqnn.errors import TableError, TableNotFoundError
from blockqnn.schema import declared, member, setting

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# The source node of each of the 6 edges, in string order; nodes 1, 2, 3 take 1, 2, 3 edges.
EDGE_SOURCES = (0, 0, 1, 0, 1, 2)
NODE_EDGES = ((0,), (1, 2), (3, 4, 5))
METRIC_UNITS = ("auto", "percent", "fraction")

Edge = tuple[int, str]
_ARCH = re.compile(r"\|(\w+)~0\|\+\|(\w+)~0\|(\w+)~1\|\+\|(\w+)~0\|(\w+)~1\|(\w+)~2\|")


def format_arch(ops: Sequence[str]) -> str:
    """The standard string of the 6 edge ops given in edge order."""
    return "+".join("|" + "|".join(f"{ops[e]}~{EDGE_SOURCES[e]}" for e in edges) + "|" for edges in NODE_EDGES)


def parse_arch(text: str) -> tuple[str, ...]:
    """The 6 edge ops of an architecture string (whitespace ignored); TableError if it is not one."""
    match = _ARCH.fullmatch(re.sub(r"\s+", "", text))
    if match is None:
        raise TableError(f"not a NAS-Bench-201 architecture: {text!r} (expected |op~0|+|op~0|op~1|+|op~0|op~1|op~2|)")
    return match.groups()


def all_archs(ops: Sequence[str] = OPS) -> list[str]:
    """Every cell over ``ops``: 5^6 = 15,625 with the standard five."""
    return [format_arch(combo) for combo in itertools.product(ops, repeat=len(EDGE_SOURCES))]


@member
class NASBench201Settings:
    """``space=nasbench201`` (conf/space/nasbench201.yaml), and ``NASBench201Space``'s arguments."""

    table: str | Path = setting()
    arch_column: str = setting()
    metric_column: str = setting()
    metric_unit: str = setting(choices=METRIC_UNITS)
    ops: list[str] = setting(choices=OPS)

    @staticmethod
    def rule(values: Mapping[str, Any]) -> str | None:
        return "ops=[]: expected at least one op" if "ops" in values and not values["ops"] else None


@declared("space", NASBench201Settings)
class NASBench201Space:
    """The NAS-Bench-201 cell with a metric table as its evaluator (``lookup``): a ``TabularSpace``."""

    tabular = True

    def __init__(
        self,
        table: str | Path,
        arch_column: str = "arch",
        metric_column: str = "accuracy",
        ops: Sequence[str] = OPS,
        metric_unit: str = "auto",
    ) -> None:
        self.ops = tuple(ops)
        self.table = Path(table)
        self.metrics = _load_table(self.table, arch_column, metric_column, metric_unit)
        self.start: Edge = (-1, "")
        self._actions = tuple(tuple((edge, op) for op in self.ops) for edge in range(len(EDGE_SOURCES)))
        self._probs = np.full(len(self.ops), 1.0 / len(self.ops))

    # ---- the space protocol -----------------------------------------------------------------------------------
    def actions(self, state: Edge) -> tuple[Edge, ...]:
        return self._actions[state[0] + 1]

    def exploration_probs(self, state: Edge) -> np.ndarray:
        return self._probs

    def is_final(self, action: Edge) -> bool:
        return action[0] == len(EDGE_SOURCES) - 1

    def decode(self, actions: Sequence[Edge]) -> str:
        if [edge for edge, _ in actions] != list(range(len(EDGE_SOURCES))):
            raise TableError(f"a NAS-Bench-201 cell takes one op for each of the 6 edges in order, got {actions!r}")
        return format_arch([op for _, op in actions])

    def decode_hashed(self, actions: Sequence[Edge]) -> tuple[str, str]:
        arch = self.decode(actions)  # already normalised: hashed as it is
        return arch, _hash(arch)

    def encode(self, arch: str) -> list[Edge]:
        ops = parse_arch(arch)
        bad = set(ops) - set(self.ops)
        if bad:
            raise TableError(f"{arch}: ops {sorted(bad)} are not in this space's ops {self.ops}")
        return list(enumerate(ops))

    def canonical_hash(self, arch: str) -> str:
        """The hash of the normalised string: NAS-Bench-201 archs are told apart by their string, as in the table."""
        return _hash(format_arch(parse_arch(arch)))

    def mutate(self, actions: Sequence[Edge], rng: np.random.Generator) -> list[Edge]:
        """One edge, drawn uniformly, takes another op, drawn uniformly (unchanged when the space has one op)."""
        edges = list(actions)
        edge, op = edges[int(rng.integers(len(edges)))]
        others = [o for o in self.ops if o != op]
        if others:
            edges[edge] = (edge, others[int(rng.integers(len(others)))])
        return edges

    def neighbours(self, actions: Sequence[Edge]) -> list[list[Edge]]:
        """Every cell with one edge's op changed: 6 x 4 = 24 with the standard five ops."""
        edges = list(actions)
        return [edges[:edge] + [(edge, other)] + edges[edge + 1:]
                for edge, op in edges for other in self.ops if other != op]

    # ---- the table ------------------------------------------------------------------------------------------
    def lookup(self, arch: str) -> float:
        """The architecture's metric as a fraction in [0, 1]."""
        key = format_arch(parse_arch(arch))
        if key not in self.metrics:
            raise TableError(f"architecture {key} is not in {self.table} ({len(self.metrics)} architectures)")
        return self.metrics[key]

    def check_complete(self) -> None:
        """A search may sample any cell over ``ops``: a table lacking some would leave their reward unknown."""
        missing = [arch for arch in all_archs(self.ops) if arch not in self.metrics]
        if missing:
            raise TableError(f"{self.table} lacks {len(missing)} of the {len(self.ops) ** len(EDGE_SOURCES)} "
                             f"architectures of this space (ops {list(self.ops)}), e.g. {missing[0]}")

    def best(self) -> tuple[str, float]:
        """The table's best architecture over this space's ops, and its metric."""
        allowed = set(self.ops)
        arch = max((a for a in self.metrics if set(parse_arch(a)) <= allowed), key=self.metrics.get, default=None)
        if arch is None:
            raise TableError(f"{self.table} has no architecture that uses only the ops {self.ops}")
        return arch, self.metrics[arch]


def _hash(normalised: str) -> str:
    return hashlib.sha256(normalised.encode()).hexdigest()[:16]


def _load_table(path: Path, arch_column: str, metric_column: str, unit: str) -> dict[str, float]:
    """Read the CSV into {normalised arch: mean metric as a fraction}; every problem is one TableError line."""
    if not path.is_file():
        raise TableNotFoundError(f"NAS-Bench-201 table {path} not found (set space.table to a CSV file)")
    values: dict[str, list[float]] = defaultdict(list)
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheet exports start with a BOM
        reader = csv.DictReader(f)
        missing = [c for c in (arch_column, metric_column) if c not in (reader.fieldnames or [])]
        if missing:
            raise TableError(f"{path}: no column {', '.join(map(repr, missing))} (columns: {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            try:
                value = float(row[metric_column])
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value):
                raise TableError(f"{path}:{line}: {metric_column} {row[metric_column]!r} is not a number")
            try:
                arch = format_arch(parse_arch(row[arch_column] or ""))
            except TableError as e:
                raise TableError(f"{path}:{line}: {e}") from None
            values[arch].append(value)
    if not values:
        raise TableError(f"{path}: the table has no rows")
    metrics = {arch: float(np.mean(v)) for arch, v in values.items()}
    return _as_fractions(metrics, path, metric_column, unit)


def _as_fractions(metrics: dict[str, float], path: Path, column: str, unit: str) -> dict[str, float]:
    """Percent tables (auto: any value above 1) are divided by 100; the result must lie in [0, 1]."""
    low, high = min(metrics.values()), max(metrics.values())
    if unit == "percent" or (unit == "auto" and high > 1.0):
        metrics = {arch: v / 100.0 for arch, v in metrics.items()}
        low, high = low / 100.0, high / 100.0
    if low < 0.0 or high > 1.0:
        raise TableError(f"{path}: {column} spans [{low}, {high}] as a fraction; expected accuracies in [0, 1] or %")
    return metrics


def synthetic_scores(seed: int = 0, noise: float = 0.003, ops: Sequence[str] = OPS) -> dict[str, float]:
    """A NAS-Bench-201-like landscape (fractions): a sum of per-edge op preferences, a bonus when the deep
    path 0 -> 1 -> 3 is all 3x3 convolutions, a penalty when node 3 sees only ``none``, and a little noise."""
    rng = np.random.default_rng(seed)
    prefs = rng.uniform(0.0, 0.04, size=(len(EDGE_SOURCES), len(ops)))
    conv3 = ops.index("nor_conv_3x3") if "nor_conv_3x3" in ops else None
    scores = {}
    for combo in itertools.product(range(len(ops)), repeat=len(EDGE_SOURCES)):
        score = 0.70 + prefs[np.arange(len(combo)), combo].sum()
        if conv3 is not None and combo[0] == combo[4] == conv3:
            score += 0.06
        if all(ops[c] == "none" for c in (combo[3], combo[4], combo[5])):
            score -= 0.55
        scores[format_arch([ops[c] for c in combo])] = score + noise * rng.standard_normal()
    return {arch: float(np.clip(v, 0.0, 1.0)) for arch, v in scores.items()}


def write_synthetic_table(
    path: str | Path, seed: int = 0, arch_column: str = "arch", metric_column: str = "accuracy", percent: bool = True
) -> Path:
    """Write ``synthetic_scores`` as a CSV like the published tables (accuracy in percent by default)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([arch_column, metric_column])
        for arch, score in synthetic_scores(seed).items():
            writer.writerow([arch, f"{score * 100:.4f}" if percent else f"{score:.6f}"])
    return path

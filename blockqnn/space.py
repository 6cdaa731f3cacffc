"""Search spaces as the agent sees them: states, legal actions, and how to explore among them.

A space is Markov: the state is the last action taken (the NSC tuple of the current layer), as in the paper,
so an agent needs nothing but ``start``, ``actions(state)``, ``exploration_probs(state)`` and ``is_final``.
Architectures travel through the rest of the system as text (``decode``), identified by ``canonical_hash``.

A space says how its architectures are scored: ``tabular`` spaces (a benchmark such as NAS-Bench-201) look every
accuracy up in a table (``TabularSpace``); the others are built into networks and trained.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np

from blockqnn.nsc import BINARY, DEFAULT_MAX_INDEX, KERNELS, Block, Layer, LayerType

State = Hashable
Action = Hashable


class SearchSpace(Protocol):
    """What an agent needs of a space. Actions are hashable; ``repr`` of an action is its stable name."""

    start: State
    tabular: bool  # True: accuracies come from a table (``TabularSpace.lookup``); False: candidates are trained

    def actions(self, state: State) -> Sequence[Action]: ...

    def exploration_probs(self, state: State) -> np.ndarray: ...

    def is_final(self, action: Action) -> bool: ...

    def decode(self, actions: Sequence[Action]) -> str: ...

    def encode(self, arch: str) -> list[Action]: ...

    def canonical_hash(self, arch: str) -> str: ...


class TabularSpace(SearchSpace, Protocol):
    """A space whose every architecture has a known accuracy: nothing is trained, the table is the evaluator."""

    table: Path

    def lookup(self, arch: str) -> float: ...

    def check_complete(self) -> None:
        """Raise ``TableError`` unless the table covers every architecture the space can sample."""


class NSCSpace:
    """BlockQNN's block space: each action is the NSC tuple of the next layer.

    Exploration does not pick uniformly among all legal tuples: add/concat tuples grow with the square of the
    index and would drown Terminal, so nearly every random block would reach the maximum length. Instead a
    random step picks a layer *type* first (each allowed type equally likely, Terminal weighted by
    ``terminal_weight``), then a kernel and predecessors uniformly. With 7 types the chance to stop is about
    1/7 per layer, so random blocks have all lengths from 1 layer to the maximum (see tests/test_space.py).
    """

    tabular = False

    def __init__(
        self,
        max_index: int = DEFAULT_MAX_INDEX,
        types: Sequence[int] = tuple(LayerType),
        kernels: dict[str, Sequence[int]] | None = None,
        terminal_weight: float = 1.0,
    ) -> None:
        if max_index < 2:
            raise ValueError(f"space.max_index must be at least 2 (one layer and the Terminal), got {max_index}")
        self.max_index = max_index
        unknown = set(types) - set(LayerType)
        if unknown:
            raise ValueError(f"space.types: {sorted(unknown)} are not NSC layer types (1-7)")
        self.types = tuple(LayerType(t) for t in types)
        if LayerType.TERMINAL not in self.types or len(set(self.types)) < 2:
            raise ValueError(f"space.types must include 7 (Terminal) and at least one layer type, got {list(types)}")
        if not terminal_weight > 0:
            raise ValueError(f"space.terminal_weight must be > 0 (the weight of stopping), got {terminal_weight}")
        self.kernels = {t: tuple(KERNELS[t]) for t in self.types}
        for name, allowed in (kernels or {}).items():
            kind = LayerType[name.upper()]
            bad = set(allowed) - set(KERNELS[kind])
            if bad:
                raise ValueError(f"space.kernels.{name}: {sorted(bad)} not allowed (NSC allows {KERNELS[kind]})")
            self.kernels[kind] = tuple(allowed)
        self.terminal_weight = terminal_weight
        self.start: Layer = Layer(0, 0, 0, 0, 0)
        self._actions = cache(self._layers_at)

    def actions(self, state: Layer) -> tuple[Layer, ...]:
        return self._actions(state.index + 1)[0]

    def exploration_probs(self, state: Layer) -> np.ndarray:
        return self._actions(state.index + 1)[1]

    def is_final(self, action: Layer) -> bool:
        return action.type == LayerType.TERMINAL

    def decode(self, actions: Sequence[Layer]) -> str:
        return str(Block.of(actions, self.max_index))

    def encode(self, arch: str) -> list[Layer]:
        return list(self.parse(arch).layers)

    def parse(self, arch: str) -> Block:
        return Block.parse(arch, self.max_index)

    def canonical_hash(self, arch: str) -> str:
        return self.parse(arch).canonical_hash()

    def _layers_at(self, index: int) -> tuple[tuple[Layer, ...], np.ndarray]:
        """All legal tuples at ``index`` and their exploration probabilities (type, then kernel, then preds)."""
        if index >= self.max_index:
            return (Layer(index, int(LayerType.TERMINAL), 0, 0, 0),), np.ones(1)
        groups = [self._layers_of_type(t, index) for t in self.types if t != LayerType.TERMINAL or index > 1]
        weights = [self.terminal_weight if g[0].type == LayerType.TERMINAL else 1.0 for g in groups]
        layers = tuple(layer for g in groups for layer in g)
        probs = np.concatenate([np.full(len(g), w / len(g)) for g, w in zip(groups, weights)])
        return layers, probs / probs.sum()

    def _layers_of_type(self, kind: LayerType, index: int) -> list[Layer]:
        if kind == LayerType.TERMINAL:
            return [Layer(index, int(kind), 0, 0, 0)]
        seconds = range(index) if kind in BINARY else (0,)
        return [Layer(index, int(kind), k, p1, p2) for k in self.kernels[kind] for p1 in range(index) for p2 in seconds]

"""BlockQNN's block space: NSC layers as actions, exploration by layer type, one-layer mutations."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from functools import cache, lru_cache
from typing import Any

import numpy as np

from blockqnn.codes import BINARY, DEFAULT_MAX_INDEX, KERNELS, Block, Layer, LayerType
from blockqnn.schema import declared, member, setting


@member
class NSCKernelSettings:
    """The kernels each kind of layer may take: a subset of the NSC's own."""

    conv: list[int] = setting(choices=KERNELS[LayerType.CONV])
    max_pool: list[int] = setting(choices=KERNELS[LayerType.MAX_POOL])
    avg_pool: list[int] = setting(choices=KERNELS[LayerType.AVG_POOL])


@member
class NSCSettings:
    """``space=nsc`` (conf/space/nsc.yaml), and ``NSCSpace``'s arguments."""

    max_index: int = setting(ge=2)  # one layer and the Terminal
    types: list[int] = setting(ge=int(min(LayerType)), le=int(max(LayerType)))
    kernels: NSCKernelSettings | None = setting()  # null: every kernel the NSC allows
    terminal_weight: float = setting(gt=0)  # the weight of stopping

    @staticmethod
    def rule(values: Mapping[str, Any]) -> str | None:
        types = values.get("types", [LayerType.TERMINAL, LayerType.CONV])
        if LayerType.TERMINAL not in types or len(set(types)) < 2:
            return f"types={list(types)}: expected 7 (Terminal) and at least one layer type"
        return None


@declared("space", NSCSettings)
class NSCSpace:
    """BlockQNN's block space: each action is the NSC tuple of the next layer.

    Exploration does not pick uniformly among all legal tuples: add/concat tuples grow with the square of the
    index and would drown Terminal, so nearly every random block would reach the maximum length. Instead a
    random step picks a layer *type* first (each allowed type equally likely, Terminal weighted by
    ``terminal_weight``), then a kernel and predecessors uniformly. With 7 types the chance to stop is about
    1/7 per layer, so random blocks have all lengths from 1 layer to the maximum (see tests/test_space.py).

    Add and concat take two *different* inputs in order (``pred1 < pred2``): ``(p, q)`` and ``(q, p)`` build the
    same layer, and would split the agent's experience between two actions; ``add(x, x)`` is ``2x``, which the
    next convolution's normalisation undoes, and ``concat(x, x)`` with its 1x1 convolution is a 1x1 convolution of
    ``x``, so both only repeat what other layers do (and drew 41% of random add/concat layers). The NSC format
    itself still accepts any order and equal inputs (hand-written blocks).
    """

    tabular = False

    def __init__(
        self,
        max_index: int = DEFAULT_MAX_INDEX,
        types: Sequence[int] = tuple(LayerType),
        kernels: dict[str, Sequence[int]] | None = None,
        terminal_weight: float = 1.0,
    ) -> None:
        self.max_index = max_index
        self.types = tuple(LayerType(t) for t in types)
        self.kernels = {t: tuple(KERNELS[t]) for t in self.types}
        for name, allowed in (kernels or {}).items():
            self.kernels[LayerType[name.upper()]] = tuple(allowed)
        self.terminal_weight = terminal_weight
        self.start: Layer = Layer(0, 0, 0, 0, 0)
        self._actions = cache(self._layers_at)

    def __getstate__(self) -> dict:
        """Sent to worker processes without its cache of legal layers (rebuilt there on first use)."""
        return {k: v for k, v in self.__dict__.items() if k != "_actions"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
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
        return _canonical_hash(arch, self.max_index)

    def decode_hashed(self, actions: Sequence[Layer]) -> tuple[str, str]:
        block = Block.of(actions, self.max_index)
        return str(block), block.canonical_hash()

    def _layers_at(self, index: int) -> tuple[tuple[Layer, ...], np.ndarray]:
        """All legal tuples at ``index`` and their exploration probabilities (type, then kernel, then preds)."""
        if index >= self.max_index:
            return (Layer(index, int(LayerType.TERMINAL), 0, 0, 0),), np.ones(1)
        groups = [self._layers_of_type(t, index) for t in self.types if t != LayerType.TERMINAL or index > 1]
        groups = [g for g in groups if g]  # add/concat need two earlier layers
        weights = [self.terminal_weight if g[0].type == LayerType.TERMINAL else 1.0 for g in groups]
        layers = tuple(layer for g in groups for layer in g)
        probs = np.concatenate([np.full(len(g), w / len(g)) for g, w in zip(groups, weights)])
        return layers, probs / probs.sum()

    def _layers_of_type(self, kind: LayerType, index: int) -> list[Layer]:
        if kind == LayerType.TERMINAL:
            return [Layer(index, int(kind), 0, 0, 0)]
        inputs = self._operand_pairs(index) if kind in BINARY else [(p, 0) for p in range(index)]
        return [Layer(index, int(kind), k, p1, p2) for k in self.kernels[kind] for p1, p2 in inputs]

    def _operand_pairs(self, index: int) -> list[tuple[int, int]]:
        """The inputs of an add/concat at ``index``: two different earlier layers, in order."""
        return list(itertools.combinations(range(index), 2))

    # ---- evolution and local search -------------------------------------------------------------------------------
    def mutate(self, actions: Sequence[Layer], rng: np.random.Generator) -> list[Layer]:
        """One legal change of one layer: a layer drawn uniformly, then one of its aspects that can change (type,
        kernel, an input) uniformly, then a new value uniformly among those this space allows. The block keeps
        its length and stays valid; a block no layer of which can change comes back unchanged."""
        layers = list(actions)
        order = rng.permutation(len(layers) - 1)
        for position in order:
            options = self._changes(layers[position])
            if options:
                aspect = options[int(rng.integers(len(options)))]
                layers[position] = aspect[int(rng.integers(len(aspect)))]
                return layers
        return layers

    def neighbours(self, actions: Sequence[Layer]) -> list[list[Layer]]:
        """Every block ``mutate`` can draw from this one: one layer's type, kernel or one input changed, in every
        legal way (the same length, valid)."""
        layers = list(actions)
        return [layers[:position] + [other] + layers[position + 1:]
                for position in range(len(layers) - 1)
                for aspect in self._changes(layers[position]) for other in aspect]

    def _changes(self, layer: Layer) -> list[list[Layer]]:
        """The other legal tuples at the layer's index that change only its type, only its kernel or only one
        input, grouped by that aspect (empty groups left out)."""
        legal = [a for a in self._actions(layer.index)[0] if a.type != LayerType.TERMINAL and a != layer]
        groups: dict[str, list[Layer]] = {"type": [], "kernel": [], "input": []}
        for other in legal:
            aspect = _changed_aspect(layer, other, self.kernels)
            if aspect:
                groups[aspect].append(other)
        return [g for g in groups.values() if g]


def _changed_aspect(layer: Layer, other: Layer, kernels: dict[LayerType, tuple[int, ...]]) -> str | None:
    """``type``, ``kernel`` or ``input`` when ``other`` differs from ``layer`` in that aspect alone, else None. A
    type change keeps the kernel where the new type allows it (else any), and the inputs where the arity stays
    (else keeps one input, or adds one)."""
    mine, theirs = set(layer.preds), set(other.preds)
    if other.type != layer.type:
        kernel_kept = other.kernel == layer.kernel or layer.kernel not in kernels[LayerType(other.type)]
        inputs_kept = mine == theirs if len(layer.preds) == len(other.preds) else mine <= theirs or theirs <= mine
        return "type" if kernel_kept and inputs_kept else None
    if other.kernel != layer.kernel:
        return "kernel" if mine == theirs else None
    return "input" if len(mine - theirs) == 1 else None


@lru_cache(maxsize=65536)
def _canonical_hash(arch: str, max_index: int) -> str:
    """Cached: the agents hash the same proposals and neighbours again and again (the renumbering is the costly
    part of a model-based agent's step)."""
    return Block.parse(arch, max_index).canonical_hash()

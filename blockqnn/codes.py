"""The Network Structure Code (NSC): a block as a list of 5-tuples ``(index, type, kernel, pred1, pred2)``.

Index 0 is the block's input; layers are numbered 1..n and the last one is Terminal. Layers that no other
layer consumes are concatenated into the block's output (docs/method.md#the-network-structure-code).

``python -m blockqnn.nsc check CODE`` and ``python -m blockqnn.nsc show CODE`` are the command-line face
(``__main__.py``, which may import the network builder: this module stays free of torch).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from numbers import Integral
from typing import Any, NamedTuple

from blockqnn.errors import NSCError


class LayerType(IntEnum):
    CONV = 1
    MAX_POOL = 2
    AVG_POOL = 3
    IDENTITY = 4
    ADD = 5
    CONCAT = 6
    TERMINAL = 7


KERNELS: dict[LayerType, tuple[int, ...]] = {
    LayerType.CONV: (1, 3, 5),
    LayerType.MAX_POOL: (1, 3),
    LayerType.AVG_POOL: (1, 3),
    LayerType.IDENTITY: (0,),
    LayerType.ADD: (0,),
    LayerType.CONCAT: (0,),
    LayerType.TERMINAL: (0,),
}
BINARY = (LayerType.ADD, LayerType.CONCAT)
DEFAULT_MAX_INDEX = 10
FIELDS = "5 integers (index, type, kernel, pred1, pred2)"


class Layer(NamedTuple):
    index: int
    type: int
    kernel: int
    pred1: int
    pred2: int

    def __str__(self) -> str:
        return "(" + ",".join(str(v) for v in self) + ")"

    @property
    def preds(self) -> tuple[int, ...]:
        """The layers this one reads (none for Terminal, two for add/concat)."""
        if self.type == LayerType.TERMINAL:
            return ()
        return (self.pred1, self.pred2) if self.type in BINARY else (self.pred1,)


_TUPLE = re.compile(r"\(([^()]*)\)")


@dataclass(frozen=True)
class Block:
    """A validated block. ``max_index=None`` lifts the space's depth limit (blocks read back from results)."""

    layers: tuple[Layer, ...]

    # ---- text and JSON forms -------------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, max_index: int | None = DEFAULT_MAX_INDEX) -> Block:
        """Parse and validate ``[(1,4,0,0,0),...]`` (spaces and the outer brackets optional) or the JSON form."""
        body = text.strip()
        if body.startswith("[["):
            return cls.from_json(body, max_index)
        if body.startswith("[") and body.endswith("]"):
            body = body[1:-1]
        tuples = _TUPLE.findall(body)
        if not tuples or _TUPLE.sub("", body).replace(",", "").strip():
            raise NSCError(f"not an NSC code: {text!r} (expected tuples like (1,4,0,0,0))")
        layers = []
        for i, inner in enumerate(tuples, start=1):
            fields = [f.strip() for f in inner.split(",")]
            if len(fields) != 5 or not all(re.fullmatch(r"-?\d+", f) for f in fields):
                raise NSCError(f"layer {i}: ({inner}) must be {FIELDS}")
            layers.append(Layer(*map(int, fields)))
        return cls.of(layers, max_index)

    @classmethod
    def of(cls, layers: Sequence[Sequence[int]], max_index: int | None = DEFAULT_MAX_INDEX) -> Block:
        """Validate rows of five integers (tuples, JSON lists, Hydra's list syntax): every list form checks here."""
        if isinstance(layers, str | bytes) or not isinstance(layers, Sequence):
            raise NSCError(f"an NSC code must be a list of layers, each {FIELDS}; got {layers!r}")
        block = cls(tuple(_layer(row, position) for position, row in enumerate(layers, start=1)))
        block.validate(max_index)
        return block

    @classmethod
    def from_json(cls, text: str, max_index: int | None = DEFAULT_MAX_INDEX) -> Block:
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise NSCError(f"not NSC JSON: {e}") from None
        return cls.of(rows, max_index)

    def to_json(self) -> str:
        return json.dumps([list(layer) for layer in self.layers])

    def __str__(self) -> str:
        return "[" + ",".join(str(layer) for layer in self.layers) + "]"

    # ---- rules -----------------------------------------------------------------------------------------------
    def validate(self, max_index: int | None = DEFAULT_MAX_INDEX) -> None:
        if not self.layers:
            raise NSCError("empty block: a block needs at least one layer and a Terminal")
        for position, layer in enumerate(self.layers, start=1):
            _check_layer(layer, position, len(self.layers), max_index)

    # ---- the DAG ------------------------------------------------------------------------------------------------
    @property
    def body(self) -> tuple[Layer, ...]:
        """Every layer but the Terminal."""
        return self.layers[:-1]

    def outputs(self) -> list[int]:
        """Indices of the layers no other layer consumes: concatenated into the block's output."""
        consumed = {p for layer in self.body for p in layer.preds}
        return [layer.index for layer in self.body if layer.index not in consumed]

    def edges(self) -> list[tuple[int, int]]:
        """(from, to) pairs of the DAG; the Terminal is the output node and receives every unconsumed layer."""
        out = self.layers[-1].index
        return [(p, layer.index) for layer in self.body for p in layer.preds] + [(i, out) for i in self.outputs()]

    def density(self) -> float:
        """Edges / nodes of the block DAG.

        Nodes: the input (0), every layer and the Terminal (the output node): ``n + 1`` for a code of n tuples.
        Edges: one per predecessor reference (two for add/concat) plus one from each unconsumed layer to
        the Terminal.
        """
        return len(self.edges()) / (len(self.layers) + 1)

    def canonical(self) -> str:
        """``canonical_block`` as text."""
        return str(self.canonical_block())

    def canonical_block(self) -> Block:
        """The block renumbered to the form shared by exactly the codes of the same DAG (add/concat operands swapped).

        Layers are renumbered in topological order, each time taking a ready layer with the smallest key
        (colour from in- and out-neighbour refinement, canonical predecessors). Where several ready layers share
        the smallest key, every choice is followed and the smallest resulting code is kept, so the form does not
        depend on how the code was numbered; of twins (same type, kernel, inputs and consumers, so swapping them
        changes nothing) one choice is followed. The form is the DAG renumbered, so equal forms are the same DAG.
        """
        colours, twin = _refined_colours(self), _twin_classes(self)
        frontier: list[tuple[dict[int, int], tuple[Layer, ...]]] = [({0: 0}, ())]
        for _ in self.body:
            extended = [step for new_id, rows in frontier
                        for step in _extensions(self.body, colours, twin, new_id, rows)]
            smallest = min(rows for _, rows in extended)
            frontier = [(new_id, rows) for new_id, rows in extended if rows == smallest]
        rows = frontier[0][1]
        return Block((*rows, Layer(len(rows) + 1, int(LayerType.TERMINAL), 0, 0, 0)))

    def canonical_hash(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:16]


def _layer(row: Any, position: int) -> Layer:
    """One row of a list form; 1.0, true, null or [0] are mistakes to report, not numbers to coerce."""
    if type(row) is Layer and all(type(value) is int for value in row):
        return row  # the agents' own actions: already five integers
    if isinstance(row, str | bytes) or not isinstance(row, Sequence) or len(row) != 5:
        raise NSCError(f"layer {position}: expected {FIELDS}, got {row!r}")
    for value in row:
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise NSCError(f"layer {position}: fields must be integers, got {value!r}")
    return Layer(*map(int, row))


def _check_layer(layer: Layer, position: int, length: int, max_index: int | None) -> None:
    def fail(rule: str) -> None:
        raise NSCError(f"layer {position} {layer}: {rule}")

    if layer.index != position:
        fail(f"index must be {position} (indices run 1..n consecutively)")
    if max_index is not None and layer.index > max_index:
        fail(f"index exceeds the space's maximum index {max_index}")
    if layer.type not in LayerType._value2member_map_:
        fail(f"unknown type {layer.type} (types are 1..7)")
    kind = LayerType(layer.type)
    if layer.kernel not in KERNELS[kind]:
        fail(f"kernel {layer.kernel} not allowed for {kind.name.lower()} (allowed: {KERNELS[kind]})")
    if kind == LayerType.TERMINAL:
        if position != length:
            fail("Terminal must be the last layer, and only one Terminal is allowed")
        if layer.pred1 or layer.pred2:
            fail("Terminal takes no predecessors (pred1 = pred2 = 0)")
        if position == 1:
            fail("a block needs at least one layer before the Terminal")
        return
    if position == length:
        fail("the last layer must be Terminal (type 7)")
    for name, pred in zip(("pred1", "pred2"), layer.preds):
        if not 0 <= pred < layer.index:
            fail(f"{name} {pred} refers to no earlier layer (must be 0..{layer.index - 1})")
    if kind not in BINARY and layer.pred2 != 0:
        fail("pred2 is only for add/concat (must be 0)")


def _refined_colours(block: Block) -> dict[int, str]:
    """Colour refinement over in- and out-neighbours (1-WL), so that symmetric-looking nodes are told apart."""
    body = block.body
    consumers: dict[int, list[int]] = {layer.index: [] for layer in body}
    consumers[0] = []
    for layer in body:
        for p in layer.preds:
            consumers[p].append(layer.index)
    colour = {0: "in", **{layer.index: f"{layer.type}.{layer.kernel}" for layer in body}}
    preds = {0: (), **{layer.index: layer.preds for layer in body}}
    for _ in range(len(body) + 1):
        refined = {
            node: hashlib.sha1(
                repr(
                    (colour[node], sorted(colour[p] for p in preds[node]), sorted(colour[c] for c in consumers[node]))
                ).encode()
            ).hexdigest()[:12]
            for node in colour
        }
        if len(set(refined.values())) == len(set(colour.values())):
            return refined
        colour = refined
    return colour


def _canon_preds(layer: Layer, new_id: dict[int, int]) -> tuple[int, ...]:
    ids = tuple(new_id[p] for p in layer.preds)
    return tuple(sorted(ids)) if layer.type in BINARY else ids


def _twin_classes(block: Block) -> dict[int, tuple]:
    """Per layer, what makes it interchangeable with another: type, kernel, inputs and consumers (with multiplicity).
    Swapping two layers of one class maps the DAG onto itself."""
    consumers: dict[int, list[int]] = {layer.index: [] for layer in block.body}
    for layer in block.body:
        for p in layer.preds:
            if p:
                consumers[p].append(layer.index)
    return {layer.index: (layer.type, layer.kernel, tuple(sorted(layer.preds)), tuple(sorted(consumers[layer.index])))
            for layer in block.body}


def _extensions(body: Sequence[Layer], colours: dict[int, str], twin: dict[int, tuple], new_id: dict[int, int],
                rows: tuple[Layer, ...]) -> list[tuple[dict[int, int], tuple[Layer, ...]]]:
    """Every way to number one more layer: the ready layers with the smallest key, one per twin class."""
    ready = [layer for layer in body if layer.index not in new_id and all(p in new_id for p in layer.preds)]
    keys = {layer.index: (colours[layer.index], _canon_preds(layer, new_id)) for layer in ready}
    smallest = min(keys.values())
    out, classes = [], set()
    for layer in ready:
        if keys[layer.index] != smallest or twin[layer.index] in classes:
            continue
        classes.add(twin[layer.index])
        preds = smallest[1]
        row = Layer(len(rows) + 1, layer.type, layer.kernel, preds[0], preds[1] if len(preds) > 1 else 0)
        out.append(({**new_id, layer.index: len(new_id)}, (*rows, row)))
    return out

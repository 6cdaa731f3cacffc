"""Blocks shared by the tests: the paper's hand-designed blocks and helpers to draw and renumber blocks."""

from __future__ import annotations

import random

import numpy as np

from blockqnn.codes import BINARY, Block, Layer
from blockqnn.spaces import NSCSpace, explore

RESIDUAL = "[(1,4,0,0,0),(2,1,3,1,0),(3,1,3,2,0),(4,5,0,1,3),(5,7,0,0,0)]"
INCEPTION = (
    "[(1,4,0,0,0),(2,1,1,1,0),(3,1,3,2,0),(4,1,1,1,0),(5,1,5,4,0),(6,6,0,3,5),"
    "(7,2,3,1,0),(8,1,1,7,0),(9,6,0,6,8),(10,7,0,0,0)]"
)


def random_block(space: NSCSpace, rng: np.random.Generator) -> Block:
    """A block drawn with the space's exploration distribution (what epsilon = 1 samples)."""
    return Block.of(explore(space, rng), space.max_index)


def renumber(block: Block, rng: random.Random) -> Block:
    """The same DAG written in another topological order, with add/concat operands randomly swapped."""
    new_id, order = {0: 0}, []
    pending = list(block.body)
    while pending:
        ready = [layer for layer in pending if all(p in new_id for p in layer.preds)]
        layer = rng.choice(ready)
        pending.remove(layer)
        new_id[layer.index] = len(new_id)
        order.append(layer)
    rows = []
    for layer in order:
        p1, p2 = new_id[layer.pred1], new_id[layer.pred2] if layer.type in BINARY else 0
        if layer.type in BINARY and rng.random() < 0.5:
            p1, p2 = p2, p1
        rows.append(Layer(new_id[layer.index], layer.type, layer.kernel, p1, p2))
    rows.append(Layer(len(rows) + 1, 7, 0, 0, 0))
    return Block.of(rows, len(rows))

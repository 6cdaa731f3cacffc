"""A block as a fixed-size vector of numbers, the input of a reward model (docs/method.md#a-reward-model).

Two kinds of block travel through a search as text, and each has its own encoding:

* a NAS-Bench-201 cell (``|op~0|+|op~0|op~1|+...``): the one-hot of the op on each of its 6 edges (30 numbers),
  which says everything about the cell;
* an NSC block (``[(1,1,3,0,0),...]``), first renumbered to its canonical form so that equal DAGs encode alike:
  the one-hot of each layer's operation (type and kernel) by position, the adjacency of the DAG (which layer reads
  which, the output node included), and whole-block summaries a tree can split on directly: how many layers of
  each operation, the depth, the longest chain of layers, the number of outputs and the paper's density.
  Layers past ``POSITIONS`` count in the summaries only.
"""

from __future__ import annotations

import functools

import numpy as np

from blockqnn.codes import BINARY, KERNELS, Block, LayerType
from blockqnn.spaces.nasbench201 import EDGE_SOURCES, OPS, parse_arch

POSITIONS = 10  # NSC layer positions encoded one by one (the default space's max_index); later ones are counted
NSC_OPS = tuple((t, k) for t in LayerType if t != LayerType.TERMINAL for k in KERNELS[t])


@functools.lru_cache(maxsize=65536)
def encode(arch: str) -> np.ndarray:
    """The block's feature vector (read only: cached, since a search encodes the same blocks again and again)."""
    vector = _nasbench201(arch) if arch.lstrip().startswith("|") else _nsc(arch)
    vector.setflags(write=False)
    return vector


def encode_all(archs: list[str]) -> np.ndarray:
    """One row per block."""
    return np.stack([encode(a) for a in archs]) if archs else np.zeros((0, 0))


def _nasbench201(arch: str) -> np.ndarray:
    ops = parse_arch(arch)
    vector = np.zeros((len(EDGE_SOURCES), len(OPS)))
    vector[np.arange(len(ops)), [OPS.index(op) for op in ops]] = 1.0
    return vector.ravel()


def _nsc(arch: str) -> np.ndarray:
    block = Block.parse(arch, max_index=None).canonical_block()
    body = block.body
    kinds = [NSC_OPS.index((LayerType(layer.type), layer.kernel if layer.type not in BINARY else 0)) for layer in body]
    by_position = np.zeros((POSITIONS, len(NSC_OPS)))
    for position, kind in enumerate(kinds[:POSITIONS]):
        by_position[position, kind] = 1.0
    nodes = POSITIONS + 2  # the input, POSITIONS layers, the output node
    adjacency = np.zeros((nodes, nodes))
    out = nodes - 1
    for source, target in block.edges():
        target = out if target == block.layers[-1].index else target
        if source <= POSITIONS and (target <= POSITIONS or target == out):
            adjacency[source, target] = 1.0
    upper = adjacency[np.triu_indices(nodes, k=1)]
    counts = np.bincount(kinds, minlength=len(NSC_OPS)).astype(float)
    summary = [len(body), _longest_chain(block), len(block.outputs()), block.density()]
    return np.concatenate([by_position.ravel(), upper, counts, summary])


def _longest_chain(block: Block) -> int:
    """Layers on the longest path from the input to the output."""
    depth = {0: 0}
    for layer in block.body:
        depth[layer.index] = 1 + max(depth[p] for p in layer.preds)
    return max(depth[i] for i in block.outputs())


__all__ = ["NSC_OPS", "POSITIONS", "encode", "encode_all"]

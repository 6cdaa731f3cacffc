"""``python -m blockqnn.nsc``: check or show a Network Structure Code. The codes themselves live in
``blockqnn.codes``; their names are re-exported here for ``from blockqnn.codes import Block``."""

from blockqnn.codes import BINARY, DEFAULT_MAX_INDEX, KERNELS, Block, Layer, LayerType, NSCError

__all__ = ["BINARY", "DEFAULT_MAX_INDEX", "KERNELS", "Block", "Layer", "LayerType", "NSCError"]

import itertools
from collections import Counter

import numpy as np
import pytest

from blockqnn.codes import BINARY, Block, Layer, LayerType
from blockqnn.spaces import NSCSpace, explore
from tests.blocks import random_block


def test_legal_next_layers_follow_the_index():
    space = NSCSpace(max_index=4)
    first = space.actions(space.start)
    assert all(a.index == 1 for a in first)
    assert not any(a.type == LayerType.TERMINAL for a in first)  # a block has at least one layer
    assert not any(a.type in BINARY for a in first)  # add/concat need two different inputs
    at3 = space.actions(Layer(2, 1, 3, 1, 0))
    # conv 3 kernels x 3 preds, 2 pools x 2 kernels x 3, identity 3, add/concat 3 ordered pairs each, terminal
    assert len(at3) == 9 + 12 + 3 + 6 + 1
    assert all(a.pred1 < 3 and a.pred2 < 3 for a in at3)
    assert all(a.pred1 < a.pred2 for a in at3 if a.type in BINARY)
    assert space.actions(Layer(3, 1, 3, 1, 0)) == (Layer(4, 7, 0, 0, 0),)


def test_space_config_restricts_types_and_kernels():
    space = NSCSpace(max_index=5, types=[1, 5, 7], kernels={"conv": [3]})
    kinds = {(a.type, a.kernel) for a in space.actions(Layer(1, 1, 3, 0, 0))}
    assert kinds == {(1, 3), (5, 0), (7, 0)}
    with pytest.raises(ValueError, match="kernels.conv"):
        NSCSpace(kernels={"conv": [7]})
    with pytest.raises(ValueError, match="Terminal"):
        NSCSpace(types=[1, 2])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"types": [7]}, r"^space\.types=\[7\]: expected 7 \(Terminal\) and at least one layer type$"),
        ({"types": [1, 9, 7]}, r"^space\.types=\[1, 9, 7\]: expected a list of integers each >= 1 and <= 7$"),
        ({"terminal_weight": 0}, r"^space\.terminal_weight=0: expected a number > 0$"),
        ({"max_index": 1}, r"^space\.max_index=1: expected an integer >= 2$"),
    ],
)
def test_unusable_space_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NSCSpace(**kwargs)


def test_exploration_probabilities_pick_type_first():
    space = NSCSpace()
    state = Layer(5, 1, 3, 0, 0)
    actions, probs = space.actions(state), space.exploration_probs(state)
    assert probs.sum() == pytest.approx(1.0)
    by_type = Counter()
    for a, p in zip(actions, probs):
        by_type[a.type] += p
    assert all(v == pytest.approx(1 / 7) for v in by_type.values())


def lengths(space, draw, n=2000):
    rng = np.random.default_rng(0)
    return Counter(len(draw(space, rng).layers) for _ in range(n))


def uniform_block_length(space, rng):
    state, n = space.start, 0
    while True:
        actions = space.actions(state)
        state, n = actions[rng.integers(len(actions))], n + 1
        if space.is_final(state):
            return type("B", (), {"layers": range(n)})


def test_random_blocks_have_all_lengths_not_just_the_maximum():
    space = NSCSpace(max_index=10)
    ours = lengths(space, random_block)
    uniform = lengths(space, uniform_block_length)
    print("\nblock length (tuples incl. Terminal): type-first sampling vs uniform over tuples")
    for n in range(2, 11):
        print(f"  {n:>2}: {ours[n] / 2000:6.1%}  {uniform[n] / 2000:6.1%}")
    assert set(ours) == set(range(2, 11))
    assert ours[10] / 2000 < 0.4  # (6/7)^8 = 0.29 expected
    assert ours[2] / 2000 > 0.1  # 1/7 = 0.14 expected
    assert uniform[10] / 2000 > 0.8  # the pitfall the type-first distribution avoids
    mean = sum(n * c for n, c in ours.items()) / 2000
    assert 5.0 < mean < 7.5


class AnyOperandOrder(NSCSpace):
    """The space as it was before add/concat inputs were ordered: any two earlier layers, equal ones too."""

    def _operand_pairs(self, index):
        return list(itertools.product(range(index), repeat=2))


def composition(space: NSCSpace, n: int = 2000) -> dict[str, float]:
    """What random blocks (the exploration distribution) are made of."""
    rng = np.random.default_rng(0)
    blocks = [Block.of(explore(space, rng), space.max_index) for _ in range(n)]
    binary = [layer for b in blocks for layer in b.body if layer.type in BINARY]
    first = [b.body[0] for b in blocks]
    return {
        "blocks without a convolution": np.mean([all(la.type != LayerType.CONV for la in b.body) for b in blocks]),
        "add/concat layers with equal inputs": np.mean([layer.pred1 == layer.pred2 for layer in binary]),
        "add/concat layers with inputs reversed": np.mean([layer.pred1 > layer.pred2 for layer in binary]),
        "blocks starting with add/concat(x, x)": np.mean([layer.type in BINARY for layer in first]),
        "layers that are add/concat": len(binary) / sum(len(b.body) for b in blocks),
    }


def test_ordered_operands_remove_degenerate_and_duplicate_layers():
    before, after = composition(AnyOperandOrder()), composition(NSCSpace())
    print("\nrandom blocks (2,000 each): any operand order -> two different inputs in order")
    for key in before:
        print(f"  {key:40s} {before[key]:6.1%} -> {after[key]:6.1%}")
    assert before["add/concat layers with equal inputs"] > 0.3
    assert before["add/concat layers with inputs reversed"] > 0.2
    assert before["blocks starting with add/concat(x, x)"] > 0.25
    assert after["add/concat layers with equal inputs"] == after["add/concat layers with inputs reversed"] == 0
    assert after["blocks starting with add/concat(x, x)"] == 0
    assert after["blocks without a convolution"] < before["blocks without a convolution"] - 0.02
    assert 0.2 < after["layers that are add/concat"] < before["layers that are add/concat"]

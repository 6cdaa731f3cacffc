import json
import random
from collections import Counter

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockqnn.codes import FIELDS, Block, Layer, NSCError
from blockqnn.nsc.__main__ import main
from blockqnn.spaces import NSCSpace
from tests.blocks import INCEPTION, RESIDUAL, random_block, renumber


def test_text_form_round_trips_and_accepts_spaces_without_brackets():
    spaced = RESIDUAL.strip("[]").replace("),(", ") (")
    assert str(Block.parse(spaced)) == RESIDUAL
    assert str(Block.parse(RESIDUAL)) == RESIDUAL
    assert str(Block.parse(INCEPTION)) == INCEPTION


def test_json_form_round_trips():
    block = Block.parse(INCEPTION)
    assert Block.from_json(block.to_json()) == block
    assert block.to_json().startswith("[[1, 4, 0, 0, 0]")
    assert Block.parse(block.to_json()) == block  # wherever a code is accepted, so is its JSON form
    with pytest.raises(NSCError, match="layer 2"):
        Block.parse("[[1,1,3,0,0],[3,7,0,0,0]]")


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("", "not an NSC code"),
        ("(1,4,0,0)(2,7,0,0,0)", "layer 1: (1,4,0,0) must be 5 integers"),
        ("(1,4,0,0,0)(3,7,0,0,0)", "layer 2 (3,7,0,0,0): index must be 2"),
        ("(1,8,0,0,0)(2,7,0,0,0)", "layer 1 (1,8,0,0,0): unknown type 8"),
        ("(1,1,7,0,0)(2,7,0,0,0)", "layer 1 (1,1,7,0,0): kernel 7 not allowed for conv"),
        ("(1,2,5,0,0)(2,7,0,0,0)", "kernel 5 not allowed for max_pool"),
        ("(1,4,3,0,0)(2,7,0,0,0)", "kernel 3 not allowed for identity"),
        ("(1,1,3,1,0)(2,7,0,0,0)", "layer 1 (1,1,3,1,0): pred1 1 refers to no earlier layer"),
        ("(1,1,3,0,0)(2,5,0,0,2)(3,7,0,0,0)", "layer 2 (2,5,0,0,2): pred2 2 refers to no earlier layer"),
        ("(1,1,3,0,0)(2,1,3,1,1)(3,7,0,0,0)", "layer 2 (2,1,3,1,1): pred2 is only for add/concat"),
        ("(1,1,3,0,0)(2,7,0,0,0)(3,7,0,0,0)", "layer 2 (2,7,0,0,0): Terminal must be the last layer"),
        ("(1,1,3,0,0)(2,1,3,1,0)", "layer 2 (2,1,3,1,0): the last layer must be Terminal"),
        ("(1,7,0,0,0)", "layer 1 (1,7,0,0,0): a block needs at least one layer"),
        ("(1,1,3,0,0)(2,7,0,1,0)", "Terminal takes no predecessors"),
        ("(1,1,3,0,0)(2,1,3,-1,0)(3,7,0,0,0)", "pred1 -1 refers to no earlier layer"),
    ],
)
def test_each_rule_names_layer_and_rule(code, message):
    with pytest.raises(NSCError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Block.parse(code)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("[[1.0,1,3,0,0],[2,7,0,0,0]]", "layer 1: fields must be integers, got 1.0"),
        ("[[1,1,3,0,0],[2,7,0,0,true]]", "layer 2: fields must be integers, got True"),
        ("[[1,1,3,[0],0],[2,7,0,0,0]]", "layer 1: fields must be integers, got [0]"),
        ("[[1,1,3,null,0],[2,7,0,0,0]]", "layer 1: fields must be integers, got None"),
        ("[[1,[1],3,0,0],[2,7,0,0,0]]", "layer 1: fields must be integers, got [1]"),
        ('[[1,1,3,"0",0],[2,7,0,0,0]]', "layer 1: fields must be integers, got '0'"),
        ("[[1,1,3,0],[2,7,0,0,0]]", f"layer 1: expected {FIELDS}, got [1, 1, 3, 0]"),
        ("[[1,1,3,0,0],[2,7,0,0,0,0]]", f"layer 2: expected {FIELDS}, got [2, 7, 0, 0, 0, 0]"),
        ("[[1,1,3,0,0],5]", f"layer 2: expected {FIELDS}, got 5"),
        ('[[1,1,3,0,0],"(2,7,0,0,0)"]', f"layer 2: expected {FIELDS}, got '(2,7,0,0,0)'"),
    ],
)
def test_list_forms_accept_only_rows_of_five_integers(capsys, code, message):
    with pytest.raises(NSCError) as raised:
        Block.parse(code)
    assert str(raised.value).startswith(message)
    assert main(["check", code]) == 1
    assert capsys.readouterr().err.splitlines() == [f"error: {raised.value}"]


@pytest.mark.parametrize("rows", [{"layers": []}, 5, None, "(1,1,3,0,0)(2,7,0,0,0)", [1, 1, 3, 0, 0]])
def test_a_list_form_must_be_a_list_of_rows(rows):
    message = "an NSC code must be a list of layers" if not isinstance(rows, list) else "layer 1: expected 5 integers"
    with pytest.raises(NSCError, match=message):
        Block.from_json(json.dumps(rows))
    with pytest.raises(NSCError, match=message):
        Block.of(rows)


def test_block_of_takes_tuples_lists_and_numpy_integers_as_plain_ints():
    rows = [(1, 1, 3, 0, 0), [2, 7, 0, 0, 0]]
    assert Block.of(rows) == Block.parse("(1,1,3,0,0)(2,7,0,0,0)")
    from_numpy = Block.of([list(map(np.int64, row)) for row in rows])
    assert from_numpy == Block.of(rows) and all(type(v) is int for layer in from_numpy.layers for v in layer)


def test_maximum_index_of_the_space_is_enforced():
    Block.parse(INCEPTION, max_index=10)
    with pytest.raises(NSCError, match=r"layer 10 \(10,7,0,0,0\): index exceeds the space's maximum index 9"):
        Block.parse(INCEPTION, max_index=9)


def test_density_counts_input_layers_terminal_and_output_edges():
    # residual: nodes 0..5 (6); edges 1<-0, 2<-1, 3<-2, 4<-1, 4<-3, T<-4 (6)
    assert Block.parse(RESIDUAL).density() == pytest.approx(6 / 6)
    # inception: nodes 0..10 (11); 12 edges (9 layers, two concats, one output edge)
    assert Block.parse(INCEPTION).density() == pytest.approx(12 / 11)
    # two unconsumed branches both feed the output: 2 + 2 edges over 4 nodes
    assert Block.parse("(1,1,3,0,0)(2,1,1,0,0)(3,7,0,0,0)").density() == pytest.approx(4 / 4)


def test_renumbered_and_swapped_codes_share_the_hash():
    a = Block.parse("(1,1,3,0,0)(2,1,5,0,0)(3,5,0,1,2)(4,7,0,0,0)")
    b = Block.parse("(1,1,5,0,0)(2,1,3,0,0)(3,5,0,1,2)(4,7,0,0,0)")
    assert a.canonical_hash() == b.canonical_hash()


def test_duplicate_branches_are_not_confused_with_their_consumers():
    # two identical convs from the input; a pool reads one of them: which one is irrelevant
    a = Block.parse("(1,1,3,0,0)(2,1,3,0,0)(3,2,3,1,0)(4,7,0,0,0)")
    b = Block.parse("(1,1,3,0,0)(2,1,3,0,0)(3,2,3,2,0)(4,7,0,0,0)")
    assert a.canonical_hash() == b.canonical_hash()


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("(1,1,3,0,0)(2,7,0,0,0)", "(1,1,5,0,0)(2,7,0,0,0)"),  # kernel
        ("(1,2,3,0,0)(2,7,0,0,0)", "(1,3,3,0,0)(2,7,0,0,0)"),  # max vs avg pooling
        ("(1,1,3,0,0)(2,7,0,0,0)", "(1,1,3,0,0)(2,1,3,0,0)(3,7,0,0,0)"),  # a duplicate branch is a real branch
        ("(1,1,3,0,0)(2,1,3,1,0)(3,7,0,0,0)", "(1,1,3,0,0)(2,1,3,0,0)(3,7,0,0,0)"),  # chain vs parallel
        ("(1,1,3,0,0)(2,5,0,1,1)(3,7,0,0,0)", "(1,1,3,0,0)(2,1,3,0,0)(3,5,0,1,2)(4,7,0,0,0)"),  # shared vs two
        ("(1,1,3,0,0)(2,5,0,0,1)(3,7,0,0,0)", "(1,1,3,0,0)(2,6,0,0,1)(3,7,0,0,0)"),  # add vs concat
    ],
)
def test_different_dags_get_different_hashes(left, right):
    assert Block.parse(left).canonical_hash() != Block.parse(right).canonical_hash()


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_any_space_block_round_trips_and_hashes_invariantly(seed, shuffle_seed):
    import numpy as np

    block = random_block(NSCSpace(), np.random.default_rng(seed))
    assert Block.parse(str(block)) == block
    assert Block.from_json(block.to_json()) == block
    other = renumber(block, random.Random(shuffle_seed))
    assert other.canonical_hash() == block.canonical_hash()
    canonical = Block.parse(block.canonical())
    assert canonical.canonical() == block.canonical()
    assert canonical.density() == pytest.approx(block.density())


def test_cli_check(capsys):
    assert main(["check", RESIDUAL]) == 0
    assert capsys.readouterr().out.strip() == "ok"
    assert main(["check", "(1,1,4,0,0)(2,7,0,0,0)"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: layer 1 (1,1,4,0,0): kernel 4 not allowed for conv (allowed: (1, 3, 5))"


def test_cli_show_prints_table_hash_density_and_network_size(capsys):
    assert main(["show", RESIDUAL, "--template", "cifar", "--dataset", "cifar10"]) == 0
    out = capsys.readouterr().out
    block = Block.parse(RESIDUAL)
    assert f"hash: {block.canonical_hash()}" in out
    assert "density: 1.0000" in out
    assert "  4  add" in out and "-> output" in out
    assert "params: " in out and "flops per image: " in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--template", "nope"], "nope"),
        (["--template", "imagenet", "--dataset", "digits"], "does not fit 8x8 images"),
        (["--template", "cifar", "--dataset", "imagefolder"], "counts its classes from the data"),
    ],
)
def test_cli_show_bad_template_or_dataset_is_one_clear_error(capsys, args, message):
    assert main(["show", RESIDUAL, *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_cli_show_dataset_without_template_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["show", RESIDUAL, "--dataset", "cifar100"])
    assert exit_info.value.code == 2
    assert "--dataset sizes a network: give --template too" in capsys.readouterr().err


# ---- the canonical form is exact ------------------------------------------------------------------------------
SAME_DAG = (  # layers 2 and 3 swapped: four identical convolutions, summed in pairs
    "[(1,1,3,0,0),(2,1,3,0,0),(3,1,3,0,0),(4,1,3,0,0),(5,5,0,1,2),(6,5,0,3,4),(7,7,0,0,0)]",
    "[(1,1,3,0,0),(2,1,3,0,0),(3,1,3,0,0),(4,1,3,0,0),(5,5,0,1,3),(6,5,0,2,4),(7,7,0,0,0)]",
)


def test_symmetric_codes_of_one_dag_share_the_hash():
    left, right = (Block.parse(code) for code in SAME_DAG)
    assert left.canonical() == right.canonical() and left.canonical_hash() == right.canonical_hash()


def dag(block: Block) -> nx.DiGraph:
    """The block as a labelled graph: nodes carry (type, kernel), edges how often a layer reads its input."""
    graph = nx.DiGraph()
    graph.add_node(0, label=(0, 0))
    for layer in block.body:
        graph.add_node(layer.index, label=(layer.type, layer.kernel))
        for p in layer.preds:
            count = graph.edges[p, layer.index]["count"] + 1 if graph.has_edge(p, layer.index) else 1
            graph.add_edge(p, layer.index, count=count)
    return graph


def isomorphic(a: Block, b: Block) -> bool:
    return nx.is_isomorphic(dag(a), dag(b), node_match=lambda x, y: x["label"] == y["label"],
                            edge_match=lambda x, y: x["count"] == y["count"])


class AnyOperandOrder(NSCSpace):
    """Add/concat of any two earlier layers, equal ones too (as hand-written codes may be)."""

    def _operand_pairs(self, index):
        return [(p, q) for p in range(index) for q in range(index)]


# Few layer kinds make many layers alike: the ties a canonical form must break without depending on the numbering.
TIE_HEAVY = AnyOperandOrder(types=[1, 4, 5, 7], kernels={"conv": [3]})


def summed_convolutions(rng: np.random.Generator) -> Block:
    """Two to five identical convolutions of the input, then adds of two earlier layers: the family of SAME_DAG,
    where numbering-dependent tie-breaking goes wrong."""
    layers = [Layer(i, 1, 3, 0, 0) for i in range(1, int(rng.integers(3, 7)))]
    while len(layers) < 9 and (len(layers) < 6 or rng.random() < 0.7):
        p, q = sorted(int(i) for i in rng.choice(len(layers) + 1, 2, replace=False))
        layers.append(Layer(len(layers) + 1, 5, 0, p, q))
    return Block.of([*layers, Layer(len(layers) + 1, 7, 0, 0, 0)])


def block_pool(per_kind: int = 600) -> list[Block]:
    rng, shuffle = np.random.default_rng(7), random.Random(7)
    draws = [lambda: summed_convolutions(rng)] + [
        lambda space=space: random_block(space, rng)
        for space in (TIE_HEAVY, NSCSpace(types=[1, 5, 6, 7], kernels={"conv": [3]}), NSCSpace())
    ]
    pool = []
    for draw in draws:
        for _ in range(per_kind):
            block = draw()
            pool += [block, renumber(block, shuffle), renumber(block, shuffle)]
    return pool


def test_one_hash_per_dag_and_one_dag_per_hash():
    """Thousands of random blocks, each with two random renumberings (operands swapped at random): a hash is shared
    exactly by the codes a graph-isomorphism check calls the same DAG."""
    pool = block_pool()
    groups: dict[str, list[Block]] = {}
    for block in pool:
        groups.setdefault(block.canonical_hash(), []).append(block)
    for members in groups.values():
        assert all(isomorphic(members[0], other) for other in members[1:]), [str(b) for b in members]
        assert isomorphic(members[0], Block.parse(members[0].canonical()))
    by_shape: dict[tuple, list[Block]] = {}  # different hashes: only graphs alike in every invariant could be one DAG
    for members in groups.values():
        kinds = Counter((layer.type, layer.kernel, len(set(layer.preds))) for layer in members[0].body)
        shape = tuple(sorted(kinds.items()))
        by_shape.setdefault(shape, []).append(members[0])
    pairs = [(a, b) for alike in by_shape.values() for i, a in enumerate(alike) for b in alike[i + 1:]]
    print(f"\n{len(pool)} codes, {len(groups)} hashes; {len(pairs)} alike pairs with different hashes checked")
    assert len(pool) > 3 * len(groups) / 2 and len(pairs) > 1000
    assert not any(isomorphic(a, b) for a, b in pairs)

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blockqnn.codes import Block
from blockqnn.network import Template, complexity
from blockqnn.spaces import NSCSpace
from tests.blocks import INCEPTION, RESIDUAL, random_block


def pcc_params(cin, cout, k):  # conv weights (no bias) + batch-norm scale and shift
    return cin * cout * k * k + 2 * cout


def test_residual_cifar_network_parameter_count_by_hand():
    f, classes = 32, 10
    stem = 3 * f * 9 + 2 * f
    stage = [2 * pcc_params(w, w, 3) + (pcc_params(w // 2, w, 1) if i else 0) for i, w in enumerate((f, 2 * f, 4 * f))]
    head = 4 * f * classes + classes
    model = Template("conv", 3, 1, f).build(Block.parse(RESIDUAL), 3, classes)
    assert sum(p.numel() for p in model.parameters()) == stem + sum(stage) + head


def test_inception_cifar_network_parameter_count_by_hand():
    f, classes = 32, 10

    def block(w, cin):
        convs = pcc_params(w, w, 1) * 3 + pcc_params(w, w, 3) + pcc_params(w, w, 5)  # layers 2, 4, 8; 3; 5
        concats = 2 * pcc_params(2 * w, w, 1)  # layers 6 and 9; layer 9 is the only output
        return convs + concats + (pcc_params(cin, w, 1) if cin != w else 0)

    expected = 3 * f * 9 + 2 * f + block(f, f) + block(2 * f, f) + block(4 * f, 2 * f) + 4 * f * classes + classes
    model = Template("conv", 3, 1, f).build(Block.parse(INCEPTION), 3, classes)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("code", [RESIDUAL, INCEPTION])
def test_paper_blocks_train_forward_and_backward(code):
    model = Template("conv", 3, 2, 8).build(Block.parse(code), 3, 10)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_several_outputs_are_merged_back_to_stage_width():
    block = Block.parse("(1,1,3,0,0)(2,1,1,0,0)(3,2,3,0,0)(4,7,0,0,0)")
    model = Template("conv", 1, 1, 8).build(block, 3, 10)
    features = model[:2](torch.randn(1, 3, 16, 16))
    assert features.shape == (1, 8, 16, 16)


def test_imagenet_template_downsamples_to_7x7():
    model = Template("imagenet", 4, 1, 8).build(Block.parse(RESIDUAL), 3, 1000)
    trunk = model[:-4]
    assert trunk(torch.randn(1, 3, 224, 224)).shape == (1, 64, 7, 7)


def test_flops_on_meta_match_a_real_model_and_scale_with_kernel():
    small = Block.parse("(1,1,1,0,0)(2,7,0,0,0)")
    big = Block.parse("(1,1,5,0,0)(2,7,0,0,0)")
    template = Template("conv", 3, 1, 8)
    real = complexity(template.build(small, 3, 10), 3, 32)
    with torch.device("meta"):
        meta = complexity(template.build(small, 3, 10), 3, 32)
    assert real == meta
    # one 8x8 1x1 conv at 32x32 is 2*64*1024 FLOPs; a 5x5 one is 25 times that
    delta = complexity(template.build(big, 3, 10), 3, 32)[1] - real[1]
    per_stage_1x1 = [2 * w * w * s * s for w, s in ((8, 32), (16, 16), (32, 8))]
    assert delta == pytest.approx(24 * sum(per_stage_1x1))


def test_unknown_stem_fails_early():
    with pytest.raises(ValueError, match="template.stem"):
        Template("resnet")


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_any_space_block_builds_runs_and_costs_flops(seed):
    block = random_block(NSCSpace(), np.random.default_rng(seed))
    model = Template("conv", 3, 1, 4).build(block, 3, 10)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.square().mean().backward()
    assert complexity(model, 3, 32)[1] > 0

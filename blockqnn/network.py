"""From a block to a network: the block as an ``nn.Module``, stacking templates, parameters and FLOPs.

Channel rules (every node of a block carries the stage width C, so any two nodes can be added):
- Convolution is a pre-activation cell ReLU -> Conv(k, stride 1, same padding, no bias) -> BatchNorm, C -> C.
- Pooling keeps width and spatial size (stride 1, same padding); identity is the node itself.
- Add sums two C-wide nodes; concat joins two and a 1x1 PCC brings the 2C channels back to C.
- The block input is projected to C by a 1x1 PCC only where its width differs (the first block of a stage).
- The unconsumed layers are concatenated into the block output and, when there are several, a 1x1 PCC
  brings them back to C: the output width is the stage width whatever the fan-in.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from blockqnn.codes import Block, Layer, LayerType
from blockqnn.errors import TemplateMismatch
from blockqnn.schema import POSITIVE, declared, member, setting


def pcc(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    """Pre-activation convolution cell: ReLU -> Conv -> BatchNorm."""
    return nn.Sequential(
        nn.ReLU(),
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def _layer_op(layer: Layer, width: int) -> nn.Module:
    kind = LayerType(layer.type)
    if kind == LayerType.CONV:
        return pcc(width, width, layer.kernel)
    if kind == LayerType.MAX_POOL:
        return nn.MaxPool2d(layer.kernel, stride=1, padding=layer.kernel // 2)
    if kind == LayerType.AVG_POOL:
        return nn.AvgPool2d(layer.kernel, stride=1, padding=layer.kernel // 2, count_include_pad=False)
    if kind == LayerType.CONCAT:
        return pcc(2 * width, width, 1)
    return nn.Identity()


class BlockModule(nn.Module):
    """One block of the DAG; nodes are evaluated in index order, which is topological by construction."""

    def __init__(self, block: Block, in_channels: int, width: int) -> None:
        super().__init__()
        self.layers = block.body
        self.outputs = block.outputs()
        self.project = pcc(in_channels, width, 1) if in_channels != width else nn.Identity()
        self.ops = nn.ModuleList(_layer_op(layer, width) for layer in self.layers)
        self.merge = pcc(len(self.outputs) * width, width, 1) if len(self.outputs) > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [self.project(x)]
        for layer, op in zip(self.layers, self.ops):
            inputs = [nodes[p] for p in layer.preds]
            if layer.type == LayerType.ADD:
                nodes.append(inputs[0] + inputs[1])
            elif layer.type == LayerType.CONCAT:
                nodes.append(op(torch.cat(inputs, dim=1)))
            else:
                nodes.append(op(inputs[0]))
        return self.merge(torch.cat([nodes[i] for i in self.outputs], dim=1))


STEMS = ("conv", "imagenet")


def _stem(kind: str, in_channels: int, filters: int) -> nn.Sequential:
    """One of ``STEMS`` (the template's settings admit no other)."""
    if kind == "imagenet":
        return nn.Sequential(
            nn.Conv2d(in_channels, filters, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(filters),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
    return nn.Sequential(nn.Conv2d(in_channels, filters, 3, padding=1, bias=False), nn.BatchNorm2d(filters))


@member
class TemplateSettings:
    """``template=*`` (conf/template/*.yaml), and ``Template``'s arguments."""

    stem: str = setting(choices=STEMS)
    stages: int = setting(**POSITIVE)
    N: int = setting(**POSITIVE)  # noqa: N815 (the paper's name)
    F: int = setting(**POSITIVE)  # noqa: N815


@declared("template", TemplateSettings, member="cifar")
class Template:
    """A stacking template: stem, ``stages`` stages of ``N`` blocks with 2x2 max pooling between them,
    widths doubling at each pooling (F, 2F, 4F, ...), then ReLU, global average pooling and a linear classifier.
    The settings a Python call leaves out are the paper's CIFAR template's (conf/template/cifar.yaml).
    """

    def __init__(self, stem: str, stages: int, N: int, F: int) -> None:  # noqa: N803 (the paper's names)
        self.stem, self.stages, self.N, self.F = stem, stages, N, F

    def build(self, block: Block, in_channels: int, num_classes: int) -> nn.Sequential:
        modules: list[nn.Module] = [_stem(self.stem, in_channels, self.F)]
        width = self.F
        for stage in range(self.stages):
            if stage:
                modules.append(nn.MaxPool2d(2))
            stage_width = self.F * 2**stage
            for _ in range(self.N):
                modules.append(BlockModule(block, width, stage_width))
                width = stage_width
        modules += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]
        return nn.Sequential(*modules)


def complexity(model: nn.Module, in_channels: int, image_size: int) -> tuple[int, float]:
    """Parameters and forward FLOPs per image (multiply-adds count 2), on the model's device (meta works).

    Runs in eval mode (batch norm cannot train on one image of 1x1 features) and restores the model's mode.
    """
    params = sum(p.numel() for p in model.parameters())
    device = next(model.parameters()).device
    x = torch.empty(1, in_channels, image_size, image_size, device=device)
    training = model.training
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    model.train(training)
    return params, float(counter.get_total_flops())


def network_complexity(
    block: Block, template: Template, channels: int, num_classes: int, image_size: int
) -> tuple[int, float]:
    """Parameters and FLOPs per image without allocating weights or touching data (meta tensors)."""
    with torch.device("meta"):
        model = template.build(block, channels, num_classes)
    try:
        return complexity(model, channels, image_size)
    except RuntimeError as e:
        raise TemplateMismatch(
            f"the template ({template.stages} stages, stem {template.stem}) does not fit {image_size}x{image_size} "
            f"images: {str(e).splitlines()[0]}"
        ) from None

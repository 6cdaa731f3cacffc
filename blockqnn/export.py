"""A trained network as one self-describing file: the NSC code, the template and dataset settings, the weights.

The file is a ``torch.save`` of a dict holding only tensors and a JSON string, read back with
``torch.load(weights_only=True)``: loading never unpickles arbitrary objects. The template is rebuilt by
``blockqnn.network.Template`` itself, never by instantiating a ``_target_`` read from the file, so a crafted file
cannot name a callable to run either. ``blockqnn.load(path)`` gives the network in eval mode, ready to call on
images as they come: the dataset's normalisation is part of the loaded module (``ImageClassifier``), which takes
a batch ``(N, C, H, W)`` of images at the training size, float in [0, 1] or uint8 in 0..255.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from blockqnn.codes import Block
from blockqnn.errors import ExportError
from blockqnn.network import Template

FORMAT = "blockqnn-model"
VERSION = 1
TEMPLATE_TARGET = "blockqnn.network.Template"
TEMPLATE_FIELDS = tuple(inspect.signature(Template).parameters)
DATASET_FIELDS = ("channels", "image_size", "num_classes")


def _plain(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def save(
    path: str | Path,
    block: Block,
    template_cfg: DictConfig | Mapping[str, Any],
    dataset_cfg: DictConfig | Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
) -> Path:
    """Write the network of ``block`` under ``template_cfg`` for ``dataset_cfg`` with ``state_dict`` to ``path``.

    The dataset settings are kept whole where they are plain data (normalisation, classes...), so the file says
    how its inputs were prepared; ``channels``, ``image_size`` and ``num_classes`` are required.
    """
    template, dataset = _plain(template_cfg), _plain(dataset_cfg)
    if template.get("_target_", TEMPLATE_TARGET) != TEMPLATE_TARGET:
        raise ExportError(f"only {TEMPLATE_TARGET} templates can be exported, got {template['_target_']}")
    missing = [k for k in DATASET_FIELDS if k not in dataset]
    if missing:
        raise ExportError(f"dataset settings lack {', '.join(missing)}")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "nsc": str(block),
        "template": {k: template[k] for k in TEMPLATE_FIELDS if k in template},
        "dataset": json.loads(json.dumps(dataset, default=str)),
    }
    weights = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"meta": json.dumps(meta), "state_dict": weights}, tmp)
    tmp.replace(path)  # a reader never sees half a file
    return path


def read(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metadata and weights of a saved model, safely (tensors and plain containers only)."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # a pickle with anything but tensors, or not a torch file at all
        raise ExportError(f"{path} is not a blockqnn model file ({str(e).splitlines()[0]})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("meta"), str):
        raise ExportError(f"{path} is not a blockqnn model file (no metadata)")
    meta = json.loads(payload["meta"])
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ExportError(f"{path}: format {meta.get('format')} v{meta.get('version')}, expected {FORMAT} v{VERSION}")
    return meta, payload["state_dict"]


def build(meta: Mapping[str, Any]) -> nn.Module:
    """The untrained network a model file describes (no ``_target_`` from the file is instantiated)."""
    block = Block.parse(meta["nsc"], max_index=None)
    template, dataset = meta["template"], meta["dataset"]
    unknown = set(template) - set(TEMPLATE_FIELDS)
    if unknown:
        raise ExportError(f"model file names unknown template settings: {', '.join(sorted(unknown))}")
    return Template(**template).build(block, dataset["channels"], dataset["num_classes"])


class ImageClassifier(nn.Module):
    """A trained network with its dataset's normalisation in front, so that it takes images as they are: float
    in [0, 1] or uint8 in 0..255, shaped ``(N, C, H, W)`` at the training size; returns class logits. ``classes``
    names them (from the training data, when it named them)."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float],
                 classes: Sequence[str] | None = None) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.classes = None if classes is None else tuple(classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float() / 255
        return self.net((images - self.mean) / self.std)


def load(path: str | Path) -> ImageClassifier:
    """The saved network with its weights and its dataset's normalisation, in eval mode (``ImageClassifier``);
    ``model.blockqnn`` holds the file's metadata."""
    meta, weights = read(path)
    net = build(meta)
    net.load_state_dict(weights)
    dataset = meta["dataset"]
    if dataset.get("mean") is None or dataset.get("std") is None:
        raise ExportError(f"{path}: no normalisation recorded (dataset mean and std)")
    model = ImageClassifier(net, dataset["mean"], dataset["std"], dataset.get("classes"))
    model.blockqnn = meta
    return model.eval()


def example_input(meta: Mapping[str, Any], batch: int = 1) -> torch.Tensor:
    """A random batch of images in [0, 1] of the shape the network was trained on (for ``torch.export``)."""
    dataset = meta["dataset"]
    return torch.rand(batch, dataset["channels"], dataset["image_size"], dataset["image_size"])

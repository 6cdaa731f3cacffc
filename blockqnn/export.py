"""A trained network as one self-describing file: the NSC code, the template and dataset settings, the weights.

The file is a ``torch.save`` of a dict holding only tensors and a JSON string, read back with
``torch.load(weights_only=True)``: loading never unpickles arbitrary objects. The template is rebuilt by
``blockqnn.network.Template`` itself, never by instantiating a ``_target_`` read from the file, so a crafted file
cannot name a callable to run either. ``blockqnn.load(path)`` gives the network in eval mode, ready to call on
images as they come: the dataset's normalisation is part of the loaded module (``ImageClassifier``), which takes
a batch ``(N, C, H, W)`` of images at the training size, float in [0, 1] or uint8 in 0..255.

The loaded model also goes to other runtimes: ``save_program`` (a ``torch.export`` program) and ``save_onnx``
(ONNX, with the ``onnx`` extra), each taking float images with any batch size and checked after writing: the file
read back must give the PyTorch model's logits on a batch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
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
# How close an exported file's logits must come to PyTorch's (float32 on CPU; kernels differ in summation order).
TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}
INPUT, OUTPUT = "images", "logits"  # ImageClassifier.forward's argument; the names inside an ONNX file
ONNX_LOGGERS = ("onnx_ir", "onnxscript")  # an info line per optimisation pass of torch.onnx.export

log = logging.getLogger(__name__)


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


# ---- other runtimes -----------------------------------------------------------------------------------------------
def _any_batch() -> dict[str, dict[int, Any]]:
    """The exports' dynamic shapes: the batch dimension is free, the rest as trained."""
    return {INPUT: {0: torch.export.Dim("batch", min=1)}}


def save_program(model: nn.Module, path: str | Path, example: torch.Tensor) -> Path:
    """``model`` as a ``torch.export`` program file (``torch.export.load(path).module()``), any batch size, checked
    against ``model`` on ``example``."""
    path = Path(path)
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=_any_batch()), path)
    with torch.no_grad():
        check_logits(path, model(example), torch.export.load(path).module()(example))
    return path


def save_onnx(model: nn.Module, path: str | Path, example: torch.Tensor) -> Path | None:
    """``model`` as one ONNX file (input ``images``, output ``logits``, any batch size), checked against ``model``
    on ``example`` by onnxruntime; None, saying so in one line, without the ``onnx`` extra."""
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        log.info("%s skipped: torch.onnx.export needs %s (pip install 'blockqnn[onnx]')", Path(path).name,
                 " and ".join(missing))
        return None
    path = Path(path)
    with _quiet(*ONNX_LOGGERS):
        torch.onnx.export(model, (example,), path, dynamo=True, verbose=False, external_data=False,
                          input_names=[INPUT], output_names=[OUTPUT], dynamic_shapes=_any_batch())
    if importlib.util.find_spec("onnxruntime") is None:
        log.info("%s not checked: onnxruntime is not installed (pip install 'blockqnn[onnx]')", path.name)
        return path
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run([OUTPUT], {INPUT: example.numpy()})
    with torch.no_grad():
        check_logits(path, model(example), torch.from_numpy(logits))
    return path


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """The named loggers at WARNING for a block of code."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def check_logits(path: Path, expected: torch.Tensor, actual: torch.Tensor) -> None:
    """Refuse an exported file whose logits are not the PyTorch model's (``TOLERANCE``)."""
    if actual.shape != expected.shape or not torch.allclose(actual, expected, **TOLERANCE):
        gap = f"{(actual - expected).abs().max().item():.3g}" if actual.shape == expected.shape else "?"
        raise ExportError(f"{path} does not reproduce the model: logits {tuple(actual.shape)} differ from PyTorch's "
                          f"{tuple(expected.shape)} by up to {gap} on a batch")

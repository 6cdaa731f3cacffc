"""Datasets for candidate and final training.

Every dataset that fits in memory (CIFAR, image folders, digits, synthetic) becomes uint8 tensors on the training
device, and its batches are index slices augmented there in one gather (random crop with padding, flip, optional
cutout): no per-sample Python and no worker processes, because a search trains thousands of small candidates and
a per-sample pipeline would dominate their time (experiments/bench_data.py). The raw splits are loaded once per
process and cached on their resolved config. ImageNet does not fit, so it streams from disk through DataLoaders
with the usual 224x224 augmentations.

A dataset config (conf/dataset/*.yaml) instantiates a LightningDataModule of this module: ``DeviceData`` (with a
``source`` that loads the raw splits) or ``StreamedData``. The validation split is carved from the training set
with a fixed seed; the test set is only for final training.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision.transforms import v2

from blockqnn.cli import UserError


class DataError(UserError, RuntimeError):
    """A dataset that cannot be loaded; the message names the expected path and the ways out. Bad input, not a
    candidate's failure: it stops a search (from any worker) with one line."""


# ---- raw splits ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arrays:
    """A dataset as loaded from its source: uint8 images (N, C, H, W) and int64 labels, train and test."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: tuple[str, ...]


def _nchw(images: np.ndarray) -> Tensor:
    """NHWC uint8 array (as torchvision and PIL give) -> contiguous NCHW tensor."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def _labels(labels) -> Tensor:
    return torch.as_tensor(np.asarray(labels), dtype=torch.int64)


def cifar(root: str, classes: int = 10, download: bool = True) -> Arrays:
    """CIFAR-10/100 from the official python archives under ``root``, downloaded there when absent."""
    kind = {10: datasets.CIFAR10, 100: datasets.CIFAR100}[classes]
    folder = Path(root).resolve() / kind.base_folder
    try:
        train, test = (kind(root, train=t, download=False) for t in (True, False))
    except RuntimeError:
        if not download:
            raise DataError(_cifar_missing(kind, folder, "download is off (dataset.source.download=false)")) from None
        try:
            train = kind(root, train=True, download=True)
            test = kind(root, train=False, download=False)
        except Exception as e:  # offline, corrupt archive, disk full: all mean "not available"
            raise DataError(_cifar_missing(kind, folder, f"download failed: {e}")) from None
    return Arrays(_nchw(train.data), _labels(train.targets), _nchw(test.data), _labels(test.targets),
                  tuple(train.classes))


def _cifar_missing(kind: type, folder: Path, why: str) -> str:
    return (
        f"{kind.__name__} not found at {folder} and {why}. Put {kind.filename} (or its extracted "
        f"{kind.base_folder}/ folder) in {folder.parent}, point data_dir=... (or BLOCKQNN_DATA) at a folder that "
        f"has it, or choose another dataset (e.g. dataset=digits)."
    )


def image_folder(
    root: str, image_size: int, channels: int = 3, train_dir: str = "train", test_dir: str = "test"
) -> Arrays:
    """Any ``root/{train,test}/<class>/*`` tree of images, resized (shorter side) and centre-cropped to size."""
    for split in (train_dir, test_dir):
        if not (Path(root) / split).is_dir():
            raise DataError(
                f"image folder not found: {Path(root) / split} (expected {train_dir}/<class>/*.png|jpg and "
                f"{test_dir}/<class>/* under dataset.source.root; set dataset.source.root=/path/to/tree)"
            )
    mode = {1: "L", 3: "RGB"}[channels]
    to_tensor = v2.Compose([v2.Resize(image_size), v2.CenterCrop(image_size), v2.PILToTensor()])

    def load(split: str, class_to_idx: dict[str, int] | None = None) -> tuple[Tensor, Tensor, list[str]]:
        try:
            folder = datasets.ImageFolder(
                str(Path(root) / split), loader=lambda p: datasets.folder.pil_loader(p).convert(mode)
            )
        except FileNotFoundError as e:  # no class folders, or class folders without images
            raise DataError(f"image folder {Path(root) / split}: {e}") from None
        if class_to_idx is not None and set(folder.class_to_idx) - set(class_to_idx):
            raise DataError(f"{Path(root) / split} has classes not in {train_dir}/: "
                            f"{sorted(set(folder.class_to_idx) - set(class_to_idx))}")
        remap = class_to_idx or folder.class_to_idx
        images = torch.stack([to_tensor(folder.loader(path)) for path, _ in folder.samples])
        labels = torch.tensor([remap[folder.classes[label]] for _, label in folder.samples])
        return images, labels, folder.classes

    train_images, train_labels, classes = load(train_dir)
    test_images, test_labels, _ = load(test_dir, {c: i for i, c in enumerate(classes)})
    return Arrays(train_images, train_labels, test_images, test_labels, tuple(classes))


def digits(test_size: int, seed: int = 0) -> Arrays:
    """scikit-learn's 8x8 handwritten digits (ships with it, no download); the test set is a seeded hold-out."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = torch.from_numpy(np.rint(raw.images * (255 / 16)).astype(np.uint8)[:, None])
    labels = _labels(raw.target)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    test, train = order[:test_size], order[test_size:]
    return Arrays(images[train], labels[train], images[test], labels[test], tuple(map(str, raw.target_names)))


def synthetic(
    train_size: int, test_size: int, num_classes: int, channels: int, image_size: int, grid: int, noise: float,
    seed: int = 0,
) -> Arrays:
    """Learnable by construction: each class is a random coarse ``grid`` x ``grid`` colour pattern (so both its
    mean colour and its layout identify it), and every image is its class pattern plus Gaussian pixel noise."""
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.rand(num_classes, channels, grid, grid, generator=gen) * 255
    patterns = F.interpolate(patterns, size=image_size, mode="nearest")

    def sample(n: int) -> tuple[Tensor, Tensor]:
        labels = torch.randint(num_classes, (n,), generator=gen)
        images = patterns[labels] + noise * 255 * torch.randn(n, channels, image_size, image_size, generator=gen)
        return images.clamp(0, 255).round().to(torch.uint8), labels

    return Arrays(*sample(train_size), *sample(test_size), tuple(f"class{i}" for i in range(num_classes)))


def validation_split(n: int, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Disjoint (train, val) indices of a training set of n, the same for every candidate of a seed."""
    if not 0 <= val_size < n:
        raise DataError(f"dataset.val_size={val_size} must be in [0, {n}) for a training set of {n} images")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val_size:].sort().values, order[:val_size].sort().values


def config_key(cfg: DictConfig | dict) -> str:
    """A stable text key of a config (resolved, sorted), for caching what it loads."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True) if isinstance(cfg, DictConfig) else cfg
    return json.dumps(container, sort_keys=True)


@cache
def load_source(key: str) -> Arrays:
    """The raw splits of a source config (by ``config_key``), loaded once per process."""
    with _data_errors_unwrapped():
        return instantiate(json.loads(key))


@contextlib.contextmanager
def _data_errors_unwrapped() -> Iterator[None]:
    """Hydra wraps what a target raised; a DataError is already one clear line, so let it through as is."""
    try:
        yield
    except InstantiationException as e:
        if isinstance(e.__cause__, DataError):
            raise e.__cause__ from None
        raise


# ---- on-device augmentation ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Augment:
    crop_padding: int = 0
    flip: bool = False
    cutout: int = 0


class Crops:
    """A training split laid out so that a batch of random crops and flips is a single ``index_select``.

    The zero-padded images, followed by their mirror images when flips are on, are viewed (``as_strided``, no
    copy) as every run of ``size`` consecutive bytes; each row of a cropped image is one such run, so the whole
    batch is gathered as rows of contiguous bytes, at memory speed, on whatever device the split lives on.
    Mirroring after a crop at offset dx equals cropping the mirrored image at offset 2 * padding - dx, and both
    offsets are uniform, so drawing from the mirror images with a uniform offset is an exact random flip.
    """

    def __init__(self, images: Tensor, padding: int, flip: bool) -> None:
        padded = F.pad(images, (padding,) * 4)
        self.store = torch.cat([padded, padded.flip(-1)]) if flip else padded
        self.n, self.channels, self.size = len(images), images.shape[1], images.shape[-1]
        self.padding, self.flip, self.width = padding, flip, padded.shape[-1]
        flat = self.store.view(-1)
        self.windows = flat.as_strided((flat.numel() - self.size + 1, self.size), (1, 1))

    def __len__(self) -> int:
        return self.n

    def batch(self, idx: Tensor, generator: torch.Generator) -> Tensor:
        """uint8 crops (B, C, size, size) of images ``idx`` at uniform random offsets, mirrored half the time."""
        b, c, size, width, device = idx.numel(), self.channels, self.size, self.width, idx.device
        dy, dx = torch.randint(2 * self.padding + 1, (2, b, 1, 1), device=device, generator=generator)
        image = idx + self.n * torch.randint(2, (b,), device=device, generator=generator) if self.flip else idx
        plane = image.view(b, 1, 1) * c + torch.arange(c, device=device).view(1, c, 1)
        row = dy + torch.arange(size, device=device).view(1, 1, size)
        starts = (plane * width + row) * width + dx
        return self.windows.index_select(0, starts.view(-1)).view(b, c, size, size)


def cutout(x: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Zero (the mean, after normalisation) one size x size square per image at a random centre (DeVries 2017)."""
    b, _, h, w = x.shape
    cy, cx = (torch.randint(n, (b, 1, 1), device=x.device, generator=generator) - size // 2 for n in (h, w))
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (ys >= cy) & (ys < cy + size) & (xs >= cx) & (xs < cx + size)
    return x.masked_fill(hole[:, None], 0.0)


class DeviceLoader:
    """Batches ``(images, labels)`` of a split that lives on the device, images normalised to float32.

    Given ``Crops`` it is a training loader: a new permutation each epoch, crops, flips and optional cutout; under
    DDP every rank draws the same permutation and takes its own stride of it. Given a tensor, it slices in order.
    """

    def __init__(
        self, images: Tensor | Crops, labels: Tensor, batch_size: int, *, mean: Sequence[float],
        std: Sequence[float], cutout: int = 0, seed: int = 0, rank: int = 0, world: int = 1,
    ) -> None:
        self.images, self.labels, self.batch_size, self.cutout = images, labels, batch_size, cutout
        self.train = isinstance(images, Crops)
        device = labels.device
        std_t, mean_t = torch.tensor(std, device=device), torch.tensor(mean, device=device)
        self.scale, self.shift = (1 / (255 * std_t)).view(1, -1, 1, 1), (-mean_t / std_t).view(1, -1, 1, 1)
        self.rank, self.world = rank, world
        self.order_gen = torch.Generator().manual_seed(seed)
        self.aug_gen = torch.Generator(device=device).manual_seed(seed * 1000 + rank + 1)

    def __len__(self) -> int:
        n = len(self.labels) // self.world
        return max(1, n // self.batch_size) if self.train else -(-n // self.batch_size)  # training drops a rest

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.labels)
        if self.train:
            order = torch.randperm(n, generator=self.order_gen)[self.rank :: self.world][: n // self.world]
            order = order.to(self.labels.device)
        else:
            order = torch.arange(n, device=self.labels.device)[self.rank :: self.world]
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self._images(idx), self.labels[idx]

    def _images(self, idx: Tensor) -> Tensor:
        x = self.images.batch(idx, self.aug_gen) if self.train else self.images[idx]
        x = x.float().mul_(self.scale).add_(self.shift)
        return cutout(x, self.cutout, self.aug_gen) if self.cutout else x


@dataclass(frozen=True)
class DeviceSplits:
    """Train (laid out for cropping), val and test tensors of one dataset on one device."""

    train: Crops
    train_labels: Tensor
    val_images: Tensor
    val_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: tuple[str, ...]


@lru_cache(maxsize=4)
def device_splits(
    source_key: str, val_size: int, split_seed: int, padding: int, flip: bool, device: torch.device
) -> DeviceSplits:
    """The cached splits of a source on a device: loaded, split and laid out once per process and device."""
    arrays = load_source(source_key)
    train_idx, val_idx = validation_split(len(arrays.train_labels), val_size, split_seed)
    return DeviceSplits(
        Crops(arrays.train_images[train_idx].to(device), padding, flip), arrays.train_labels[train_idx].to(device),
        arrays.train_images[val_idx].to(device), arrays.train_labels[val_idx].to(device),
        arrays.test_images.to(device), arrays.test_labels.to(device), arrays.classes,
    )


@cache
def channel_stats(source_key: str, val_size: int, split_seed: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0..1 scale) of a training split, from pixel histograms (no float copy)."""
    arrays = load_source(source_key)
    train = arrays.train_images[validation_split(len(arrays.train_labels), val_size, split_seed)[0]]
    levels = torch.arange(256, dtype=torch.float64) / 255
    mean, std = [], []
    for c in range(train.shape[1]):
        hist = torch.bincount(train[:, c].reshape(-1), minlength=256).double()
        m = (hist * levels).sum() / hist.sum()
        mean.append(m.item())
        std.append(max(((hist * (levels - m) ** 2).sum() / hist.sum()).sqrt().item(), 1e-3))
    return tuple(mean), tuple(std)


# ---- data modules ----------------------------------------------------------------------------------------------
class _Data(L.LightningDataModule):
    """What training asks of a dataset: the shape it gives the network, and its three loaders."""

    def __init__(self, name: str, channels: int, image_size: int, num_classes: int | None, val_size: int,
                 split_seed: int, batch_size: int, eval_batch_size: int | None, seed: int) -> None:
        super().__init__()
        self.name, self.channels, self.image_size = name, channels, image_size
        self.num_classes, self.val_size, self.split_seed = num_classes, val_size, split_seed
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size or batch_size, seed
        self.rank, self.world = 0, 1  # set from the trainer in setup

    def _check_classes(self, found: int) -> None:
        if self.num_classes is None:
            self.num_classes = found
        elif self.num_classes != found:
            raise DataError(f"dataset {self.name}: the data has {found} classes but dataset.num_classes="
                            f"{self.num_classes} (set it to {found}, or null to take it from the data)")

    def _placement(self, device: torch.device | str | None) -> tuple[torch.device, int, int]:
        """Device, rank and world size: the trainer's, else the given device (default CPU) alone."""
        if self.trainer is None or device is not None:
            return torch.device(device or "cpu"), 0, 1
        return self.trainer.strategy.root_device, self.trainer.global_rank, self.trainer.world_size


class DeviceData(_Data):
    """The fast path: a dataset held on the training device; see ``DeviceLoader``."""

    def __init__(
        self, source: DictConfig, channels: int, image_size: int, num_classes: int | None, val_size: int,
        mean: Sequence[float] | None = None, std: Sequence[float] | None = None, augment: dict | None = None,
        split_seed: int = 0, batch_size: int = 256, eval_batch_size: int | None = None, seed: int = 0,
        name: str = "",
    ) -> None:
        super().__init__(name, channels, image_size, num_classes, val_size, split_seed, batch_size, eval_batch_size,
                         seed)
        try:
            self.source_key = config_key(source)
        except MissingMandatoryValue as e:
            raise DataError(f"dataset {name}: {e.full_key} is not set "
                            f"(give it on the command line, e.g. dataset.{e.full_key}=/path)") from None
        self.augment = Augment(**(augment or {}))
        self._mean, self._std = (None if mean is None else tuple(mean)), (None if std is None else tuple(std))
        self.splits: DeviceSplits | None = None

    def load(self) -> Arrays:
        """Load the source (once per process) and check it against the config."""
        arrays = load_source(self.source_key)
        shape = tuple(arrays.train_images.shape[1:])
        if shape != (self.channels, self.image_size, self.image_size):
            raise DataError(f"dataset {self.name}: images are {shape} but the config says channels="
                            f"{self.channels}, image_size={self.image_size}")
        self._check_classes(len(arrays.classes))
        return arrays

    def setup(self, stage: str, device: torch.device | str | None = None) -> None:
        device, self.rank, self.world = self._placement(device)
        self.load()
        aug = self.augment
        self.splits = device_splits(self.source_key, self.val_size, self.split_seed, aug.crop_padding, aug.flip,
                                    device)

    def _loader(self, images: Tensor | Crops, labels: Tensor) -> DeviceLoader:
        if self._mean is None or self._std is None:
            self._mean, self._std = channel_stats(self.source_key, self.val_size, self.split_seed)
        train = isinstance(images, Crops)
        return DeviceLoader(
            images, labels, self.batch_size if train else self.eval_batch_size, mean=self._mean, std=self._std,
            cutout=self.augment.cutout if train else 0, seed=self.seed, rank=self.rank, world=self.world,
        )

    def train_dataloader(self) -> DeviceLoader:
        return self._loader(self.splits.train, self.splits.train_labels)

    def val_dataloader(self) -> DeviceLoader:
        return self._loader(self.splits.val_images, self.splits.val_labels)

    def test_dataloader(self) -> DeviceLoader:
        return self._loader(self.splits.test_images, self.splits.test_labels)


class StreamedData(_Data):
    """ImageNet-style ``root/{train,val}/<class>/*`` trees read from disk through DataLoaders with worker
    processes: random-resized crops and flips for training, resize and centre crop for evaluation."""

    def __init__(
        self, root: str, channels: int, image_size: int, num_classes: int | None, val_size: int,
        mean: Sequence[float], std: Sequence[float], crop_scale: Sequence[float] = (0.08, 1.0), flip: bool = True,
        eval_crop_fraction: float = 0.875, train_dir: str = "train", test_dir: str = "val", num_workers: int = 8,
        split_seed: int = 0, batch_size: int = 256, eval_batch_size: int | None = None, seed: int = 0,
        name: str = "imagenet",
    ) -> None:
        super().__init__(name, channels, image_size, num_classes, val_size, split_seed, batch_size, eval_batch_size,
                         seed)
        self.root, self.train_dir, self.test_dir, self.num_workers = Path(str(root)), train_dir, test_dir, num_workers
        normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        self.train_tf = v2.Compose(
            [v2.RandomResizedCrop(image_size, scale=tuple(crop_scale)), *([v2.RandomHorizontalFlip()] * flip),
             *normalize]
        )
        self.eval_tf = v2.Compose(
            [v2.Resize(round(image_size / eval_crop_fraction)), v2.CenterCrop(image_size), *normalize]
        )
        self.folders: dict[str, Subset | datasets.ImageFolder] = {}
        self.device = torch.device("cpu")

    def load(self) -> dict:
        """Scan the tree (files are read lazily by the loaders) and carve the validation split."""
        for split in (self.train_dir, self.test_dir):
            if not (self.root / split).is_dir():
                raise DataError(f"{self.name}: {self.root / split} not found (expected {self.train_dir}/<class>/* "
                                f"and {self.test_dir}/<class>/* under dataset.root; set dataset.root=/path)")
        train = datasets.ImageFolder(str(self.root / self.train_dir), transform=self.train_tf)
        val = copy.copy(train)  # the same scanned file list, evaluation transforms
        val.transform = self.eval_tf
        test = datasets.ImageFolder(str(self.root / self.test_dir), transform=self.eval_tf)
        self._check_classes(len(train.classes))
        train_idx, val_idx = validation_split(len(train), self.val_size, self.split_seed)
        self.folders = {"train": Subset(train, train_idx.tolist()), "val": Subset(val, val_idx.tolist()),
                        "test": test}
        return self.folders

    def setup(self, stage: str, device: torch.device | str | None = None) -> None:
        self.device, self.rank, self.world = self._placement(device)
        self.load()

    def _loader(self, split: str) -> DataLoader:
        train = split == "train"
        return DataLoader(
            self.folders[split], batch_size=self.batch_size if train else self.eval_batch_size, shuffle=train,
            drop_last=train, num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


def datamodule(dataset_cfg: DictConfig, batch_size: int, eval_batch_size: int | None = None,
               seed: int = 0) -> DeviceData | StreamedData:
    """The data module of a dataset config, with the batch sizes of a trainer recipe and a shuffling seed."""
    with _data_errors_unwrapped():
        return instantiate(dataset_cfg, batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed)

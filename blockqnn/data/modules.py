"""The data modules training asks for: ``DeviceData`` (a dataset held on the training device, batches from
``blockqnn.data.augment``) and ``StreamedData`` (ImageNet-style trees read from disk through DataLoaders).

A dataset config (``conf/dataset/*.yaml``) instantiates one of them; ``datamodule`` adds the recipe's batch sizes
and a shuffling seed. A data module loads its dataset once and keeps it (on the device, for ``DeviceData``): a
search's worker builds one and trains every candidate on it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision.transforms import v2

from blockqnn.data.augment import Augment, AugmentSettings, Crops, DeviceLoader
from blockqnn.data.sources import Arrays, data_errors_unwrapped, load_source, validation_split
from blockqnn.errors import DataError
from blockqnn.schema import COUNT, POSITIVE, SEEDS, declared, member, setting


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
    device: torch.device


def lay_out(arrays: Arrays, train_idx: Tensor, val_idx: Tensor, padding: int, flip: bool,
            device: torch.device) -> DeviceSplits:
    """The splits of loaded ``arrays`` on ``device``, the training images laid out for cropping."""
    return DeviceSplits(
        Crops(arrays.train_images[train_idx].to(device), padding, flip), arrays.train_labels[train_idx].to(device),
        arrays.train_images[val_idx].to(device), arrays.train_labels[val_idx].to(device),
        arrays.test_images.to(device), arrays.test_labels.to(device), arrays.classes, torch.device(device),
    )


def pixel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0..1 scale) of uint8 images (N, C, H, W), from pixel histograms (no float copy)."""
    levels = torch.arange(256, dtype=torch.float64) / 255
    mean, std = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        m = (hist * levels).sum() / hist.sum()
        mean.append(m.item())
        std.append(max(((hist * (levels - m) ** 2).sum() / hist.sum()).sqrt().item(), 1e-3))
    return tuple(mean), tuple(std)


class _Data(L.LightningDataModule):
    """What training asks of a dataset: the shape it gives the network, and its three loaders."""

    def __init__(self, name: str, channels: int, image_size: int, num_classes: int | None, val_size: int,
                 split_seed: int, batch_size: int, eval_batch_size: int | None, seed: int) -> None:
        super().__init__()
        self.name, self.channels, self.image_size = name, channels, image_size
        self.num_classes, self.val_size, self.split_seed = num_classes, val_size, split_seed
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size or batch_size, seed
        self.rank, self.world = 0, 1  # set from the trainer in setup
        self.classes: tuple[str, ...] = ()  # the class names, once loaded

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


@member
class DeviceDataSettings:
    """A dataset held on the training device (conf/dataset/*.yaml but imagenet), and ``DeviceData``'s arguments;
    its ``source`` has its target's settings."""

    name: str = setting()
    source: dict = setting()
    channels: int = setting(**POSITIVE)
    image_size: int = setting(**POSITIVE)
    num_classes: int | None = setting(ge=2)  # null: from the data
    mean: list[float] | None = setting()  # null: measured on the training split
    std: list[float] | None = setting(gt=0)
    augment: AugmentSettings | None = setting()
    val_size: int = setting(**POSITIVE)
    split_seed: int = setting(**SEEDS)


@declared("dataset", DeviceDataSettings)
class DeviceData(_Data):
    """The fast path: a dataset held on the training device; see ``DeviceLoader``. It loads its source once and keeps
    it, laid out on the device at the first ``setup``: one data module serves every candidate of a worker, each
    with its own shuffling ``seed``."""

    def __init__(
        self, *, source: DictConfig, channels: int, image_size: int, num_classes: int | None, val_size: int,
        mean: Sequence[float] | None, std: Sequence[float] | None, augment: dict | None, split_seed: int,
        batch_size: int, eval_batch_size: int | None, seed: int, name: str,
    ) -> None:
        super().__init__(name, channels, image_size, num_classes, val_size, split_seed, batch_size, eval_batch_size,
                         seed)
        try:
            self.source = OmegaConf.to_container(source, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as e:
            raise DataError(f"dataset {name}: {e.full_key} is not set "
                            f"(give it on the command line, e.g. dataset.{e.full_key}=/path)") from None
        self.augment = Augment(**(augment or {}))
        self._mean, self._std = (None if mean is None else tuple(mean)), (None if std is None else tuple(std))
        self.arrays: Arrays | None = None  # the source as loaded
        self.splits: DeviceSplits | None = None  # on the device of the last setup

    def load(self) -> Arrays:
        """Load the source (the first time only) and check it against the config."""
        if self.arrays is not None:
            return self.arrays
        arrays = load_source(self.source)
        shape = tuple(arrays.train_images.shape[1:])
        if shape != (self.channels, self.image_size, self.image_size):
            raise DataError(f"dataset {self.name}: images are {shape} but the config says channels="
                            f"{self.channels}, image_size={self.image_size}")
        self._check_classes(len(arrays.classes))
        self.classes = tuple(arrays.classes)
        self._train_idx, self._val_idx = validation_split(len(arrays.train_labels), self.val_size, self.split_seed)
        self.arrays = arrays
        return arrays

    def setup(self, stage: str, device: torch.device | str | None = None) -> None:
        device, self.rank, self.world = self._placement(device)
        arrays = self.load()
        if self.splits is None or self.splits.device != torch.device(device):
            aug = self.augment
            self.splits = lay_out(arrays, self._train_idx, self._val_idx, aug.crop_padding, aug.flip, device)

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The per-channel mean and std batches are normalised with: the config's, else measured on the training
        split (once)."""
        if self._mean is None or self._std is None:
            self._mean, self._std = pixel_stats(self.load().train_images[self._train_idx])
        return self._mean, self._std

    def _loader(self, images: Tensor | Crops, labels: Tensor) -> DeviceLoader:
        mean, std = self.normalization()
        train = isinstance(images, Crops)
        return DeviceLoader(
            images, labels, self.batch_size if train else self.eval_batch_size, mean=mean, std=std,
            cutout=self.augment.cutout if train else 0, seed=self.seed, rank=self.rank, world=self.world,
        )

    def train_dataloader(self) -> DeviceLoader:
        return self._loader(self.splits.train, self.splits.train_labels)

    def val_dataloader(self) -> DeviceLoader:
        return self._loader(self.splits.val_images, self.splits.val_labels)

    def test_dataloader(self) -> DeviceLoader:
        return self._loader(self.splits.test_images, self.splits.test_labels)


@member
class StreamedDataSettings:
    """An ImageNet-style tree streamed from disk (conf/dataset/imagenet.yaml), and ``StreamedData``'s arguments."""

    name: str = setting()
    root: str | Path = setting()
    train_dir: str = setting()
    test_dir: str = setting()
    channels: int = setting(**POSITIVE)
    image_size: int = setting(**POSITIVE)
    num_classes: int | None = setting(ge=2)
    mean: list[float] = setting()
    std: list[float] = setting(gt=0)
    crop_scale: list[float] = setting(gt=0, le=1)
    flip: bool = setting()
    eval_crop_fraction: float = setting(gt=0, le=1)
    num_workers: int = setting(**COUNT)
    val_size: int = setting(**POSITIVE)
    split_seed: int = setting(**SEEDS)


@declared("dataset", StreamedDataSettings, member="imagenet")
class StreamedData(_Data):
    """ImageNet-style ``root/{train,val}/<class>/*`` trees read from disk through DataLoaders with worker
    processes: random-resized crops and flips for training, resize and centre crop for evaluation."""

    def __init__(
        self, *, root: str, channels: int, image_size: int, num_classes: int | None, val_size: int,
        mean: Sequence[float], std: Sequence[float], crop_scale: Sequence[float], flip: bool, eval_crop_fraction: float,
        train_dir: str, test_dir: str, num_workers: int, split_seed: int, batch_size: int, eval_batch_size: int | None,
        seed: int, name: str,
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
        """Scan the tree (the first time only; files are read lazily by the loaders) and carve the validation split."""
        if self.folders:
            return self.folders
        for split in (self.train_dir, self.test_dir):
            if not (self.root / split).is_dir():
                raise DataError(f"{self.name}: {self.root / split} not found (expected {self.train_dir}/<class>/* "
                                f"and {self.test_dir}/<class>/* under dataset.root; set dataset.root=/path)")
        train = datasets.ImageFolder(str(self.root / self.train_dir), transform=self.train_tf)
        val = copy.copy(train)  # the same scanned file list, evaluation transforms
        val.transform = self.eval_tf
        test = datasets.ImageFolder(str(self.root / self.test_dir), transform=self.eval_tf)
        self._check_classes(len(train.classes))
        self.classes = tuple(train.classes)
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
    with data_errors_unwrapped():
        return instantiate(dataset_cfg, batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed)

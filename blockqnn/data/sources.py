"""Data sources: each loads a dataset's raw splits as uint8 tensors (``Arrays``); a data module loads its source once
and keeps what it loaded (``blockqnn.data.modules``).

A source is what ``dataset.source`` instantiates (``conf/dataset/*.yaml``): torchvision's CIFAR archives
(downloaded when absent), any other torchvision classification dataset by name, any image-folder tree,
scikit-learn's bundled digits, generated patterns, or the user's own function returning ``Arrays``. The
validation split is carved from the training set with a fixed seed, the same for every candidate of a run.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from numbers import Integral
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from PIL.Image import Image
from torch import Tensor
from torchvision import datasets
from torchvision.transforms import v2

from blockqnn.errors import DataError
from blockqnn.schema import POSITIVE, SEEDS, declared, member, setting

DIGITS = 1797  # the images of scikit-learn's digits


@dataclass(frozen=True)
class Arrays:
    """A dataset as loaded from its source: uint8 images (N, C, H, W) and int64 labels, train and test."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: tuple[str, ...]

    def balanced(self, train_size: int | None) -> Arrays:
        """The first ``train_size / classes`` training images of each class (the source's order), the test split
        whole: a smaller search set with every class as well represented as in the full one. None: all."""
        if train_size is None:
            return self
        per_class, extra = divmod(train_size, len(self.classes))
        order = torch.argsort(self.train_labels, stable=True)  # by class, the source's order within each
        starts = torch.searchsorted(self.train_labels[order], torch.arange(len(self.classes)))
        counts = torch.bincount(self.train_labels, minlength=len(self.classes))
        wanted = [per_class + (c < extra) for c in range(len(self.classes))]
        if any(w > n for w, n in zip(wanted, counts.tolist())):
            raise DataError(f"dataset.source.train_size={train_size} asks for {max(wanted)} images of a class, but "
                            f"the smallest class has {int(counts.min())}")
        keep = torch.cat([order[start:start + w] for start, w in zip(starts.tolist(), wanted)]).sort().values
        return replace(self, train_images=self.train_images[keep], train_labels=self.train_labels[keep])


def _nchw(images: np.ndarray) -> Tensor:
    """NHWC uint8 array (as torchvision and PIL give) -> contiguous NCHW tensor."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def _labels(labels) -> Tensor:
    return torch.as_tensor(np.asarray(labels), dtype=torch.int64)


@member
class CifarSettings:
    """``dataset.source`` of cifar10/cifar100, and ``cifar``'s arguments."""

    root: str | Path = setting()
    classes: int = setting(choices=(10, 100))
    download: bool = setting()
    image_size: int = setting(**POSITIVE)
    train_size: int | None = setting(**POSITIVE)


@declared("dataset.source", CifarSettings)
def cifar(root: str, classes: int = 10, download: bool = True, image_size: int = 32,
          train_size: int | None = None) -> Arrays:
    """CIFAR-10/100 from the official python archives under ``root``, downloaded there when absent; resized to
    ``image_size`` (antialiased) and cut to a class-balanced ``train_size`` training images when asked: the same
    data a CPU-sized search reads from an image folder."""
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
    arrays = Arrays(_nchw(train.data), _labels(train.targets), _nchw(test.data), _labels(test.targets),
                    tuple(train.classes)).balanced(train_size)
    if image_size == arrays.train_images.shape[-1]:
        return arrays
    return replace(arrays, train_images=_resized(arrays.train_images, image_size),
                   test_images=_resized(arrays.test_images, image_size))


def _resized(images: Tensor, size: int) -> Tensor:
    return v2.functional.resize(images, [size, size], antialias=True)


def _cifar_missing(kind: type, folder: Path, why: str) -> str:
    return (
        f"{kind.__name__} not found at {folder} and {why}. Put {kind.filename} (or its extracted "
        f"{kind.base_folder}/ folder) in {folder.parent}, point data_dir=... (or BLOCKQNN_DATA) at a folder that "
        f"has it, or choose another dataset (e.g. dataset=digits)."
    )


@member
class ImageFolderSettings:
    """``dataset.source`` of imagefolder, and ``image_folder``'s arguments."""

    root: str | Path = setting()
    image_size: int = setting(**POSITIVE)
    channels: int = setting(choices=(1, 3))  # grey or RGB
    train_dir: str = setting()
    test_dir: str = setting()
    train_size: int | None = setting(**POSITIVE)


@declared("dataset.source", ImageFolderSettings)
def image_folder(
    root: str, image_size: int, channels: int = 3, train_dir: str = "train", test_dir: str = "test",
    train_size: int | None = None,
) -> Arrays:
    """Any ``root/{train,test}/<class>/*`` tree of images, resized (shorter side) and centre-cropped to size;
    ``train_size``: a class-balanced cut of the training images (``Arrays.balanced``)."""
    for split in (train_dir, test_dir):
        if not (Path(root) / split).is_dir():
            raise DataError(
                f"image folder not found: {Path(root) / split} (expected {train_dir}/<class>/*.png|jpg and "
                f"{test_dir}/<class>/* under dataset.source.root; set dataset.source.root=/path/to/tree)"
            )
    to_tensor = _image_to_tensor(image_size, channels)

    def load(split: str, class_to_idx: dict[str, int] | None = None) -> tuple[Tensor, Tensor, list[str]]:
        try:
            folder = datasets.ImageFolder(str(Path(root) / split), loader=datasets.folder.pil_loader)
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
    return Arrays(train_images, train_labels, test_images, test_labels, tuple(classes)).balanced(train_size)


def _image_to_tensor(image_size: int, channels: int) -> Callable[[Image], Tensor]:
    """A PIL image -> uint8 (channels, image_size, image_size): grey or RGB, the shorter side resized, the centre
    cropped."""
    mode = {1: "L", 3: "RGB"}[channels]
    shape = v2.Compose([v2.Resize(image_size), v2.CenterCrop(image_size), v2.PILToTensor()])
    return lambda image: shape(image.convert(mode))


@member
class TorchvisionSettings:
    """``dataset.source`` of torchvision, and ``torchvision_dataset``'s arguments."""

    name: str = setting()
    root: str | Path = setting()
    download: bool = setting()
    train_split: str = setting()
    test_split: str = setting()
    arguments: dict | None = setting()
    image_size: int = setting(**POSITIVE)
    channels: int = setting(choices=(1, 3))
    train_size: int | None = setting(**POSITIVE)


@declared("dataset.source", TorchvisionSettings)
def torchvision_dataset(
    name: str, root: str, image_size: int, channels: int = 3, download: bool = True, train_split: str = "train",
    test_split: str = "test", arguments: dict | None = None, train_size: int | None = None,
) -> Arrays:
    """Any torchvision classification dataset by name (``torchvision.datasets.<name>``: SVHN, MNIST, STL10, ...)
    under ``root``, downloaded there when absent; its splits by the dataset's own argument (``split=`` where it
    has one, else ``train=``), ``arguments`` passed as given (EMNIST's ``split``, STL10's ``folds``); each image
    grey or RGB, resized (shorter side) and centre-cropped to ``image_size``; ``train_size``: a class-balanced cut
    of the training images. Class names from the dataset where it has them, else the label numbers."""
    kind = getattr(datasets, name, None)
    if not isinstance(kind, type) or not issubclass(kind, datasets.VisionDataset):
        raise DataError(f"dataset.source.name={name}: not a torchvision dataset (torchvision.datasets.<name>, e.g. "
                        "MNIST, FashionMNIST, SVHN, STL10, Flowers102)")
    to_tensor = _image_to_tensor(image_size, channels)
    train = _open(kind, root, train_split, download, dict(arguments or {}))
    test = _open(kind, root, test_split, download, dict(arguments or {}))
    (train_images, train_labels), (test_images, test_labels) = _read(train, to_tensor), _read(test, to_tensor)
    found = int(max(train_labels.max(), test_labels.max())) + 1
    classes = tuple(getattr(train, "classes", None) or map(str, range(found)))
    return Arrays(train_images, train_labels, test_images, test_labels, classes).balanced(train_size)


def _open(kind: type, root: str, split: str, download: bool, arguments: dict) -> datasets.VisionDataset:
    """One split of a torchvision dataset: as found under ``root``, else downloaded there (when allowed)."""
    name, parameters = kind.__name__, inspect.signature(kind).parameters
    downloads = "download" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())  # EMNIST
    if "split" in parameters and "split" not in arguments:
        arguments["split"] = split
    elif "train" in parameters or "split" in arguments:
        if split not in ("train", "test"):
            raise DataError(f"torchvision.datasets.{name} has a training and a test split only (train= True or "
                            f"False): dataset.source.train_split / test_split must be train or test, got {split}")
        arguments["train"] = split == "train"
    else:
        raise DataError(f"torchvision.datasets.{name} takes no split= or train= argument: it has no test split to "
                        "score on; save it as an image folder (dataset=imagefolder) or write your own source")
    folder = Path(root).resolve()
    try:
        return kind(root, **arguments, **({"download": False} if downloads else {}))
    except ValueError as e:  # a split or argument the dataset does not have
        raise DataError(f"torchvision.datasets.{name}: {e}") from None
    except (RuntimeError, OSError) as e:  # not there (or damaged)
        if not download or not downloads:
            raise DataError(f"{name} not found under {folder} ({e}); put its files there, point data_dir=... (or "
                            "BLOCKQNN_DATA) at a folder that has them, or set dataset.source.download=true") from None
    try:
        return kind(root, **arguments, download=True)
    except Exception as e:  # offline, a corrupt archive, a full disk: all mean "not available"
        raise DataError(f"{name} not found under {folder} and download failed: {e}. Put its files there, point "
                        "data_dir=... (or BLOCKQNN_DATA) at a folder that has them, or choose another dataset "
                        "(e.g. dataset=digits).") from None


def _read(dataset: datasets.VisionDataset, to_tensor: Callable[[Image], Tensor]) -> tuple[Tensor, Tensor]:
    """Every image of a split as one uint8 tensor, and its labels; a dataset whose targets are not class numbers
    (detection, segmentation) is refused."""
    images, labels = [], []
    for image, label in dataset:
        if not isinstance(label, Integral):
            raise DataError(f"torchvision.datasets.{type(dataset).__name__} is not a classification dataset (its "
                            f"targets are {type(label).__name__}, not class numbers)")
        images.append(to_tensor(image))
        labels.append(int(label))
    return torch.stack(images), _labels(labels)


@member
class DigitsSettings:
    """``dataset.source`` of digits, and ``digits``'s arguments."""

    test_size: int = setting(ge=1, lt=DIGITS)
    seed: int = setting(**SEEDS)


@declared("dataset.source", DigitsSettings)
def digits(test_size: int, seed: int = 0) -> Arrays:
    """scikit-learn's 8x8 handwritten digits (ships with it, no download); the test set is a seeded hold-out."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = torch.from_numpy(np.rint(raw.images * (255 / 16)).astype(np.uint8)[:, None])
    labels = _labels(raw.target)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    test, train = order[:test_size], order[test_size:]
    return Arrays(images[train], labels[train], images[test], labels[test], tuple(map(str, raw.target_names)))


@member
class SyntheticSettings:
    """``dataset.source`` of synthetic, and ``synthetic``'s arguments."""

    train_size: int = setting(**POSITIVE)
    test_size: int = setting(**POSITIVE)
    num_classes: int = setting(ge=2)
    channels: int = setting(**POSITIVE)
    image_size: int = setting(**POSITIVE)
    grid: int = setting(**POSITIVE)
    noise: float = setting(ge=0)
    seed: int = setting(**SEEDS)


@declared("dataset.source", SyntheticSettings)
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


def load_source(source: Mapping) -> Arrays:
    """The raw splits of a source config, loaded now: each call loads again, so the caller keeps what it gets (a
    data module keeps its own)."""
    with data_errors_unwrapped():
        return instantiate(source)


@contextlib.contextmanager
def data_errors_unwrapped() -> Iterator[None]:
    """Hydra wraps what a target raised; a DataError is already one clear line, so let it through as is."""
    try:
        yield
    except InstantiationException as e:
        if isinstance(e.__cause__, DataError):
            raise e.__cause__ from None
        raise



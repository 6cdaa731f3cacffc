"""On-device augmentation and loading: a training split laid out so that a batch of random crops and flips is one
gather, optional cutout, and a loader that slices batches of a split living on the training device.

No per-sample Python and no worker processes: a search trains thousands of small candidates, and a per-sample
pipeline would dominate their time (experiments/bench_data.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from blockqnn.schema import COUNT, declared, member, setting


@member
class AugmentSettings:
    """``dataset.augment``, and ``Augment``'s arguments."""

    crop_padding: int = setting(**COUNT)
    flip: bool = setting()
    cutout: int = setting(**COUNT)  # the side of the square; 0: off


@declared("dataset.augment", AugmentSettings)
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



"""Data throughput: the on-device fast path against torchvision's usual per-sample pipeline, on the same images.

(a) blockqnn.data: the training split as one uint8 tensor on the device; each batch is one gather of random crops
    (padding 4) and flips, then normalisation - no per-sample Python, no workers.
(b) torchvision: a Dataset of the same images through RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor,
    Normalize in a DataLoader (best of 0 and --workers worker processes, persistent, warmed up); on a GPU the
    batches are also copied to it (pinned memory).

Images: an image folder read by the image-folder loader at 32x32 (by default ../shared/data/cifar10-subset beside
the checkout, 10,000 real CIFAR images, when it is there); without one, 10,000 generated 32x32 images, said in one
line. Prints images/s of both pipelines and the ratio. Target: >= 3x on a 2-core CPU.

    python experiments/bench_data.py                  # CPU, or the GPU when there is one
    python experiments/bench_data.py --device cpu --epochs 3
    python experiments/bench_data.py --folder data/cifar10-folder   # e.g. from make_image_folder.py dataset=cifar10
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from blockqnn.data import Crops, DeviceLoader, image_folder, synthetic

SUBSET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset"  # beside the checkout
GENERATED = 10_000
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def cifar_sized_images(folder: Path, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """uint8 (N, 3, 32, 32) images and labels: the folder's images when it is there, else generated ones."""
    if folder.is_dir():
        arrays, source = image_folder(str(folder), 32), f"{folder} (real images)"
    else:
        print(f"no image folder at {folder}: using {n or GENERATED:,} generated 32x32 images instead")
        arrays, source = synthetic(n or GENERATED, 10, 10, 3, 32, 4, 0.4), "generated 32x32 images"
    images, labels = arrays.train_images, arrays.train_labels
    if n:
        images, labels = images[:n], labels[:n]
    return images, labels, source


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(epoch, device: torch.device, epochs: int) -> float:
    """Images per second over ``epochs`` timed epochs after one warm-up epoch; ``epoch()`` returns its count."""
    epoch()
    sync(device)
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        seen += epoch()
    sync(device)
    return seen / (time.perf_counter() - start)


def fast_path(images, labels, batch: int, device: torch.device, epochs: int) -> float:
    loader = DeviceLoader(Crops(images.to(device), 4, flip=True), labels.to(device), batch, mean=MEAN, std=STD)

    def epoch() -> int:
        n = 0
        for x, _ in loader:
            n += len(x)
        return n

    return throughput(epoch, device, epochs)


class PerSample(Dataset):
    """What a torchvision CIFAR dataset does per item: array -> PIL image -> transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images.permute(0, 2, 3, 1).numpy(), labels.tolist()
        self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                                    T.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def torchvision_path(images, labels, batch: int, workers: int, device: torch.device, epochs: int) -> float:
    loader = DataLoader(PerSample(images, labels), batch_size=batch, shuffle=True, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")

    def epoch() -> int:
        n = 0
        for x, _ in loader:
            n += len(x.to(device, non_blocking=True))
        return n

    return throughput(epoch, device, epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=SUBSET,
                        help="an image folder (train/<class>/*); default: the CIFAR-10 subset beside the checkout")
    parser.add_argument("--images", type=int, default=None, help="use the first N images (default: all)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the torchvision pipeline")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of this process, both pipelines (the fast path's ops are too small to "
                             "gain from more, and on a busy CPU OpenMP barriers stall them)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    images, labels, source = cifar_sized_images(args.folder, args.images)
    print(f"images: {len(images):,} from {source}; batch {args.batch}; device {device}; "
          f"torch threads {torch.get_num_threads()}")
    fast = fast_path(images, labels, args.batch, device, args.epochs)
    print(f"fast path (on-device crop+flip+normalise):   {fast:>10,.0f} images/s")
    best = 0.0
    for workers in sorted({0, args.workers}):
        rate = torchvision_path(images, labels, args.batch, workers, device, args.epochs)
        print(f"torchvision per-sample, {workers} workers:          {rate:>10,.0f} images/s")
        best = max(best, rate)
    print(f"ratio fast / best torchvision: {fast / best:.1f}x (target >= 3x)")


if __name__ == "__main__":
    main()

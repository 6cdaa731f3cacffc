"""Write an in-memory dataset as an image-folder tree, the layout ``dataset=imagefolder`` reads:
``OUT/train/<class>/*.png`` and ``OUT/test/<class>/*.png``. A tree to try the image-folder path on before
pointing it at images of one's own.

    python experiments/make_image_folder.py data/digits-folder     # scikit-learn digits, offline: make image-folder
    python experiments/make_image_folder.py data/blobs dataset=synthetic dataset.image_size=32
    python experiments/make_image_folder.py data/cifar10-folder dataset=cifar10 --per-class 100

The images come from any dataset config that loads into memory (``conf/dataset/*.yaml``; default ``digits``:
1,500 training and 297 test images, 8x8 grey), split into train and test as that config splits them. A search
then reads the tree back with its size and channels (and, for digits, shifts of one pixel and no flips):

    python -m blockqnn.search experiment=quickstart dataset=imagefolder dataset.source.root=data/digits-folder \\
        dataset.channels=1 dataset.image_size=8 dataset.val_size=300 dataset.augment.crop_padding=1 \\
        dataset.augment.flip=false

The tree is written beside OUT and renamed into place when complete; an existing OUT is never written into.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from PIL import Image

from blockqnn.config import compose
from blockqnn.errors import UserError


def load(overrides: list[str]):
    """The train and test splits (uint8 NCHW images, labels, class names) of a dataset config's source."""
    dataset = compose("search", ["logger=none", *overrides]).dataset
    if "source" not in dataset:
        raise ValueError(f"dataset={dataset.name} is streamed from disk, not loaded into memory: it is a tree already")
    try:
        return instantiate(dataset.source)
    except InstantiationException as e:
        raise ValueError(str(e.__cause__ or e)) from None


def write_split(folder: Path, images, labels, classes: tuple[str, ...], per_class: int | None) -> int:
    """``folder/<class>/<n>.png`` for each image (at most ``per_class`` per class); returns the count written."""
    written = dict.fromkeys(range(len(classes)), 0)
    for image, label in zip(images, labels.tolist()):
        if per_class is not None and written[label] >= per_class:
            continue
        pixels = image.permute(1, 2, 0).numpy()
        target = folder / classes[label] / f"{written[label]:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(target)
        written[label] += 1
    return sum(written.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the tree's root folder (must not exist)")
    parser.add_argument("overrides", nargs="*", help="dataset config overrides (default dataset=digits)")
    parser.add_argument("--per-class", type=int, default=None, help="keep at most N images per class and split")
    args = parser.parse_args(argv)
    if args.out.exists():
        print(f"error: {args.out} already exists (remove it or choose another folder)", file=sys.stderr)
        return 1
    try:
        arrays = load(args.overrides)
    except (UserError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    staging = args.out.parent / f".{args.out.name}.partial-{os.getpid()}"
    staging.mkdir()
    try:
        counts = [write_split(staging / split, images, labels, arrays.classes, args.per_class)
                  for split, images, labels in (("train", arrays.train_images, arrays.train_labels),
                                                ("test", arrays.test_images, arrays.test_labels))]
        staging.rename(args.out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = "x".join(map(str, arrays.train_images.shape[2:]))
    print(f"{args.out}: {counts[0]:,} train and {counts[1]:,} test images ({size}, "
          f"{arrays.train_images.shape[1]} channel(s)) in {len(arrays.classes)} class folders")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Datasets for candidate and final training, in three steps as data flows:

- ``sources``: load a dataset's raw splits (CIFAR, image folders, digits, synthetic) as uint8 tensors;
- ``augment``: hold a split on the training device and draw augmented batches from it in one gather;
- ``modules``: the LightningDataModules training asks for (``DeviceData``; ``StreamedData`` for ImageNet, which
  does not fit in memory and streams from disk with the usual 224x224 augmentations).

The configs (``conf/dataset/*.yaml``) and stored runs name targets as ``blockqnn.data.<name>``: they are all here.
"""

from blockqnn.data.augment import Augment, Crops, DeviceLoader, cutout
from blockqnn.data.modules import (
    DeviceData,
    DeviceSplits,
    StreamedData,
    datamodule,
    lay_out,
    pixel_stats,
)
from blockqnn.data.sources import (
    Arrays,
    cifar,
    digits,
    image_folder,
    load_source,
    synthetic,
    torchvision_dataset,
    validation_split,
)
from blockqnn.errors import DataError

__all__ = [
    "Arrays", "Augment", "Crops", "DataError", "DeviceData", "DeviceLoader", "DeviceSplits", "StreamedData",
    "cifar", "cutout", "datamodule", "digits", "image_folder", "lay_out", "load_source",
    "pixel_stats", "synthetic", "torchvision_dataset", "validation_split",
]

"""Dataset loaders (on generated files, no network), the validation split, and the on-device augmentation."""

from urllib.error import URLError

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchvision import datasets

from blockqnn.config import compose
from blockqnn.data import (
    Arrays,
    Crops,
    DataError,
    DeviceData,
    DeviceLoader,
    StreamedData,
    cifar,
    cutout,
    datamodule,
    load_source,
    synthetic,
    torchvision_dataset,
    validation_split,
)
from blockqnn.export import load
from blockqnn.store import Store
from tests.conftest import no_download
from tests.helpers import run_cli


def dataset_cfg(name: str, *overrides: str):
    return compose("search", [f"dataset={name}", *overrides]).dataset


# ---- generated files -------------------------------------------------------------------------------------------
def write_image_tree(root, classes, per_class, size, suffixes=(".png",)):
    """root/<class>/<i><suffix>: each class a solid colour, so a label can be checked against its pixels."""
    colours = {}
    for c, name in enumerate(classes):
        colour = (40 * c + 20, 255 - 50 * c, 90)
        colours[name] = colour
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            suffix = suffixes[i % len(suffixes)]
            Image.new("RGB", size, colour).save(root / name / f"{i}{suffix}", quality=100)
    return colours


def write_mnist(root, n_train, n_test, rng):
    """torchvision's MNIST layout, ROOT/MNIST/raw/*-ubyte in the IDX format; returns the images and labels."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    written = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images, labels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + np.array([n, 28, 28], ">i4").tobytes()
                                                         + images.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + np.array([n], ">i4").tobytes()
                                                         + labels.tobytes())
        written[split] = torch.from_numpy(images), torch.from_numpy(labels).long()
    return written


def write_svhn(root, monkeypatch, n_train, n_test, rng):
    """SVHN's .mat files (X: 32x32x3xN, y: 1..10 with 10 for the digit 0), with torchvision's checksums set to
    theirs so its real integrity check passes; a download attempt fails the test."""
    import hashlib

    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    split_list, written = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, digits = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8), rng.integers(0, 10, n)
        savemat(root / f"{split}_32x32.mat", {"X": images, "y": np.where(digits == 0, 10, digits)[:, None]})
        md5 = hashlib.md5((root / f"{split}_32x32.mat").read_bytes()).hexdigest()
        split_list[split] = ["http://no.download/", f"{split}_32x32.mat", md5]
        written[split] = torch.from_numpy(images).permute(3, 2, 0, 1), torch.from_numpy(digits).long()
    monkeypatch.setattr(datasets.SVHN, "split_list", split_list)
    monkeypatch.setattr(datasets.svhn, "download_url", no_download)
    return written


# ---- loaders ---------------------------------------------------------------------------------------------------
def test_cifar10_loads_official_format(cifar_files):
    root, written = cifar_files
    arrays = cifar(str(root), classes=10, download=True)
    assert arrays.train_images.shape == (40, 3, 32, 32) and arrays.test_images.shape == (6, 3, 32, 32)
    data, labels = written["data_batch_2"]
    assert torch.equal(arrays.train_images[8:16], torch.from_numpy(data).view(8, 3, 32, 32))
    assert arrays.train_labels[8:16].tolist() == labels
    assert arrays.test_labels.tolist() == written["test_batch"][1]
    assert arrays.classes == tuple(f"c{i}" for i in range(10))


def test_cifar10_config_builds_device_data(cifar_files):
    root, _ = cifar_files
    data = datamodule(dataset_cfg("cifar10", f"data_dir={root}", "dataset.val_size=10"), batch_size=8)
    data.setup("fit")
    assert data.num_classes == 10 and len(data.splits.train) == 30 and len(data.splits.val_labels) == 10
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_cifar_absent_and_offline_is_one_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(datasets.cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as err:
        cifar(str(tmp_path / "nowhere"), classes=100)
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "nowhere" / "cifar-100-python") in message
    assert "cifar-100-python.tar.gz" in message and "data_dir" in message and "dataset=" in message


def test_cifar_absent_without_download_never_tries(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.cifar, "download_and_extract_archive", no_download)
    with pytest.raises(DataError, match="download is off"):
        cifar(str(tmp_path), classes=10, download=False)


def test_cifar10_shrinks_to_a_class_balanced_cut_at_a_smaller_size(cifar_files):
    """What experiment=cifar10_small reads from the official archive: the first images of each class, 16x16."""
    root, written = cifar_files
    full = cifar(str(root), classes=10)
    labels = full.train_labels
    per_class = int(torch.bincount(labels, minlength=10).min())
    assert per_class >= 1
    small = cifar(str(root), classes=10, image_size=16, train_size=10 * per_class + 3)
    expected = torch.cat([torch.nonzero(labels == c).flatten()[:per_class + (c < 3)] for c in range(10)]).sort().values
    assert torch.equal(small.train_labels, labels[expected])
    assert small.train_images.shape == (len(expected), 3, 16, 16) and small.test_images.shape == (6, 3, 16, 16)
    assert torch.equal(small.test_labels, full.test_labels)  # the test split untouched
    before, after = full.train_images[expected].float(), small.train_images.float()
    assert (after.mean((2, 3)) - before.mean((2, 3))).abs().max() < 2  # each image's colour kept
    assert after.std() < 0.8 * before.std()  # antialiased: noise averaged out, not subsampled


def test_a_cut_larger_than_a_class_is_one_clear_error(cifar_files):
    root, _ = cifar_files
    with pytest.raises(DataError, match=r"train_size=40 asks for 4 images of a class, but the smallest class has"):
        cifar(str(root), classes=10, train_size=40)


def test_a_torchvision_dataset_with_a_train_argument_loads_by_name(tmp_path):
    written = write_mnist(tmp_path, 12, 5, np.random.default_rng(0))
    arrays = torchvision_dataset("MNIST", str(tmp_path), image_size=28, channels=1)
    assert torch.equal(arrays.train_images[:, 0], written["train"][0])
    assert torch.equal(arrays.test_labels, written["t10k"][1])
    assert arrays.classes == tuple(datasets.MNIST.classes)
    rgb = torchvision_dataset("MNIST", str(tmp_path), image_size=14, channels=3)
    assert rgb.train_images.shape == (12, 3, 14, 14) and torch.equal(rgb.train_images[:, 0], rgb.train_images[:, 2])


def test_a_torchvision_dataset_with_a_split_argument_loads_by_name(tmp_path, monkeypatch):
    written = write_svhn(tmp_path, monkeypatch, 10, 4, np.random.default_rng(1))
    arrays = torchvision_dataset("SVHN", str(tmp_path), image_size=32)
    assert torch.equal(arrays.train_images, written["train"][0]) and torch.equal(arrays.train_labels,
                                                                                 written["train"][1])
    assert torch.equal(arrays.test_images, written["test"][0])
    assert arrays.classes == tuple(str(d) for d in range(max(written["train"][1].max(), written["test"][1].max()) + 1))
    with pytest.raises(DataError, match="SVHN: Unknown value 'nope' for argument split"):
        torchvision_dataset("SVHN", str(tmp_path), image_size=32, test_split="nope")


def test_the_torchvision_dataset_config_builds_device_data(tmp_path):
    write_mnist(tmp_path, 30, 6, np.random.default_rng(2))
    cfg = dataset_cfg("torchvision", "dataset.source.name=MNIST", f"data_dir={tmp_path}", "dataset.channels=1",
                      "dataset.image_size=28", "dataset.val_size=6")
    data = datamodule(cfg, batch_size=8)
    data.setup("fit")
    assert cfg.name == "MNIST" and data.num_classes == 10 and len(data.splits.val_labels) == 6
    x, _ = next(iter(data.train_dataloader()))
    assert x.shape == (8, 1, 28, 28)


def test_a_torchvision_dataset_absent_and_offline_is_one_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(datasets.svhn, "download_url", offline)
    with pytest.raises(DataError) as err:
        torchvision_dataset("SVHN", str(tmp_path / "nowhere"), image_size=32)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"SVHN not found under {tmp_path / 'nowhere'} and download failed")
    monkeypatch.setattr(datasets.svhn, "download_url", no_download)
    with pytest.raises(DataError, match="SVHN not found under .* set dataset.source.download=true"):
        torchvision_dataset("SVHN", str(tmp_path / "nowhere"), image_size=32, download=False)


@pytest.mark.parametrize("name, message", [
    ("Nope", "dataset.source.name=Nope: not a torchvision dataset"),
    ("EuroSAT", "takes no split= or train= argument"),
])
def test_a_name_torchvision_cannot_split_is_one_clear_error(tmp_path, name, message):
    with pytest.raises(DataError, match=message):
        torchvision_dataset(name, str(tmp_path), image_size=32)


def own_source(n: int, seed: int = 0) -> Arrays:
    """A user's own source, as docs/training.md#your-own-data shows one: 8x8 grey images whose brightness is
    their class."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=gen)
    images = (labels[:, None, None, None] * 100 + torch.randint(0, 40, (n, 1, 8, 8), generator=gen)).to(torch.uint8)
    cut = n * 4 // 5
    return Arrays(images[:cut], labels[:cut], images[cut:], labels[cut:], ("dark", "grey", "light"))


@pytest.mark.slow
def test_a_search_reads_the_users_own_source(tmp_path):
    out = run_cli("dataset=custom", "dataset.source._target_=tests.test_data.own_source", "+dataset.source.n=120",
                  "dataset.channels=1", "dataset.image_size=8", "dataset.val_size=20", "trainer=smoke",
                  "agent.batch_size=2", "agent.budget=2", "logger=none", "progress.mode=off",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 0, out.stderr[-2000:]
    with Store.open(tmp_path / "run", readonly=True) as store:
        assert [row["status"] for row in store.candidates()] == ["ok", "ok"]
        assert store.config().dataset.source.n == 120


@pytest.mark.slow
def test_a_found_block_trains_on_a_torchvision_dataset_by_name(tmp_path):
    """The transfer docs/training.md shows, on generated MNIST files: the class names reach the exported model."""
    write_mnist(tmp_path / "data", 40, 10, np.random.default_rng(3))
    out = run_cli('block="[(1,1,3,0,0),(2,7,0,0,0)]"', "dataset=torchvision", "dataset.source.name=MNIST",
                  "dataset.channels=1", "dataset.image_size=28", "dataset.val_size=8", "template=tiny",
                  "trainer=smoke", "logger=none", "onnx=null", "program=null", f"data_dir={tmp_path / 'data'}",
                  f"hydra.run.dir={tmp_path / 'train'}", module="train")
    assert out.returncode == 0, out.stderr[-2000:]
    model = load(tmp_path / "train" / "model.pt")
    assert model.classes == tuple(datasets.MNIST.classes)


def test_image_folder_tree_is_resized_and_labelled_by_folder(tmp_path):
    colours = write_image_tree(tmp_path / "train", ["cat", "dog", "emu"], 6, (20, 24), (".png", ".jpg"))
    write_image_tree(tmp_path / "test", ["cat", "dog", "emu"], 2, (30, 30))
    data = datamodule(dataset_cfg("imagefolder", f"dataset.source.root={tmp_path}", "dataset.image_size=16",
                                  "dataset.val_size=3"), batch_size=4)
    arrays = data.load()
    assert data.num_classes == 3 and arrays.classes == ("cat", "dog", "emu")
    assert arrays.train_images.shape == (18, 3, 16, 16) and arrays.test_images.shape == (6, 3, 16, 16)
    for images, labels in ((arrays.train_images, arrays.train_labels), (arrays.test_images, arrays.test_labels)):
        for image, label in zip(images, labels):
            expected = torch.tensor(colours[arrays.classes[label]], dtype=torch.float32)
            assert (image.float().mean((1, 2)) - expected).abs().max() <= 3  # jpeg is lossy


def test_image_folder_class_count_must_match_config(tmp_path):
    write_image_tree(tmp_path / "train", ["a", "b"], 2, (8, 8))
    write_image_tree(tmp_path / "test", ["a", "b"], 1, (8, 8))
    cfg = dataset_cfg("imagefolder", f"dataset.source.root={tmp_path}", "dataset.num_classes=5",
                      "dataset.val_size=1", "dataset.image_size=8")
    with pytest.raises(DataError, match="2 classes but dataset.num_classes=5"):
        datamodule(cfg, batch_size=2).load()


def test_image_folder_without_test_split_is_a_clear_error(tmp_path):
    write_image_tree(tmp_path / "train", ["a", "b"], 2, (8, 8))
    with pytest.raises(DataError, match=str(tmp_path / "test")):
        datamodule(dataset_cfg("imagefolder", f"dataset.source.root={tmp_path}"), batch_size=2).load()


def test_image_folder_missing_root_errors_name_the_setting(tmp_path):
    with pytest.raises(DataError, match=r"source\.root is not set"):
        datamodule(dataset_cfg("imagefolder"), batch_size=2)
    with pytest.raises(DataError, match=str(tmp_path / "absent" / "train")):
        datamodule(dataset_cfg("imagefolder", f"dataset.source.root={tmp_path / 'absent'}"), batch_size=2).load()


def test_digits_loads_without_download():
    data = datamodule(dataset_cfg("digits"), batch_size=64, eval_batch_size=1000)
    data.setup("fit")
    arrays = data.load()
    assert arrays.train_images.shape == (1500, 1, 8, 8) and arrays.test_images.shape == (297, 1, 8, 8)
    assert arrays.train_images.max() == 255 and data.num_classes == 10
    (x, y), = list(data.val_dataloader())
    assert x.shape == (300, 1, 8, 8) and set(y.tolist()) == set(range(10))
    assert abs(x.mean().item()) < 0.2 and 0.8 < x.std().item() < 1.2  # the config's normalisation fits


def test_shape_mismatch_with_config_is_a_clear_error():
    with pytest.raises(DataError, match="image_size=10"):
        datamodule(dataset_cfg("digits", "dataset.image_size=10"), batch_size=8).load()


def test_a_data_module_loads_its_source_once(monkeypatch):
    from blockqnn.data import modules

    loads = []
    monkeypatch.setattr(modules, "load_source", lambda source: loads.append(source) or load_source(source))
    data = datamodule(dataset_cfg("synthetic", "dataset.source.seed=123"), batch_size=8)
    assert data.load() is data.load()
    data.setup("fit")  # Lightning's setup: laid out on the device, not loaded again
    data.setup("fit")
    assert len(loads) == 1 and data.normalization() == data.normalization()


def test_synthetic_is_reproducible_and_class_dependent():
    a, b = (synthetic(200, 50, 4, 3, 8, 4, 0.1, seed=1) for _ in range(2))
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    means = torch.stack([a.train_images[a.train_labels == c].float().mean(0) for c in range(4)])
    assert torch.cdist(means.flatten(1), means.flatten(1)).fill_diagonal_(1e9).min() > 50  # classes differ


def test_imagenet_streams_a_tiny_tree(tmp_path):
    write_image_tree(tmp_path / "train", ["n01", "n02"], 5, (48, 40), (".JPEG",))
    write_image_tree(tmp_path / "val", ["n01", "n02"], 2, (40, 40), (".JPEG",))
    cfg = dataset_cfg("imagenet", f"dataset.root={tmp_path}", "dataset.image_size=32", "dataset.val_size=4",
                      "dataset.num_workers=0", "dataset.num_classes=2")
    data = datamodule(cfg, batch_size=3, eval_batch_size=4)
    assert isinstance(data, StreamedData)
    data.setup("fit")
    train, val = data.folders["train"], data.folders["val"]
    assert len(train) == 6 and len(val) == 4 and not set(train.indices) & set(val.indices)
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32 and len(data.train_dataloader()) == 2
    xt, yt = next(iter(data.test_dataloader()))
    assert xt.shape == (4, 3, 32, 32) and sorted(yt.tolist()) == [0, 0, 1, 1]
    assert train.dataset.transform is data.train_tf and val.dataset.transform is data.eval_tf
    first, again = (next(iter(data.val_dataloader()))[0] for _ in range(2))
    assert torch.equal(first, again)  # evaluation is deterministic, training is augmented


# ---- the validation split ----------------------------------------------------------------------------------------
def test_validation_split_is_disjoint_complete_and_reproducible():
    train, val = validation_split(100, 20, seed=7)
    assert len(val) == 20 and len(train) == 80
    assert not set(train.tolist()) & set(val.tolist()) and set(train.tolist()) | set(val.tolist()) == set(range(100))
    again_train, again_val = validation_split(100, 20, seed=7)
    assert torch.equal(val, again_val) and torch.equal(train, again_train)
    assert not torch.equal(val, validation_split(100, 20, seed=8)[1])


def test_validation_split_size_is_checked():
    with pytest.raises(DataError, match="val_size=100"):
        validation_split(100, 100, seed=0)


def test_device_data_val_split_is_disjoint_from_train():
    data = datamodule(dataset_cfg("synthetic"), batch_size=8)
    data.setup("fit")
    arrays = data.load()
    train_idx, val_idx = validation_split(len(arrays.train_labels), data.val_size, data.split_seed)
    assert torch.equal(data.splits.val_images, arrays.train_images[val_idx])
    assert len(data.splits.train) + len(data.splits.val_labels) == len(arrays.train_labels)


# ---- on-device augmentation --------------------------------------------------------------------------------------
def coded_images(n, size):
    """Channel 0 says which image (1..n), channel 1 the row (1..size), channel 2 the column (1..size)."""
    ramp = torch.arange(1, size + 1, dtype=torch.uint8)
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    images[:, 0] = torch.arange(1, n + 1, dtype=torch.uint8).view(n, 1, 1)
    images[:, 1] = ramp.view(size, 1)
    images[:, 2] = ramp.view(1, size)
    return images


def find_crop(crop, padded, padding):
    """The (dy, dx, flipped) for which ``crop`` is that window of ``padded``; None if it is none."""
    size = crop.shape[-1]
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            window = padded[:, dy : dy + size, dx : dx + size]
            for flipped in (False, True):
                if torch.equal(crop, window.flip(-1) if flipped else window):
                    return dy, dx, flipped
    return None


def test_crops_stay_inside_padded_image_and_flip_half_the_time():
    n, size, padding = 200, 8, 2
    images = coded_images(n, size)
    crops = Crops(images, padding, flip=True)
    gen = torch.Generator().manual_seed(0)
    found = []
    for _ in range(5):
        idx = torch.randperm(n, generator=gen)[:128]
        batch = crops.batch(idx, gen)
        padded = torch.nn.functional.pad(images[idx], (padding,) * 4)
        found += [find_crop(batch[b], padded[b], padding) for b in range(len(idx))]
    assert None not in found  # every crop is a window of its own padded image, possibly mirrored
    flips = sum(f for _, _, f in found) / len(found)
    assert 0.4 < flips < 0.6
    offsets = {(dy, dx) for dy, dx, _ in found}
    assert len(offsets) == (2 * padding + 1) ** 2  # every offset occurs


def test_crops_without_padding_or_flip_are_the_images():
    images = coded_images(10, 6)
    idx = torch.tensor([3, 1, 4])
    assert torch.equal(Crops(images, 0, flip=False).batch(idx, torch.Generator()), images[idx])


def identity_loader(images, labels, batch_size, **kwargs):
    """A loader whose normalisation is the identity (x / 255 * 255), so batches show the raw pixel values."""
    return DeviceLoader(images, labels, batch_size, mean=[0.0] * 3, std=[1 / 255] * 3, **kwargs)


def test_training_batches_keep_labels_with_their_images_and_cover_the_epoch():
    n = 100
    images = coded_images(n, 8)
    labels = torch.arange(n)
    loader = identity_loader(Crops(images, 2, flip=True), labels, 16, seed=3)
    assert len(loader) == 6  # the last partial batch is dropped
    epochs = []
    for _ in range(2):
        seen = []
        for x, y in loader:
            ids = x[:, 0].round().long()  # channel 0: image id + 1, or 0 in the padding
            for row, label in zip(ids, y):
                assert set(row[row > 0].tolist()) == {label.item() + 1}
            seen += y.tolist()
        assert len(set(seen)) == len(seen) == 96
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # a new permutation each epoch


def test_ranks_take_disjoint_shares_of_the_same_permutation():
    images, labels = coded_images(64, 4), torch.arange(64)
    shares = [
        [y for _, batch in identity_loader(Crops(images, 1, True), labels, 8, seed=1, rank=r, world=2)
         for y in batch.tolist()]
        for r in (0, 1)
    ]
    assert len(shares[0]) == len(shares[1]) == 32 and not set(shares[0]) & set(shares[1])


def test_evaluation_batches_are_in_order_and_complete():
    images, labels = coded_images(10, 4), torch.arange(10)
    batches = list(identity_loader(images, labels, 4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x = torch.cat([x for x, _ in batches])
    assert torch.equal(x, images.float()) and torch.equal(torch.cat([y for _, y in batches]), labels)


def test_normalisation_uses_mean_and_std():
    images = torch.full((2, 3, 2, 2), 255, dtype=torch.uint8)
    (x, _), = DeviceLoader(images, torch.zeros(2, dtype=torch.long), 2, mean=[0.5, 0.0, 1.0], std=[0.5, 1.0, 0.25])
    assert x[0, :, 0, 0].tolist() == pytest.approx([1.0, 1.0, 0.0])


def test_cutout_zeroes_one_square_per_image():
    x = torch.ones(64, 3, 16, 16)
    out = cutout(x, 4, torch.Generator().manual_seed(0))
    holes = (out == 0).all(1)  # all channels of a hole are zero
    per_image = holes.flatten(1).sum(1)
    assert (per_image >= 4).all() and (per_image <= 16).all() and (per_image == 16).any()
    assert ((out == 0) | (out == 1)).all()


def test_device_data_config_applies_cutout():
    cfg = dataset_cfg("synthetic", "dataset.augment.cutout=6")
    data = datamodule(cfg, batch_size=32)
    data.setup("fit")
    x, _ = next(iter(data.train_dataloader()))
    assert ((x == 0).all(1).flatten(1).sum(1) >= 6).all()


def test_datamodule_is_lightning_compatible():
    data = datamodule(OmegaConf.create(OmegaConf.to_container(dataset_cfg("synthetic"), resolve=True)), 10)
    assert isinstance(data, DeviceData)
    data.setup("fit")
    assert len(data.train_dataloader()) == 100 and len(data.val_dataloader()) == 20 and len(data.test_dataloader())

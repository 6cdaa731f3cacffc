"""Training throughput: the Lightning path the search uses against a minimal hand-written PyTorch loop.

Both train the same network (same initial weights) on the same on-device batches (blockqnn.data's fast path) with
the same optimizer and schedule (conf/trainer/early_stop.yaml); on a GPU both use bf16 autocast and channels_last.
Each side runs two epochs per round (the first warms up: cuDNN autotuning, allocator), rounds alternate, and the
best second epoch of each side counts. Prints images/s of both and their ratio (target >= 0.95), then the
per-candidate fixed cost: building the network, counting its FLOPs, and the trainer's set-up and tear-down.

With --early-stop it also times one whole search evaluation (evaluate_candidate, 12 epochs of the early-stop
recipe, validation included) of a `cifar` template candidate (N=4, F=32) on CIFAR-sized data (45,000 + 5,000
synthetic 32x32 images, 100 classes): meant for a GPU.

    python experiments/bench_training.py                                  # CPU: tiny template, 5,000 images
    python experiments/bench_training.py template=cifar template.N=4 --images 10000   # any Hydra override
    python experiments/bench_training.py --early-stop                     # on a GPU
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback

from blockqnn.codes import Block
from blockqnn.config import compose
from blockqnn.data import datamodule
from blockqnn.evaluate import evaluate_candidate
from blockqnn.fit import Classifier, build_trainer, fit, on_gpu, quiet
from blockqnn.network import complexity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import SUBSET, sync  # noqa: E402

RESIDUAL = "[(1,4,0,0,0),(2,1,3,1,0),(3,1,3,2,0),(4,5,0,1,3),(5,7,0,0,0)]"


def data_overrides(images: int) -> list[str]:
    """CIFAR-sized training images: the real subset through the image-folder loader when present."""
    if SUBSET.is_dir():
        return ["dataset=imagefolder", f"dataset.source.root={SUBSET}", f"dataset.val_size={10_000 - images}"]
    return ["dataset=synthetic", "dataset.image_size=32", "dataset.num_classes=10", "dataset.val_size=100",
            f"dataset.source.train_size={images + 100}"]


class EpochTimer(Callback):
    """Seconds of each training epoch inside Lightning's fit."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.times = device, []

    def on_train_epoch_start(self, trainer, module) -> None:
        sync(self.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        sync(self.device)
        self.times.append(time.perf_counter() - self.start)


def lightning_round(net, data, recipe, device) -> tuple[list[float], float]:
    """Epoch times and the fit's total wall time, through the search's own module, trainer and fit."""
    module = Classifier.from_recipe(copy.deepcopy(net), data.num_classes, recipe, on_gpu(recipe))
    timer = EpochTimer(device)
    start = time.perf_counter()
    with quiet():
        fit(module, data, recipe, callbacks=[timer])
    sync(device)
    return timer.times, time.perf_counter() - start


def hand_round(net, data, recipe, device) -> list[float]:
    """The same training as a plain PyTorch loop."""
    gpu = device.type == "cuda"
    net = copy.deepcopy(net).to(device)
    if gpu:
        net = net.to(memory_format=torch.channels_last)
    optimizer = instantiate(recipe.optimizer)(net.parameters())
    scheduler = instantiate(recipe.scheduler)(optimizer)
    data.setup("fit", device)
    loader = data.train_dataloader()
    times = []
    for _ in range(recipe.max_epochs):
        sync(device)
        start = time.perf_counter()
        net.train()
        for x, y in loader:
            if gpu:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
                loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def mean_ms(fn, repeat: int = 5) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1e3


def fixed_costs(block, template, data, recipe, device, fit_overhead_s: float) -> None:
    def build() -> None:
        template.build(block, data.channels, data.num_classes).to(device)
        sync(device)

    def count() -> None:
        with torch.device("meta"):
            complexity(template.build(block, data.channels, data.num_classes), data.channels, data.image_size)

    def trainer() -> None:
        with quiet():
            build_trainer(recipe)

    print("per-candidate fixed cost:")
    rows = [(f"build the network on {device}", mean_ms(build)), ("count params and FLOPs (meta)", mean_ms(count)),
            ("build the Lightning trainer", mean_ms(trainer)),
            ("fit set-up + tear-down (fit wall time minus its epochs)", fit_overhead_s * 1e3)]
    for name, ms in rows:
        print(f"  {name + ':':<58}{ms:8.1f} ms")


def early_stop_evaluation(device: torch.device) -> None:
    overrides = [
        "dataset=synthetic", "dataset.image_size=32", "dataset.num_classes=100", "dataset.val_size=5000",
        "dataset.source.train_size=50000", "dataset.source.test_size=100", "template=cifar", "template.N=4",
        "template.F=32", "trainer=early_stop", f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
    ]
    # Warm-up on the same data (a search loads it once per process): one batch, so only the candidate is timed.
    evaluate_candidate(RESIDUAL, compose("search", [*overrides, "trainer.max_epochs=1",
                                                    "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]))
    result = evaluate_candidate(RESIDUAL, compose("search", overrides))
    print(f"early-stop evaluation, cifar template N=4 F=32, residual block, 45,000 train + 5,000 val 32x32 "
          f"images, {result.epochs} epochs on {device}: {result.wall_time:.1f} s "
          f"({result.status}, {result.params:,} params, {result.flops / 1e6:.0f} MFLOPs/image"
          f"{', ' + result.error if result.error else ''})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (template, trainer, dataset)")
    parser.add_argument("--images", type=int, default=None, help="training images (default 5,000 CPU, 9,000 GPU)")
    parser.add_argument("--block", default=RESIDUAL, help="NSC code of the block (default: the residual block)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best epoch of each counts")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on CPU (default 1: on a shared 2-core machine a second OpenMP thread "
                             "stalls at every barrier and makes both sides several times slower and noisy)")
    parser.add_argument("--early-stop", action="store_true", help="time a whole 12-epoch early-stop evaluation")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    if not gpu:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if gpu else "cpu")
    images = args.images or (9_000 if gpu else 5_000)
    defaults = ["template=cifar", "template.N=4", "template.F=32"] if gpu else ["template=tiny"]
    cfg = compose("search", [*defaults, *data_overrides(images), "trainer=early_stop", "trainer.max_epochs=2",
                             *args.overrides])
    cfg.trainer.limit_val_batches = 0  # training alone is timed (entry points refuse a recipe validating nothing)
    recipe = cfg.trainer
    data = datamodule(cfg.dataset, recipe.batch_size, recipe.eval_batch_size, seed=0)
    data.load()
    block, template = Block.parse(args.block), instantiate(cfg.template)
    torch.manual_seed(0)
    net = template.build(block, data.channels, data.num_classes)
    print(f"{device}, torch threads {torch.get_num_threads()}; {cfg.dataset.name} {images:,} images "
          f"{data.image_size}x{data.image_size}, batch {recipe.batch_size}; template {dict(cfg.template)}; "
          f"precision {recipe.precision or ('bf16-mixed' if gpu else '32-true')}")
    best_lightning, best_hand, overheads = float("inf"), float("inf"), []
    for _ in range(args.rounds):
        epochs, wall = lightning_round(net, data, recipe, device)
        best_lightning, overheads = min(best_lightning, epochs[-1]), [*overheads, wall - sum(epochs)]
        best_hand = min(best_hand, hand_round(net, data, recipe, device)[-1])
    steps_images = len(data.train_dataloader()) * recipe.batch_size
    lightning_rate, hand_rate = steps_images / best_lightning, steps_images / best_hand
    print(f"Lightning path (search): {lightning_rate:>9,.0f} images/s")
    print(f"hand-written loop:       {hand_rate:>9,.0f} images/s")
    print(f"ratio Lightning / hand: {lightning_rate / hand_rate:.3f} (target >= 0.95)")
    fixed_costs(block, template, data, recipe, device, min(overheads))
    if args.early_stop:
        early_stop_evaluation(device)


if __name__ == "__main__":
    main()

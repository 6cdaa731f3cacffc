"""Training a network on Lightning: the classifier module, a lean trainer from a recipe (conf/trainer/*.yaml),
and fitting / testing on a data module of blockqnn.data.

Search trains thousands of candidates in one process, so the trainer built here pays for nothing a candidate does
not use (no progress bar, checkpoints, model summary, sanity validation or logger unless asked), and the module
logs once per epoch instead of per step. Final training (blockqnn.train) passes its loggers, callbacks,
checkpointing and progress bar through the same ``build_trainer``, and records every epoch with ``EpochRecord``.
``trainer.extra`` goes over these defaults, for a search's candidates and a final training alike.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from blockqnn.errors import ConfigError, NonFiniteLossError
from blockqnn.schema import extra_clash

log = logging.getLogger(__name__)


class Classifier(L.LightningModule):
    """Any network as a classifier: cross-entropy, optimizer and schedule from the recipe, and a per-epoch
    ``history`` of mean training loss and validation accuracy."""

    def __init__(
        self, net: nn.Module, num_classes: int, optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        scheduler_interval: str = "epoch", label_smoothing: float = 0.0, channels_last: bool = False,
        nan_check_every: int = 20,
    ) -> None:
        super().__init__()
        self.net, self.make_optimizer, self.make_scheduler = net, optimizer, scheduler
        self.scheduler_interval, self.label_smoothing = scheduler_interval, label_smoothing
        self.channels_last, self.nan_check_every = channels_last, nan_check_every
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.history: list[dict[str, float]] = []
        self._loss_sum: Tensor | None = None
        self._steps = 0
        self._val: float | None = None

    @classmethod
    def from_recipe(cls, net: nn.Module, num_classes: int, cfg: DictConfig, on_gpu: bool) -> Classifier:
        return cls(
            net, num_classes, instantiate(cfg.optimizer),
            instantiate(cfg.scheduler) if cfg.scheduler else None, cfg.scheduler_interval, cfg.label_smoothing,
            on_gpu if cfg.channels_last is None else cfg.channels_last, cfg.nan_check_every,
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def on_fit_start(self) -> None:
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)

    def configure_optimizers(self):
        optimizer = self.make_optimizer(self.parameters())
        if self.make_scheduler is None:
            return optimizer
        scheduler = self.make_scheduler(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

    # ---- training: the loss is summed on the device and checked for NaN/inf every few steps (one sync) --------
    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._steps, self._val = torch.zeros((), device=self.device), 0, None

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y, label_smoothing=self.label_smoothing)
        self._loss_sum += loss.detach().float()
        self._steps += 1
        if self._steps % self.nan_check_every == 0:
            self._check_finite()
        return loss

    def _check_finite(self) -> None:
        if not torch.isfinite(self._loss_sum):
            raise NonFiniteLossError(
                f"non-finite training loss ({self._loss_sum.item()}) in epoch {self.current_epoch + 1} "
                f"by step {self._steps}"
            )

    def on_train_epoch_end(self) -> None:
        self._check_finite()
        train_loss = (self.trainer.strategy.reduce(self._loss_sum, reduce_op="mean") / max(self._steps, 1)).item()
        self.log("train_loss", train_loss)
        self.history.append({"epoch": self.current_epoch + 1, "train_loss": train_loss, "val_acc": self._val})

    # ---- evaluation ------------------------------------------------------------------------------------------
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.val_acc.update(self(x), y)

    @property
    def epoch_val_acc(self) -> float | None:
        """This epoch's validation accuracy once validated (callbacks' ``on_train_epoch_end`` runs after it)."""
        return self._val

    def on_validation_epoch_end(self) -> None:
        self._val = self.val_acc.compute().item()
        self.val_acc.reset()
        self.log("val_acc", self._val)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.test_acc.update(self(x), y)

    def on_test_epoch_end(self) -> None:
        self.log("test_acc", self.test_acc.compute().item())
        self.test_acc.reset()


class RungStop(Callback):
    """Stops ``fit`` at the end of a rung epoch whose validation accuracy is below the rung's cutoff."""

    def __init__(self, cutoffs: Mapping[int, float]) -> None:
        self.cutoffs = {int(epoch): float(acc) for epoch, acc in cutoffs.items()}
        self.stopped_at: int | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        accuracy = getattr(pl_module, "epoch_val_acc", None)
        if epoch in self.cutoffs and accuracy is not None and accuracy < self.cutoffs[epoch]:
            self.stopped_at = epoch
            trainer.should_stop = True


def on_gpu(cfg: DictConfig) -> bool:
    """Whether a recipe's accelerator resolves to a GPU on this machine."""
    return cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())


def build_trainer(
    cfg: DictConfig, *, logger: Logger | Sequence[Logger] | bool = False, callbacks: Sequence[Callback] = (),
    enable_checkpointing: bool = False, default_root_dir: str | None = None, progress_bar: bool = False,
) -> L.Trainer:
    """A lean ``lightning.Trainer`` from a recipe; final training passes its loggers, callbacks, checkpoints and
    progress bar. ``cfg.extra`` goes over the lean defaults (the user's value wins); the arguments other settings
    give (``blockqnn.schema.TRAINER_ARGUMENTS``) it cannot set."""
    clash = extra_clash(cfg.extra)
    if clash:
        raise ConfigError(f"trainer.{clash}")
    gpu = on_gpu(cfg)
    lean = dict(num_sanity_val_steps=0, enable_progress_bar=progress_bar, enable_model_summary=False,
                enable_checkpointing=enable_checkpointing, default_root_dir=default_root_dir)
    options = lean | OmegaConf.to_container(cfg.extra, resolve=True)
    if options["enable_progress_bar"]:  # tqdm's bar, named: Lightning would pick rich's wherever rich is installed
        callbacks = [*callbacks, TQDMProgressBar()]
    return L.Trainer(
        accelerator=cfg.accelerator, devices=cfg.devices,
        strategy=cfg.strategy,
        precision=cfg.precision or ("bf16-mixed" if gpu else "32-true"),
        max_epochs=cfg.max_epochs, limit_train_batches=cfg.limit_train_batches,
        limit_val_batches=cfg.limit_val_batches, check_val_every_n_epoch=cfg.check_val_every_n_epoch,
        logger=logger if isinstance(logger, bool | Logger) else list(logger), callbacks=list(callbacks),
        benchmark=cfg.cudnn_benchmark if gpu else None, deterministic=cfg.deterministic,
        **options,
    )


class EpochRecord(Logger):
    """One row per training epoch in a CSV file (epoch, train_loss, val_acc, lr) and, with ``log_lines``, one log
    line: a full training's record whatever else logs it, appended to on resume. A Lightning logger rather than a
    callback because it sees an epoch's metrics as Lightning hands them out: the learning rate as the epoch starts,
    val_acc after validation, train_loss last (after the module's epoch-end hook, which no callback follows)."""

    COLUMNS = ("epoch", "train_loss", "val_acc", "lr")

    def __init__(self, path: str | Path, max_epochs: int, log_lines: bool = False) -> None:
        super().__init__()
        self.path, self.max_epochs, self.log_lines = Path(path), max_epochs, log_lines
        self._epoch: dict[str, float] = {}

    @property
    def name(self) -> str:
        return "epochs"

    @property
    def version(self) -> str:
        return ""  # nothing for the progress bar's v_num to show

    @property
    def save_dir(self) -> str:
        return str(self.path.parent)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._epoch.update({"lr" if k.startswith("lr-") else k: float(v) for k, v in metrics.items()})
        if "train_loss" not in metrics:
            return
        row = {k: self._epoch.get(k) for k in self.COLUMNS} | {"epoch": int(self._epoch["epoch"]) + 1}
        self._epoch = {}
        new = not self.path.is_file()
        with self.path.open("a", newline="") as file:
            writer = csv.DictWriter(file, self.COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.log_lines:
            shown = ", ".join(f"{k} {row[k]:.4g}" for k in self.COLUMNS[1:] if row[k] is not None)
            log.info("epoch %d/%d: %s", row["epoch"], self.max_epochs, shown)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Lightning's per-trainer info lines ("GPU available", "LOCAL_RANK") for a block of code, the
    deprecation Lightning's own pytree helper triggers in recent torch, and the warning that an epoch is shorter than
    the per-step logging interval (nothing a user can act on)."""
    names = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            # The module logs once per epoch: Lightning's per-step logging interval does not apply to it.
            warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def fit(module: Classifier, data: L.LightningDataModule, cfg: DictConfig, **trainer_kwargs) -> L.Trainer:
    """Train ``module`` on ``data`` with recipe ``cfg`` (see ``build_trainer``); the last epoch is always validated.

    ``module.history`` holds the epochs completed, also when training stops with an exception.
    """
    torch.set_flush_denormal(True)  # on CPU, denormal weights after the LR decays made candidates 20-50x slower
    trainer = build_trainer(cfg, **trainer_kwargs)
    trainer.fit(module, datamodule=data)
    if module.history and module.history[-1]["val_acc"] is None and cfg.limit_val_batches != 0:
        trainer.validate(module, datamodule=data, verbose=False)
        module.history[-1]["val_acc"] = module._val
    release_process_group()
    return trainer


def release_process_group() -> None:
    """End a DDP run's process group once every rank is done with it. Lightning destroys only NCCL groups at exit;
    a gloo group (DDP on CPU) left to interpreter shutdown can abort the process ("terminate called without an
    active exception") after training succeeded."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def accuracy_on_test_set(trainer: L.Trainer, module: Classifier, data: L.LightningDataModule) -> float:
    """Accuracy on the dataset's test split (final training only: search never looks at it)."""
    (metrics,) = trainer.test(module, datamodule=data, verbose=False)
    return metrics["test_acc"]

"""The settings no room below owns: the entry points' top level (registered with Hydra, which types the composed
config: ``seed=abc`` is refused while the command line is merged), the trainer recipe (``conf/trainer/*.yaml``, a
section without a ``_target_``) and torch's optimizers and schedulers, which it names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from blockqnn.schema.fields import DEVICES, FRACTION, POSITIVE, SEEDS, WARN, member, setting

# ---- the entry points' top level ----------------------------------------------------------------------------------
PROGRESS_MODES = ("auto", "line", "log", "off")
TRAIN_PROGRESS_MODES = ("auto", "bar", "log", "off")  # python -m blockqnn.train: Lightning's bar on a terminal
SEARCH_MODES = ("auto", "sync", "async")


@dataclass
class ProgressConfig:
    """``progress``: also the settings of ``blockqnn.tracking.Progress``."""

    mode: str = setting("auto", choices=PROGRESS_MODES)
    every_s: float = setting(60.0, ge=0)


@dataclass
class LoopConfig:
    mode: str = setting("auto", choices=SEARCH_MODES)
    prefetch: int = setting(0, ge=0)


@dataclass
class RunConfig:
    """What both entry points have: the groups they share, the seed, a run folder to resume, where things go."""

    dataset: Any = MISSING
    template: Any = MISSING
    trainer: Any = MISSING
    logger: Any = MISSING
    seed: int = setting(0, **SEEDS)
    resume: str | None = None
    data_dir: str = "data"
    output_root: str = "runs"


@dataclass
class SearchConfig(RunConfig):
    space: Any = MISSING
    agent: Any = MISSING
    reward: Any = MISSING
    executor: Any = MISSING
    stopping: Any = MISSING
    failed_reward: float = 0.0
    evaluator: Any = MISSING
    search: LoopConfig = field(default_factory=LoopConfig)
    progress: ProgressConfig = field(default_factory=ProgressConfig)


@dataclass
class CheckpointConfig:
    every_n_epochs: int = setting(1, ge=1)


@dataclass
class TrainProgressConfig:
    mode: str = setting("auto", choices=TRAIN_PROGRESS_MODES)


@dataclass
class TrainConfig(RunConfig):
    block: Any = None  # RUN_DIR:k, an NSC code, or the code in Hydra's list syntax
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    export: str = "model.pt"
    onnx: str | None = "model.onnx"
    program: str | None = "model.pt2"
    progress: TrainProgressConfig = field(default_factory=TrainProgressConfig)


def register_schemas() -> None:
    """Make the schemas available to conf/search.yaml and conf/train.yaml (``defaults: - search_schema``)."""
    ConfigStore.instance().store(name="search_schema", node=SearchConfig)
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


# ---- the trainer recipe (read by blockqnn.fit, not instantiated) ---------------------------------------------------
# Lightning's precision names (lightning.fabric.connector._PRECISION_INPUT), null = bf16-mixed on GPU, 32-true on CPU.
PRECISIONS = ("16-mixed", "bf16-mixed", "32-true", "64-true", "16-true", "bf16-true", "transformer-engine",
              "transformer-engine-float16", "16", "32", "64", "bf16", 16, 32, 64)
BATCHES = {"gt": 0}  # a fraction of the epoch's batches (0, 1] or a count >= 1
# The lightning.Trainer arguments blockqnn.fit takes from other settings, and where they are set: trainer.extra
# gives any other argument (its value over fit's lean defaults: enable_progress_bar, num_sanity_val_steps...).
_RECIPE = ("accelerator", "devices", "strategy", "precision", "max_epochs", "limit_train_batches", "limit_val_batches",
           "check_val_every_n_epoch", "deterministic")
TRAINER_ARGUMENTS = {
    **{key: f"set by trainer.{key}" for key in _RECIPE},
    "benchmark": "set by trainer.cudnn_benchmark",
    "logger": "set by the logger group (logger=wandb or logger=none)",
    "callbacks": "set by blockqnn.train (progress, checkpoints, learning rate, metrics.csv)",
}


@member
class Trainer:
    max_epochs: int = setting(**POSITIVE)
    batch_size: int = setting(**POSITIVE)
    eval_batch_size: int | None = setting(**POSITIVE)
    optimizer: dict = setting()
    scheduler: dict | None = setting()
    scheduler_interval: str = setting(choices=("epoch", "step"))
    label_smoothing: float = setting(**FRACTION)
    check_val_every_n_epoch: int = setting(**POSITIVE)
    nan_check_every: int = setting(**POSITIVE)
    limit_train_batches: int | float | None = setting(**BATCHES)
    limit_val_batches: int | float | None = setting(**BATCHES)
    accelerator: str = setting(choices=("auto", "cpu", "gpu", "cuda", "mps", "tpu"))
    devices: int | str | list[int] = setting(pattern=DEVICES)  # a count >= 1 or indices >= 0 (rule)
    strategy: str = setting()
    precision: str | int | None = setting(choices=PRECISIONS)
    channels_last: bool | None = setting()
    cudnn_benchmark: bool | None = setting()
    deterministic: bool | str = setting(pattern=WARN)
    extra: dict = setting()

    @staticmethod
    def rule(values: Mapping[str, Any]) -> str | None:
        devices = values.get("devices")
        indices = isinstance(devices, ListConfig)
        if (isinstance(devices, int) and devices < 1) or (indices and min(devices, default=0) < 0):
            shown = OmegaConf.to_container(devices) if indices else devices
            return f"devices={shown}: expected a number of devices >= 1, auto, or a list of device indices >= 0"
        for key in ("limit_train_batches", "limit_val_batches"):
            if isinstance(values.get(key), float) and values[key] > 1:
                return f"{key}={values[key]}: expected a fraction in (0, 1] or a count of batches (an integer)"
        return extra_clash(values["extra"]) if isinstance(values.get("extra"), DictConfig) else None


def extra_clash(extra: Mapping[str, Any]) -> str | None:
    """``extra.KEY=VALUE: where it is set`` for the first ``trainer.extra`` key another setting gives, else None."""
    for key, value in extra.items():
        if key in TRAINER_ARGUMENTS:
            shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            return f"extra.{key}={shown}: {TRAINER_ARGUMENTS[key]}, not trainer.extra"
    return None


@member
class Adam:
    lr: float = setting(ge=0)
    weight_decay: float = setting(ge=0)
    eps: float = setting(gt=0)


@member
class SGD:
    lr: float = setting(ge=0)
    momentum: float = setting(ge=0)
    nesterov: bool = setting()
    dampening: float = setting(ge=0)
    weight_decay: float = setting(ge=0)

    @staticmethod
    def rule(values: Mapping[str, Any]) -> str | None:
        if values.get("nesterov") and not values.get("momentum", 0) > 0:
            return f"momentum={values.get('momentum', 0)}: Nesterov momentum (nesterov=true) needs momentum > 0"
        return None


@member
class StepLR:
    step_size: int = setting(**POSITIVE)
    gamma: float = setting(gt=0)


@member
class CosineAnnealingLR:
    T_max: int = setting(**POSITIVE)  # noqa: N815 (torch's name)
    eta_min: float = setting(ge=0)


# Targets blockqnn does not own, by name; blockqnn's own targets declare their settings themselves (``@declared``).
TARGETS: dict[str, type] = {
    "torch.optim.Adam": Adam,
    "torch.optim.SGD": SGD,
    "torch.optim.lr_scheduler.StepLR": StepLR,
    "torch.optim.lr_scheduler.CosineAnnealingLR": CosineAnnealingLR,
}
SECTIONS: dict[str, type] = {"trainer": Trainer}  # sections without a _target_, by their key

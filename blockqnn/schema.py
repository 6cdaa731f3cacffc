"""Every setting's type and legal values, in one place, checked when a config is composed.

A schema is a dataclass: each field declares one setting, its type by the annotation and its legal values by
``setting(ge=, gt=, le=, lt=, choices=, pattern=)``. Two kinds:

- the entry points' top level (``SearchConfig``, ``TrainConfig``), registered with Hydra, which types the composed
  config (``seed=abc`` is refused while the command line is merged);
- every group member, found by the ``_target_`` it instantiates (``TARGETS``) or, for a section without one, by its
  place (``SECTIONS``: the trainer recipe). A member's own settings are declared in its schema, so members of one
  group may differ (``space=nsc`` and ``space=nasbench201``, ``DeviceData`` and ``StreamedData``).

``check_config`` walks a composed config and refuses the first value outside its declaration with one line that
names the key (``trainer.max_epochs=-1: expected an integer >= 1``); ``blockqnn.config.compose`` and every entry
point run it before anything else. A target without a schema is not checked, and neither are keys a schema leaves
undeclared (extra optimizer arguments go to torch as given); ``tests/test_schema.py`` keeps every key of ``conf/``
declared and every target of ``conf/`` known.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from blockqnn.errors import ConfigError

LIMITS = ("ge", "gt", "le", "lt", "choices", "pattern")


def setting(default: Any = dataclasses.MISSING, **limits: Any) -> Any:
    """A schema field: its default (none for group members, whose defaults live in ``conf/``) and legal values."""
    unknown = set(limits) - set(LIMITS)
    if unknown:
        raise TypeError(f"unknown limits {sorted(unknown)}")
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=limits)
    return field(default=default, metadata=limits)


# ---- the entry points' top level (typed by Hydra) ------------------------------------------------------------------
PROGRESS_MODES = ("auto", "line", "log", "off")
SEEDS = {"ge": 0, "lt": 2**32}  # what numpy's and torch's generators take


@dataclass
class ProgressConfig:
    mode: str = setting("auto", choices=PROGRESS_MODES)
    every_s: float = setting(60.0, ge=0)


@dataclass
class LoopConfig:
    mode: str = setting("auto", choices=("auto", "sync", "async"))
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
    failed_reward: float = 0.0
    search: LoopConfig = field(default_factory=LoopConfig)
    progress: ProgressConfig = field(default_factory=ProgressConfig)


@dataclass
class CheckpointConfig:
    every_n_epochs: int = setting(1, ge=1)


@dataclass
class TrainProgressConfig:
    mode: str = setting("auto", choices=("auto", "bar", "log", "off"))


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


# ---- group members (checked by check_config) ------------------------------------------------------------------------
member = dataclass(kw_only=True)
POSITIVE, COUNT = {"ge": 1}, {"ge": 0}
FRACTION = {"ge": 0, "le": 1}


@member
class Augment:
    crop_padding: int = setting(**COUNT)
    flip: bool = setting()
    cutout: int = setting(**COUNT)


@member
class DeviceData:
    """``blockqnn.data.DeviceData``: a dataset held on the training device; its ``source`` has its own schema."""

    name: str = setting()
    source: dict = setting()
    channels: int = setting(**POSITIVE)
    image_size: int = setting(**POSITIVE)
    num_classes: int | None = setting(ge=2)  # null: from the data
    mean: list[float] | None = setting()  # null: measured on the training split
    std: list[float] | None = setting(gt=0)
    augment: Augment = setting()
    val_size: int = setting(**POSITIVE)
    split_seed: int = setting(**SEEDS)


@member
class StreamedData:
    """``blockqnn.data.StreamedData``: an ImageNet-style tree streamed from disk."""

    name: str = setting()
    root: str = setting()
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


@member
class CifarSource:
    root: str = setting()
    classes: int = setting(choices=(10, 100))
    download: bool = setting()


@member
class DigitsSource:
    test_size: int = setting(ge=1, lt=1797)  # scikit-learn's digits hold 1,797 images
    seed: int = setting(**SEEDS)


@member
class ImageFolderSource:
    root: str = setting()
    image_size: int = setting(**POSITIVE)
    channels: int = setting(choices=(1, 3))  # grey or RGB
    train_dir: str = setting()
    test_dir: str = setting()


@member
class SyntheticSource:
    train_size: int = setting(**POSITIVE)
    test_size: int = setting(**POSITIVE)
    num_classes: int = setting(ge=2)
    channels: int = setting(**POSITIVE)
    image_size: int = setting(**POSITIVE)
    grid: int = setting(**POSITIVE)
    noise: float = setting(ge=0)
    seed: int = setting(**SEEDS)


@member
class Template:
    stem: str = setting(choices=("conv", "imagenet"))
    stages: int = setting(**POSITIVE)
    N: int = setting(**POSITIVE)  # noqa: N815 (the paper's name)
    F: int = setting(**POSITIVE)  # noqa: N815


@member
class NSCKernels:
    conv: list[int] = setting(choices=(1, 3, 5))
    max_pool: list[int] = setting(choices=(1, 3))
    avg_pool: list[int] = setting(choices=(1, 3))


@member
class NSCSpace:
    max_index: int = setting(ge=2)  # one layer and the Terminal
    types: list[int] = setting(ge=1, le=7)  # NSC layer types 1..7
    kernels: NSCKernels = setting()
    terminal_weight: float = setting(gt=0)


@member
class NASBench201Space:
    table: str = setting()
    arch_column: str = setting()
    metric_column: str = setting()
    metric_unit: str = setting(choices=("auto", "percent", "fraction"))
    ops: list[str] = setting(choices=("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"))


@member
class QLearningAgent:
    alpha: float = setting(gt=0, le=1)
    gamma: float = setting(**FRACTION)
    q_init: float = setting()
    batch_size: int = setting(**POSITIVE)
    budget: int | None = setting(**POSITIVE)
    replay: bool = setting()
    replay_size: int = setting(**COUNT)
    replay_every: str = setting(choices=("block", "iteration"))
    shaping: bool = setting()
    epsilon_schedule: str = setting(choices=("paper", "linear", "constant"))
    schedule_scale: float = setting(gt=0)
    schedule_iterations: int = setting(**POSITIVE)
    epsilon_start: float = setting(**FRACTION)
    epsilon_end: float = setting(**FRACTION)
    epsilon_override: float | None = setting(**FRACTION)

    @staticmethod
    def rule(values: Mapping[str, Any]) -> str | None:
        if values.get("budget") is None:
            return None
        for key, default in (("schedule_scale", 1.0), ("schedule_iterations", 178)):
            if values.get(key, default) != default:
                return (f"{key}={values[key]}: agent.budget sizes the schedule; {key} applies only without one "
                        "(agent.budget=null)")
        return None


@member
class RegularizedEvolution:
    population_size: int = setting(**POSITIVE)
    tournament_size: int = setting(**POSITIVE)
    batch_size: int = setting(**POSITIVE)
    budget: int | None = setting(**POSITIVE)

    @staticmethod
    def rule(values: Mapping[str, Any]) -> str | None:
        if values.get("tournament_size", 1) > values.get("population_size", 1):
            return (f"tournament_size={values['tournament_size']}: expected at most population_size "
                    f"({values['population_size']})")
        return None


@member
class PaperReward:
    mu: float = setting(ge=0)
    rho: float = setting(ge=0)
    flops_unit: float = setting(gt=0)


@member
class AccuracyReward:
    pass


AUTO, DEVICES, WARN = "auto", r"auto|\d+(,\d+)*,?", "warn"  # patterns of the strings a setting takes
PATTERN_WORDS = {AUTO: "auto", DEVICES: "auto or device indices such as 0,1", WARN: "warn"}


@member
class LocalExecutor:
    workers: int | str = setting(ge=0, pattern=AUTO)  # 0: in the search process
    threads: int | str = setting(ge=1, pattern=AUTO)
    flops_per_thread: float = setting(ge=0)
    workers_per_gpu: int = setting(ge=1)


@member
class RayInit:
    num_cpus: int | None = setting(**COUNT)
    num_gpus: int | None = setting(**COUNT)
    include_dashboard: bool = setting()
    log_to_driver: bool = setting()


@member
class RayExecutor:
    address: str | None = setting()
    num_gpus: float = setting(ge=0)
    num_cpus: float = setting(ge=0)
    max_retries: int = setting(**COUNT)
    init: RayInit = setting()


@member
class WandbTracker:
    project: str = setting()
    entity: str | None = setting()
    mode: str | None = setting(choices=("online", "offline", "disabled", "shared"))
    group: str | None = setting()
    tags: list[str] = setting()
    table_every: int = setting(**COUNT)  # 0: only at the end
    console: str = setting(choices=("off", "auto", "wrap", "redirect", "wrap_raw", "wrap_emu"))
    artifacts: bool = setting()
    top_k: int = setting(**POSITIVE)


@member
class NoTracker:
    pass


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
    """A training recipe (``conf/trainer/*.yaml``): read by ``blockqnn.fit``, not instantiated."""

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


TARGETS: dict[str, type] = {
    "blockqnn.data.DeviceData": DeviceData,
    "blockqnn.data.StreamedData": StreamedData,
    "blockqnn.data.cifar": CifarSource,
    "blockqnn.data.digits": DigitsSource,
    "blockqnn.data.image_folder": ImageFolderSource,
    "blockqnn.data.synthetic": SyntheticSource,
    "blockqnn.network.Template": Template,
    "blockqnn.spaces.NSCSpace": NSCSpace,
    "blockqnn.spaces.NASBench201Space": NASBench201Space,
    "blockqnn.agents.QLearningAgent": QLearningAgent,
    "blockqnn.agents.RegularizedEvolution": RegularizedEvolution,
    "blockqnn.reward.PaperReward": PaperReward,
    "blockqnn.reward.AccuracyReward": AccuracyReward,
    "blockqnn.executors.LocalExecutor": LocalExecutor,
    "blockqnn.executors.RayExecutor": RayExecutor,
    "blockqnn.tracking.WandbTracker": WandbTracker,
    "blockqnn.tracking.NoTracker": NoTracker,
    "torch.optim.Adam": Adam,
    "torch.optim.SGD": SGD,
    "torch.optim.lr_scheduler.StepLR": StepLR,
    "torch.optim.lr_scheduler.CosineAnnealingLR": CosineAnnealingLR,
}
SECTIONS: dict[str, type] = {"trainer": Trainer}  # sections without a _target_, by their key


# ---- checking --------------------------------------------------------------------------------------------------------
def check_config(cfg: DictConfig) -> None:
    """Refuse the first value of ``cfg`` outside its declared type and legal values, with one line naming the key."""
    root = OmegaConf.get_type(cfg)
    for key, problem in _problems(cfg, root if dataclasses.is_dataclass(root) else None, ""):
        raise ConfigError(f"{key}{problem}")


def schema_of(node: DictConfig, path: str, declared: Any = None) -> type | None:
    """The schema of a config node: the one its parent's schema declares, its target's, or its section's."""
    if isinstance(declared, type) and dataclasses.is_dataclass(declared):
        return declared
    target = node.get("_target_") if "_target_" in node else None
    return TARGETS.get(target) if isinstance(target, str) else SECTIONS.get(path)


def _problems(node: DictConfig, schema: type | None, prefix: str) -> Iterator[tuple[str, str]]:
    """``(key, what is wrong)`` for each value under ``node`` that breaks its declaration: the node's own values
    first, then nested sections (whose interpolations, ``${..channels}``, point back at the values above)."""
    hints, limits = declarations(schema) if schema is not None else ({}, {})
    values = {key: _value(node, key) for key in node
              if not str(key).startswith("_") and not OmegaConf.is_missing(node, key)}
    for key, value in values.items():
        problem = _problem(value, hints[key], limits[key]) if key in hints else None
        if problem:
            yield f"{prefix}{key}", problem
            return
    rule = getattr(schema, "rule", None)
    broken = rule(values) if rule is not None else None
    if broken:
        key, problem = broken.split("=", 1)
        yield f"{prefix}{key}", f"={problem}"
        return
    for key, value in values.items():
        if isinstance(value, DictConfig):
            yield from _problems(value, schema_of(value, f"{prefix}{key}", hints.get(key)), f"{prefix}{key}.")


@functools.cache
def declarations(schema: type) -> tuple[dict[str, Any], dict[str, Mapping[str, Any]]]:
    """A schema's type hints and limits, by setting."""
    return typing.get_type_hints(schema), {f.name: f.metadata for f in dataclasses.fields(schema)}


def _value(node: DictConfig, key: Any) -> Any:
    try:
        return node[key]
    except Exception:  # noqa: BLE001 (an interpolation that cannot resolve here is left to its user)
        return None


def _problem(value: Any, hint: Any, limits: Mapping[str, Any]) -> str | None:
    """``=VALUE: expected ...`` if ``value`` does not fit ``hint`` and ``limits``, else None."""
    items = list(value) if isinstance(value, ListConfig) and _is_list(hint) else [value]
    if _fits(value, hint) and all(_legal(item, limits) for item in items):
        return None
    shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return f"={'null' if shown is None else shown}: expected {describe(hint, limits)}"


def _fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, ListConfig) and all(_fits(v, typing.get_args(hint)[0]) for v in value)
    return isinstance(value, DictConfig)  # dict, or a nested schema


def _is_list(hint: Any) -> bool:
    return typing.get_origin(hint) is list or any(_is_list(h) for h in typing.get_args(hint) if h is not type(None))


def _legal(value: Any, limits: Mapping[str, Any]) -> bool:
    if value is None or isinstance(value, bool | DictConfig):
        return True
    if "choices" in limits and value in limits["choices"] and type(value) in map(type, limits["choices"]):
        return True
    if "choices" in limits:
        return False
    if isinstance(value, str):
        return "pattern" not in limits or re.fullmatch(limits["pattern"], value) is not None
    bounds = {"ge": value.__ge__, "gt": value.__gt__, "le": value.__le__, "lt": value.__lt__}
    return all(bounds[k](v) for k, v in limits.items() if k in bounds)


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}


def describe(hint: Any, limits: Mapping[str, Any] = {}) -> str:  # noqa: B006 (read only)
    """What a setting takes, in words: ``an integer >= 1``, ``one of auto, line, log, off``."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kinds = typing.get_args(hint) if union else (hint,)
    choices = ", ".join(dict.fromkeys(map(str, limits.get("choices", ()))))
    words = []
    for kind in kinds:
        if typing.get_origin(kind) is list:
            each = f", each one of {choices}" if choices else _bounds(limits, " each")
            words.append(f"a list of {_plural(typing.get_args(kind)[0])}{each}")
        elif choices and kind is not type(None):
            words.append(f"one of {choices}")
        elif kind in (int, float):
            words.append(_NAMES[kind] + _bounds(limits))
        elif kind is str and "pattern" in limits:
            words.append(PATTERN_WORDS.get(limits["pattern"], f"a string matching {limits['pattern']}"))
        else:
            words.append(_NAMES.get(kind, "a mapping"))
    return " or ".join(dict.fromkeys(words))


def _plural(kind: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings"}.get(kind, "values")


def _bounds(limits: Mapping[str, Any], prefix: str = "") -> str:
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts = [f"{signs[k]} {v}" for k, v in limits.items() if k in signs]
    return f"{prefix} {' and '.join(parts)}" if parts else ""

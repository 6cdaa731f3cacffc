"""Schemas of the entry points' top-level config (conf/search.yaml, conf/train.yaml), typed so that a wrong value
(``seed=abc``, ``failed_reward=abc``) is refused when the config is composed, with the reason, before anything
runs. The groups (dataset, template, ...) are checked by the objects they instantiate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ProgressConfig:
    mode: str = "auto"  # checked by tracking.Progress
    every_s: float = 60.0


@dataclass
class LoopConfig:
    mode: str = "auto"  # auto | sync | async, checked by blockqnn.search
    prefetch: int = 0


@dataclass
class RunConfig:
    """What both entry points have: the groups they share, the seed, a run folder to resume, where things go."""

    dataset: Any = MISSING
    template: Any = MISSING
    trainer: Any = MISSING
    logger: Any = MISSING
    seed: int = 0
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
    every_n_epochs: int = 1


@dataclass
class TrainConfig(RunConfig):
    block: Any = None  # RUN_DIR:k, an NSC code, or the code in Hydra's list syntax
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    export: str = "model.pt"


def register_schemas() -> None:
    """Make the schemas available to conf/search.yaml and conf/train.yaml (``defaults: - search_schema``)."""
    ConfigStore.instance().store(name="search_schema", node=SearchConfig)
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)

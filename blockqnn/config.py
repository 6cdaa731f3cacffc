"""Composing the project's Hydra configs outside a Hydra app (CLIs, tests, notebooks), and keying what a config
builds (``config_key``) so that each process builds it once."""

from __future__ import annotations

import json
from collections.abc import Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from blockqnn.errors import ConfigError
from blockqnn.schema import CONF_DIR, check_config, register_schemas

register_schemas()  # before any config is composed, by an entry point or by ``compose``


def check_conf_dir() -> None:
    """A package whose configs are missing (a build that left out its data files) says so in one line."""
    if not (CONF_DIR / "search.yaml").is_file():
        raise ConfigError(f"blockqnn's configs are missing ({CONF_DIR}): reinstall it (pip install . packages "
                          "conf/ as blockqnn/conf), or run from a checkout")


def compose(config_name: str = "search", overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``python -m blockqnn.<config_name> OVERRIDES`` would run with (hydra.* resolved away)."""
    check_conf_dir()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_first_lines(e)) from None
    check_config(cfg)
    return cfg


def _first_lines(error: BaseException) -> str:
    """An error's first line, with its cause's ("Error merging override seed=x: Value 'x' ... Integer")."""
    lines = [str(e).strip().splitlines()[0] for e in (error, error.__cause__) if e is not None and str(e).strip()]
    return ": ".join(line.rstrip(".") for line in lines)


def load_group(group: str, name: str) -> DictConfig:
    """One config group member (e.g. template/cifar), resolved against the search config's defaults."""
    cfg = compose("search", [f"{group}={name}"])
    try:
        return OmegaConf.create(OmegaConf.to_container(cfg[group], resolve=True))
    except OmegaConfBaseException as e:
        raise ConfigError(_first_lines(e)) from None


def config_key(cfg: DictConfig | dict) -> str:
    """A stable text key of a config (resolved, sorted), for caching what it loads or builds."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True) if isinstance(cfg, DictConfig) else cfg
    return json.dumps(container, sort_keys=True)


# Targets of classes that moved into a package, as histories written before the move store them. ``_target_``s now
# name packages (``blockqnn.agents.QLearningAgent``), so moves inside a package need no entry here.
MOVED_TARGETS = {
    "blockqnn.agent.QLearningAgent": "blockqnn.agents.QLearningAgent",
    "blockqnn.evolution.RegularizedEvolution": "blockqnn.agents.RegularizedEvolution",
    "blockqnn.space.NSCSpace": "blockqnn.spaces.NSCSpace",
    "blockqnn.nasbench201.NASBench201Space": "blockqnn.spaces.NASBench201Space",
}


# Sections added since, as a history written before them ran: a resume adopts these instead of today's defaults.
ADDED_SECTIONS = {"stopping": {"_target_": "blockqnn.stopping.NoStopping"}}


def current_config(cfg: DictConfig) -> DictConfig:
    """A stored config in today's terms, in place: moved targets renamed, sections added since filled in as the
    run had them."""
    for key, value in ADDED_SECTIONS.items():
        if key not in cfg:
            cfg[key] = value
    return current_targets(cfg)


def current_targets(cfg: DictConfig) -> DictConfig:
    """``cfg`` (a stored config) with every moved ``_target_`` renamed to where the class lives now, in place."""
    for key in list(cfg.keys()):
        node = cfg._get_node(key)
        if isinstance(node, DictConfig):
            current_targets(node)
        elif key == "_target_" and cfg[key] in MOVED_TARGETS:
            cfg[key] = MOVED_TARGETS[cfg[key]]
    return cfg

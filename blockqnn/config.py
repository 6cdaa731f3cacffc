"""Composing the project's Hydra configs outside a Hydra app (CLIs, tests, notebooks), and keying what a config
builds (``config_key``) so that each process builds it once."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from blockqnn.errors import ConfigError
from blockqnn.schema import check_config, register_schemas

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
register_schemas()  # before any config is composed, by an entry point or by ``compose``


def check_conf_dir() -> None:
    """The configs live beside the package (``conf/``, as in a checkout); a plain wheel install has none."""
    if not (CONF_DIR / "search.yaml").is_file():
        raise ConfigError(f"blockqnn's configs are missing ({CONF_DIR}): install from a checkout with "
                          "pip install -e . (the conf/ folder stays next to the package)")


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

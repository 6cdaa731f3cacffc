"""Composing the project's Hydra configs outside a Hydra app (CLIs, tests, notebooks), and comparing a resumed
run's config with the stored one."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from blockqnn.schema import register_schemas

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
register_schemas()  # before any config is composed, by an entry point or by ``compose``

# Leaves that say where or on what a run computes, not what its results mean: data and tables may move, and a
# resumed run may use other hardware. Ignored when a resume is compared with its stored config.
LOCATION_KEYS = ("root", "download", "table", "accelerator", "cudnn_benchmark", "eval_batch_size")
# Leaves holding paths; stored absolute.
PATH_KEYS = ("root", "table")


class ConfigError(ValueError):
    """A config that cannot be composed: unknown option, group member or missing value."""


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
            return hydra_compose(config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_first_lines(e)) from None


def adopt_stored(stored: DictConfig, cfg: DictConfig, sections: Sequence[str], overridden: set[str]) -> DictConfig:
    """A resume's config: each of ``sections`` comes from the stored run unless the command line names it whole
    (``trainer=final``), so ``resume=RUN`` alone continues as started; leaves it names (``trainer.max_epochs=60``)
    then replace the stored values. ``overridden``: the keys the command line set (``override_keys``)."""
    merged = cfg.copy()
    with open_dict(merged):
        for section in sections:
            if section in overridden or section not in stored:
                continue
            replace_section(merged, section, stored[section])
            for key in sorted(k for k in overridden if k.startswith(f"{section}.")):
                OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)
    return merged


def replace_section(cfg: DictConfig, key: str, value: Any) -> None:
    """``cfg[key] = value``, also where a schema types the section: OmegaConf refuses a plain mapping there, but
    its keys are fixed, so merging the value in replaces every one of them."""
    cfg[key] = OmegaConf.merge(cfg[key], value) if is_dataclass(OmegaConf.get_type(cfg, key)) else value


def _first_lines(error: BaseException) -> str:
    """An error's first line, with its cause's ("Error merging override seed=x: Value 'x' ... Integer")."""
    lines = [str(e).strip().splitlines()[0] for e in (error, error.__cause__) if e is not None and str(e).strip()]
    return ": ".join(line.rstrip(".") for line in lines)


def changed_leaves(
    old: DictConfig | Mapping[str, Any], new: DictConfig | Mapping[str, Any], sections: Sequence[str],
    ignored: Sequence[str] = (),
) -> list[str]:
    """``key (old -> new)`` for each resolved leaf under ``sections`` that differs, leaves named in ``ignored``
    aside: what a resumed run (search or training) may not change."""
    before, after = _leaves(old), _leaves(new)
    keys = sorted(
        key for key in before.keys() | after.keys()
        if key.split(".")[0] in sections and key.split(".")[-1] not in ignored
        and before.get(key, "<unset>") != after.get(key, "<unset>")
    )
    return [f"{k} ({before.get(k, '<unset>')} -> {after.get(k, '<unset>')})" for k in keys]


def _leaves(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            flat[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg), "")
    return flat


def load_group(group: str, name: str) -> DictConfig:
    """One config group member (e.g. template/cifar), resolved against the search config's defaults."""
    cfg = compose("search", [f"{group}={name}"])
    try:
        return OmegaConf.create(OmegaConf.to_container(cfg[group], resolve=True))
    except OmegaConfBaseException as e:
        raise ConfigError(_first_lines(e)) from None


def override_keys(overrides: Sequence[str]) -> set[str]:
    """The keys command-line overrides set (``+trainer.max_epochs=60`` -> ``trainer.max_epochs``, ``dataset@x=y`` ->
    ``dataset``): on resume, what comes from the command line rather than from the stored run."""
    return {o.lstrip("+~").split("=")[0].split("@")[0] for o in overrides}


def register_run_folder_resolvers(entry: str, is_folder: Callable[[str], bool], check: Callable[[str], Any]) -> None:
    """The two resolvers an entry point's conf names its run folder with (``conf/search.yaml``, ``conf/train.yaml``):

    - ``blockqnn.<entry>_dir:${resume},NEW``: the folder to resume, checked before Hydra writes anything into it,
      else a new one;
    - ``blockqnn.<entry>_hydra_subdir:${hydra.run.dir},${now:...}``: where Hydra writes the job's config. A resume
      (``resume=`` or ``hydra.run.dir=``) keeps the folder's original ``.hydra``, writes its own beside it, and is
      checked first. The stamp comes from Hydra's cached ``now``: every read of the setting names the same folder.
    """

    def run_dir(resume: str | None, default: str) -> str:
        if resume is None:
            return default
        check(resume)
        return str(resume)

    def hydra_subdir(folder: str, stamp: str) -> str:
        if not is_folder(folder):
            return ".hydra"
        check(folder)
        return f".hydra/resume-{stamp}"

    OmegaConf.register_new_resolver(f"blockqnn.{entry}_dir", run_dir, replace=True)
    OmegaConf.register_new_resolver(f"blockqnn.{entry}_hydra_subdir", hydra_subdir, replace=True)


def absolute_locations(cfg: DictConfig) -> DictConfig:
    """Data roots and tables as absolute paths (``~`` expanded), so that a stored run resumes from any folder."""
    cfg = cfg.copy()

    def walk(node: DictConfig) -> None:
        for key in node:
            value = node[key]
            if isinstance(value, DictConfig):
                walk(value)
            elif key in PATH_KEYS and isinstance(value, str):
                node[key] = str(Path(value).expanduser().absolute())

    for section in ("dataset", "space"):
        if isinstance(cfg.get(section), DictConfig):
            walk(cfg[section])
    return cfg

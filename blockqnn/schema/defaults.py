"""Where a setting's default is written: in its group member's yaml (``conf/<group>/<member>.yaml``), and nowhere
else. A schema declares types and legal values only; a constructor declared with ``@declared(group, schema,
member=...)`` names no default for its settings, and a call from Python that leaves one out gets the yaml's value
(``blockqnn.schema.check.declared``), so the command line and Python build the same object from the same words.

The configs sit beside the package in a checkout and inside it in a wheel; ``blockqnn.config`` composes from the
same folder. Read once per process: they are the package's data, not the user's.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from blockqnn.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parents[1]
# A checkout's conf/ beside the package (the source of truth, edited in place), else the copy a wheel ships inside it.
CONF_DIR = next((d for d in (_PACKAGE.parent / "conf", _PACKAGE / "conf") if (d / "search.yaml").is_file()),
                _PACKAGE / "conf")


def member_defaults(group: str, member: str) -> dict[str, Any]:
    """The settings ``conf/<group>/<member>.yaml`` writes, as plain Python values (a fresh copy: the caller may keep
    and change it). A value that needs the rest of a composed config (``${trainer.max_epochs}``) is left out, so a
    Python call must give it."""
    return copy.deepcopy(_written(group, member))


@functools.cache
def _written(group: str, member: str) -> dict[str, Any]:
    path = CONF_DIR / group / f"{member}.yaml"
    if not path.is_file():
        raise ConfigError(f"blockqnn's configs are missing ({path}): reinstall it (pip install .)")
    node = OmegaConf.load(path)
    if "defaults" in node:  # a member composed of others (agent=random): its values are not this file's alone
        raise TypeError(f"{path} composes other members: declare the defaults of a member without a defaults list")
    values = {}
    for key in node:
        if str(key).startswith("_"):  # _target_, _recursive_: Hydra's words, not settings
            continue
        try:
            value = node[key]
            values[str(key)] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        except OmegaConfBaseException:  # an interpolation into the composed config: no default outside it
            continue
    return values

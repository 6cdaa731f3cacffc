"""How a setting is declared: a field of a schema dataclass, its type by the annotation and its legal values by
``setting(ge=, gt=, le=, lt=, choices=, pattern=)``; and the limits several schemas share."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

LIMITS = ("ge", "gt", "le", "lt", "choices", "pattern")


def setting(default: Any = dataclasses.MISSING, **limits: Any) -> Any:
    """A schema field: its default (none for group members, whose defaults live in ``conf/``) and legal values."""
    unknown = set(limits) - set(LIMITS)
    if unknown:
        raise TypeError(f"unknown limits {sorted(unknown)}")
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=limits)
    return field(default=default, metadata=limits)


member = dataclasses.dataclass(kw_only=True)  # a group member's schema: no defaults, any order
POSITIVE, COUNT = {"ge": 1}, {"ge": 0}
FRACTION = {"ge": 0, "le": 1}
SEEDS = {"ge": 0, "lt": 2**32}  # what numpy's and torch's generators take

AUTO, DEVICES, WARN = "auto", r"auto|\d+(,\d+)*,?", "warn"  # patterns of the strings a setting takes
PATTERN_WORDS = {AUTO: "auto", DEVICES: "auto or device indices such as 0,1", WARN: "warn"}

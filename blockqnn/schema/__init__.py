"""Every setting's type and legal values, declared once and checked when a config is composed and when a
constructor is called from Python.

A schema is a dataclass: each field declares one setting, its type by the annotation and its legal values by
``setting(ge=, gt=, le=, lt=, choices=, pattern=)`` (``fields``). Where the schemas live:

- a group member's beside the class or function its ``_target_`` builds, which ``@declared(group, schema)`` ties to
  it (``blockqnn.agents.qlearning``: ``QLearningSettings`` and ``QLearningAgent``), so a member's settings use the
  word lists of the module that owns them; members of one group may differ (``space=nsc``, ``space=nasbench201``);
- what no room below owns here (``entry``): the entry points' top level (``SearchConfig``, ``TrainConfig``,
  registered with Hydra), the trainer recipe (a section without a ``_target_``) and torch's optimizers.

A schema writes no default: a setting's default is written once, in its member's yaml (``conf/<group>/<member>.yaml``),
and a constructor declared with ``@declared(group, schema, member=...)`` takes it from there when a Python call leaves
it out (``defaults``), so ``QLearningAgent(space)`` is ``agent=qlearning``.

``check_config`` (``check``) walks a composed config and refuses the first value outside its declaration with one
line that names the key (``trainer.max_epochs=-1: expected an integer >= 1``); ``blockqnn.config.compose`` and every
entry point run it before anything else. A target without a schema is not checked, and neither are keys a schema
leaves undeclared (extra optimizer arguments go to torch as given); ``tests/test_schema.py`` keeps every key of
``conf/`` declared and every target of ``conf/`` known.
"""

from blockqnn.schema.check import check, check_config, declarations, declared, describe, schema_of, target_schema
from blockqnn.schema.defaults import CONF_DIR, member_defaults
from blockqnn.schema.entry import (
    PRECISIONS,
    PROGRESS_MODES,
    SEARCH_MODES,
    TRAIN_PROGRESS_MODES,
    TRAINER_ARGUMENTS,
    ProgressConfig,
    extra_clash,
    register_schemas,
)
from blockqnn.schema.fields import AUTO, COUNT, FRACTION, POSITIVE, SEEDS, member, setting

__all__ = [
    "AUTO", "CONF_DIR", "COUNT", "FRACTION", "POSITIVE", "PRECISIONS", "PROGRESS_MODES", "SEARCH_MODES", "SEEDS",
    "TRAIN_PROGRESS_MODES", "TRAINER_ARGUMENTS", "ProgressConfig", "check", "check_config", "declarations", "declared",
    "describe", "extra_clash", "member", "member_defaults", "register_schemas",
    "schema_of", "setting", "target_schema",
]

"""The ``--help`` pages of ``python -m blockqnn.search`` and ``blockqnn.train``: their text lives in
``conf/hydra/help/<command>.yaml`` (Hydra's ``hydra.help.template``); what it lists is read from ``conf/`` when the
page is shown, through the resolvers below, so that a preset or group member added to ``conf/`` appears on its own.

- ``${blockqnn.help_presets:GROUP}``: each member of a preset group (``experiment``, ``hparams_search``) with its
  one line: the first comment line of its file, up to its first colon;
- ``${blockqnn.help_groups:${hydra.runtime.choices}}``: the groups a user picks from, each with its members, the
  one in use marked ``*`` (the page follows the command line: ``experiment=quickstart --help``). Hydra's own groups,
  the presets and ``preset/<group>`` (a preset's settings for one member, chosen by the preset) are left out;
- ``${blockqnn.prog:MODULE}``: the command's name as the user typed it (``blockqnn-search`` or ``python -m ...``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from omegaconf import OmegaConf

from blockqnn.config import CONF_DIR

PRESET_GROUPS = ("experiment", "hparams_search")
INTERNAL_GROUPS = ("preset",)  # preset/agent, preset/stopping: picked by the preset in use, never by the user


def presets(group: str) -> str:
    """One line per member of ``group``: its name and what its file's first comment line says it is."""
    files = sorted((CONF_DIR / group).glob("*.yaml"))
    width = max((len(f.stem) for f in files), default=0)
    return "\n".join(f"  {f.stem:<{width}}  {one_line(f.read_text())}".rstrip() for f in files)


def one_line(text: str) -> str:
    """A config file's summary: its first comment line that is not a ``@package`` directive, up to a colon."""
    for line in text.splitlines():
        comment = line.strip().removeprefix("#").strip()
        if line.lstrip().startswith("#") and comment and not comment.startswith("@package"):
            return comment.split(":")[0].rstrip(".")
    return ""


def groups(choices: Mapping[str, str | None]) -> str:
    """The groups a user picks from, each with its members and the one in use marked ``*``."""
    picked = {group: choice for group, choice in choices.items()
              if not group.startswith("hydra/") and group not in PRESET_GROUPS
              and group.split("/")[0] not in INTERNAL_GROUPS}
    width = max((len(group) for group in picked), default=0)
    lines = []
    for group in sorted(picked):
        members = sorted(f.stem for f in (CONF_DIR / group).glob("*.yaml"))
        listed = ", ".join(f"{m}*" if m == picked[group] else m for m in members)
        lines.append(f"  {group:<{width}}  {listed}")
    return "\n".join(lines)


def register_help_resolvers(prog: Callable[[str], str]) -> None:
    """The resolvers the help pages use; ``prog(module)``: the command's name (``blockqnn.cli.prog``)."""
    OmegaConf.register_new_resolver("blockqnn.help_presets", presets, replace=True)
    OmegaConf.register_new_resolver("blockqnn.help_groups", groups, replace=True)
    OmegaConf.register_new_resolver("blockqnn.prog", prog, replace=True)

"""Each setting's default is written once, in its group member's yaml: a constructor declared with
``@declared(group, schema, member=...)`` writes none, and a Python call that leaves a setting out builds exactly what
the command line builds (blockqnn/schema/defaults.py)."""

from __future__ import annotations

import inspect

import pytest
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from blockqnn.agents import GuidedEvolution, LocalSearch, QLearningAgent, RegularizedEvolution
from blockqnn.errors import ConfigError
from blockqnn.network import Template
from blockqnn.schema import CONF_DIR, declarations, member_defaults
from blockqnn.spaces import NSCSpace
from blockqnn.stopping import ASHA
from blockqnn.tracking import WandbTracker


def members_writing_defaults():
    """``(group, member, the target it builds)`` for each yaml of conf/ that its target names as its defaults."""
    for path in sorted(CONF_DIR.glob("*/*.yaml")):
        target = OmegaConf.load(path).get("_target_")
        built = get_object(target) if isinstance(target, str) and target.startswith("blockqnn.") else None
        call = built.__init__ if isinstance(built, type) else built
        if getattr(call, "__member__", None) == path.stem:
            yield path.parent.name, path.stem, built


def test_the_agents_template_tracker_and_stopping_take_their_defaults_from_their_yaml():
    found = {built for _, _, built in members_writing_defaults()}
    assert {QLearningAgent, RegularizedEvolution, LocalSearch, GuidedEvolution, Template, WandbTracker, ASHA} <= found


@pytest.mark.parametrize(("group", "member", "built"), list(members_writing_defaults()),
                         ids=lambda value: value if isinstance(value, str) else "")
def test_a_constructor_writes_no_default_of_a_setting_and_its_yaml_writes_them(group, member, built):
    """A default written again in Python could drift from the yaml: none is, and the yaml writes every setting
    but those that need the composed config around them (``${trainer.max_epochs}``)."""
    call = (built.__init__ if isinstance(built, type) else built).__wrapped__
    settings = declarations(built.__schema__)[0].keys()
    parameters = inspect.signature(call).parameters
    defaulted = [name for name in settings if parameters[name].default is not inspect.Parameter.empty]
    assert not defaulted, f"{built.__qualname__} writes defaults of {defaulted}: conf/{group}/{member}.yaml has them"
    raw = OmegaConf.load(CONF_DIR / group / f"{member}.yaml")
    unwritten = set(settings) - member_defaults(group, member).keys()
    assert all(OmegaConf.is_interpolation(raw, key) for key in unwritten), unwritten


def plain(built):
    """What an object was built with, as far as plain values show it (generators and spaces left out)."""
    return {key: value for key, value in vars(built).items()
            if isinstance(value, int | float | str | bool | list | tuple | type(None))}


@pytest.mark.parametrize("agent", ["qlearning", "evolution", "local", "guided_evolution"])
def test_an_agent_built_in_python_is_the_one_the_command_line_builds(compose, agent):
    space = NSCSpace()
    cfg = compose(f"agent={agent}")
    python = get_object(cfg.agent._target_)(space, seed=3)
    command_line = instantiate(cfg.agent, space=space, seed=3)
    assert plain(python) == plain(command_line) and plain(python)
    assert python.state_dict() == command_line.state_dict()


def test_the_reward_model_settings_left_out_in_python_are_the_command_lines(compose):
    """agent.model given in part from Python is completed as the command line completes it."""
    space = NSCSpace()
    command_line = instantiate(compose("agent.model.proposals=10").agent, space=space)
    python = QLearningAgent(space, model={"proposals": 10})
    assert vars(python.planner.settings) == vars(command_line.planner.settings)
    assert QLearningAgent(space).planner is None is instantiate(compose().agent, space=space).planner


def test_the_template_built_in_python_is_the_papers_cifar_template(compose):
    assert vars(Template()) == vars(instantiate(compose("template=cifar").template))
    assert vars(Template(F=8)) == {**vars(instantiate(compose("template=cifar").template)), "F": 8}


def test_a_default_from_the_yaml_is_checked_with_what_python_gives():
    with pytest.raises(ConfigError, match=r"^agent.tournament_size=30: expected at most population_size \(10\)$"):
        RegularizedEvolution(NSCSpace(), tournament_size=30)

"""Every numeric setting of the composed configs, tried at -1, 0 and a wrong type: each is refused in one line naming
the key, or accepted and usable by the object that reads it. And every key of conf/ is declared in a schema."""

import contextlib
import subprocess
import sys
import typing

import numpy as np
import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from blockqnn.config import CONF_DIR, compose
from blockqnn.errors import ConfigError
from blockqnn.schema import PRECISIONS, check_config, declarations, schema_of
from tests.blocks import RESIDUAL
from tests.helpers import REPO

TRIED = (-1, 0, "abc")


def bases(table):
    """The composed configs walked, and the sections walked in each: the defaults of both entry points, then the
    other members of each group."""
    return {
        "search": ("search", [], None),
        "search-others": ("search", ["dataset=synthetic", "space=nasbench201", f"space.table={table}",
                                     "reward=accuracy", "executor=ray", "trainer=smoke", "logger=none"],
                          ("dataset", "space", "reward", "executor", "trainer", "logger")),
        "train": ("train", [f"block={RESIDUAL!r}".replace("'", '"')], None),
        "train-imagenet": ("train", ["dataset=imagenet", "template=imagenet"], ("dataset", "template")),
        "train-imagefolder": ("train", ["dataset=imagefolder", "dataset.source.root=/nowhere"], ("dataset",)),
    }


def numeric_leaves(node, prefix=""):
    """Keys of numbers, booleans and lists of numbers (hydra.* and _target_-style keys aside)."""
    for key in node:
        path = f"{prefix}{key}"
        if str(key).startswith("_") or OmegaConf.is_missing(node, key):
            continue
        value = node[key]
        if isinstance(value, DictConfig):
            yield from numeric_leaves(value, f"{path}.")
        elif isinstance(value, int | float) or (
                isinstance(value, ListConfig) and len(value) and all(isinstance(v, int | float) for v in value)):
            yield path


@contextlib.contextmanager
def overridden(cfg, override):
    """``cfg`` with one command-line override applied as Hydra applies it (its parser, then a merge), restored after
    (cheaper than a copy of the config per value tried)."""
    parsed = OverridesParser.create().parse_override(override)
    parent_key, _, leaf = parsed.key_or_group.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    raw = OmegaConf.to_container(parent, resolve=False)[leaf]
    try:
        OmegaConf.update(cfg, parsed.key_or_group, parsed.value(), merge=True)
        yield cfg
    finally:
        parent[leaf] = raw


def usable(cfg, key):
    """Build what reads ``key`` (no training): raises if the value is one its reader refuses."""
    from blockqnn.codes import Block
    from blockqnn.data import datamodule
    from blockqnn.fit import Classifier, build_trainer
    from blockqnn.network import Template
    from blockqnn.tracking import Progress

    section = key.split(".")[0]
    if section == "trainer":
        build_trainer(cfg.trainer)
        Classifier.from_recipe(torch.nn.Linear(2, 2), 2, cfg.trainer, on_gpu=False).configure_optimizers()
    elif section == "dataset":
        data = datamodule(cfg.dataset, 8, 8, 0)
        if cfg.dataset.name in ("digits", "synthetic"):  # data at hand (no download, no tree)
            data.setup("fit")
            next(iter(data.train_dataloader()))
    elif section == "template":
        template = instantiate(cfg.template)
        assert isinstance(template, Template)
        template.build(Block.parse(RESIDUAL), 3, 10)
    elif section in ("agent", "seed", "space"):
        instantiate(cfg.agent, space=instantiate(cfg.space), seed=cfg.seed).sample() if "agent" in cfg else None
        np.random.default_rng(cfg.seed), torch.manual_seed(cfg.seed)
    elif section == "reward":
        instantiate(cfg.reward)(0.9, 1e6, 1.2)
    elif section in ("executor", "logger"):
        instantiate(cfg[section])
    elif section == "progress":
        Progress(**cfg.progress)
    elif section == "search":  # the asynchronous loop keeps capacity + prefetch candidates in flight
        assert isinstance(cfg.search.prefetch, int) and cfg.search.prefetch >= 0
    elif section == "checkpoint":
        from lightning.pytorch.callbacks import ModelCheckpoint

        ModelCheckpoint(every_n_epochs=cfg.checkpoint.every_n_epochs)
    else:
        assert section == "failed_reward", key
        float(cfg.failed_reward)


def test_every_numeric_setting_is_refused_by_name_or_usable(nb201_table):
    tried = accepted = 0
    for name, (config, overrides, sections) in bases(nb201_table).items():
        base = compose(config, overrides)
        for key in numeric_leaves(base):
            if sections is not None and key.split(".")[0] not in sections:
                continue
            for value in TRIED:
                tried += 1
                override = f"{key}={value}"
                try:
                    with overridden(base, override) as cfg:
                        check_config(cfg)
                        accepted += 1
                        try:
                            usable(cfg, key)
                        except Exception as e:  # noqa: BLE001
                            pytest.fail(f"{name}: {override} is accepted but its reader refuses it: {e!r}")
                except (ConfigError, OmegaConfBaseException) as e:  # OmegaConf's: a typed top-level key
                    message = str(e).strip()
                    assert "\n" not in message or isinstance(e, OmegaConfBaseException), (name, override, message)
                    assert key in message, (name, override, message)
        assert base == compose(config, overrides)  # every value tried was restored
    assert tried > 250 and 10 < accepted < tried / 3, (tried, accepted)


@pytest.mark.parametrize(
    ("config", "override"),
    [("search", "trainer.max_epochs=0"), ("search", "agent.alpha=abc"), ("search", "executor.workers=-1"),
     ("train", "trainer.optimizer.momentum=0"), ("train", "dataset.source.classes=0"), ("search", "agent.gamma=0")],
)
def test_composing_refuses_what_the_walk_refuses(config, override):
    """The walk applies overrides to a composed config; composing with them gives the same verdict."""
    with overridden(compose(config, []), override) as expected:
        try:
            check_config(expected)
        except ConfigError as e:
            with pytest.raises(ConfigError) as refused:
                compose(config, [override])
            assert str(refused.value) == str(e) and str(e).startswith(override.split("=")[0])
        else:
            assert compose(config, [override]) == expected


def calls():
    """A refused setting as a command line gives it, and the same setting given to its constructor from Python."""
    from blockqnn.agents import QLearningAgent, RegularizedEvolution
    from blockqnn.data import digits
    from blockqnn.executors import LocalExecutor
    from blockqnn.network import Template
    from blockqnn.reward import PaperReward
    from blockqnn.spaces import NSCSpace
    from blockqnn.tracking import Progress

    return [
        (["agent.alpha=2"], lambda: QLearningAgent(NSCSpace(), alpha=2)),
        (["agent.budget=100", "agent.schedule_scale=0.5"],
         lambda: QLearningAgent(NSCSpace(), budget=100, schedule_scale=0.5)),
        (["agent=evolution", "agent.population_size=4", "agent.tournament_size=5"],
         lambda: RegularizedEvolution(NSCSpace(), population_size=4, tournament_size=5)),
        (["space.kernels.conv=[3,7]"], lambda: NSCSpace(kernels={"conv": [3, 7]})),
        (["space.types=[1,2]"], lambda: NSCSpace(types=(1, 2))),
        (["template.stem=resnet"], lambda: Template("resnet")),
        (["executor.workers=-1"], lambda: LocalExecutor(workers=-1)),
        (["reward.flops_unit=0"], lambda: PaperReward(mu=0.01, rho=0.01, flops_unit=0)),
        (["progress.mode=fancy"], lambda: Progress(mode="fancy")),
        (["dataset=digits", "dataset.source.test_size=1797"], lambda: digits(test_size=1797)),
    ]


@pytest.mark.parametrize("case", range(len(calls())))
def test_a_constructor_refuses_what_composing_refuses_in_the_same_line(case):
    """One declaration: a value given from Python meets the check (and the line) a config gets."""
    overrides, call = calls()[case]
    with pytest.raises(ConfigError) as composed:
        compose("search", overrides)
    with pytest.raises(ConfigError) as called:
        call()
    assert str(called.value) == str(composed.value) and str(composed.value).startswith(overrides[-1].split("=")[0])


def run(module, *args, folder):
    return subprocess.Popen([sys.executable, "-m", f"blockqnn.{module}", *args, f"hydra.run.dir={folder}"],
                            cwd=folder.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


@pytest.mark.slow
def test_cli_refuses_out_of_range_values_in_one_line_and_leaves_no_folder(tmp_path):
    cases = [("search", "trainer.max_epochs=-1"), ("search", "seed=-5"), ("train", "trainer.max_epochs=-3"),
             ("train", "seed=-5")]
    procs = [(override, tmp_path / f"run{i}", run(module, override, folder=tmp_path / f"run{i}"))
             for i, (module, override) in enumerate(cases)]
    for override, folder, proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1 and err.startswith(f"error: {override}: expected an integer >= ") \
            and err.count("\n") == 1, err
        assert not folder.exists()


def test_precisions_are_lightnings():
    from lightning.fabric.connector import _PRECISION_INPUT_INT, _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    lightning = {*typing.get_args(_PRECISION_INPUT_STR), *typing.get_args(_PRECISION_INPUT_INT),
                 *typing.get_args(_PRECISION_INPUT_STR_ALIAS)}
    assert set(PRECISIONS) <= lightning


def members():
    """Every group member of conf/ (presets aside: experiment/ and hparams_search/, global packages that set other
    groups' keys and Hydra's) as (file, raw config)."""
    for path in sorted(CONF_DIR.glob("*/*.yaml")):
        if path.parent.name not in ("experiment", "hparams_search"):
            yield path, OmegaConf.load(path)


def undeclared(node, path, schema):
    """Keys of ``node`` that its schema (or a nested one) does not declare; targets without a schema."""
    if schema is None:
        target = node.get("_target_")
        if target is not None:
            yield f"{path}: {target} declares no settings (blockqnn.schema.declared)"
    hints = declarations(schema)[0] if schema else {}
    for key in node:
        if key == "defaults" or str(key).startswith("_"):
            continue
        if schema is not None and key not in hints:
            yield f"{path}.{key} is not declared in {schema.__name__}"
        value = node._get_node(key)
        if isinstance(value, DictConfig) and not value._is_none():
            yield from undeclared(value, f"{path}.{key}", schema_of(value, f"{path}.{key}", hints.get(key)))


def test_every_key_of_conf_is_declared():
    problems = []
    for path, node in members():
        group = path.parent.name
        problems += list(undeclared(node, f"{group}/{path.stem}", schema_of(node, group)))
    assert not problems, "\n".join(problems)
    assert len(list(members())) >= 20


def test_a_target_without_a_schema_is_not_checked():
    """A member this table does not know (another agent, a user's class) composes and runs unchecked."""
    cfg = OmegaConf.create({"agent": {"_target_": "my.Agent", "population": -1}, "trainer": {"max_epochs": 3}})
    check_config(cfg)
    with pytest.raises(ConfigError, match=r"^trainer.max_epochs=0: expected an integer >= 1$"):
        check_config(OmegaConf.merge(cfg, {"trainer": {"max_epochs": 0}}))


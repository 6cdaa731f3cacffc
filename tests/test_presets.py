"""The presets (``experiment=quickstart|paper_cifar100|nasbench201``, conf/experiment/ and conf/preset/):
what each promises, and one budget for every agent under each."""

from __future__ import annotations

import pytest
import torch

from blockqnn.agents.qlearning import epsilon_schedule


def test_presets_compose_to_what_they_promise(compose, nb201_table):
    from hydra.utils import instantiate

    def agent_of(cfg):
        return instantiate(cfg.agent, space=instantiate(cfg.space), seed=0)

    quick = compose("experiment=quickstart")
    assert (quick.dataset.name, quick.template.F, quick.executor.workers) == ("digits", 8, "auto")
    assert agent_of(quick).total_samples <= 200  # a few minutes on a laptop CPU
    paper = compose("experiment=paper_cifar100")
    assert (paper.dataset.name, paper.template.stages, paper.trainer.max_epochs) == ("cifar100", 3, 12)
    assert (agent_of(paper).num_iterations, agent_of(paper).total_samples) == (178, 11392)
    assert agent_of(paper).schedule == epsilon_schedule("paper") and agent_of(paper).alpha == 0.01
    assert agent_of(paper).model is None  # the paper's agent: no reward model
    table = compose("experiment=nasbench201", f"space.table={nb201_table}")
    space = instantiate(table.space)
    assert 0 < space.lookup(space.decode(agent_of(table).sample(1)[0])) < 1
    for preset in (quick, table):  # the small-budget settings measured on the real table
        agent = agent_of(preset)
        assert (agent.alpha, agent.schedule[0], agent.schedule[-1]) == (0.3, 1.0, pytest.approx(0.1))
        assert agent.schedule == sorted(agent.schedule, reverse=True) and len(set(agent.schedule)) > 10
    for preset in (table, compose("experiment=cifar10_small")):  # they plan with the reward model
        agent = agent_of(preset)
        settings = agent.planner.settings
        assert settings.proposals > 1 and settings.exploit and settings.planning > 0
    assert agent_of(quick).model is None  # it would train twice as much: over the quickstart's 90 s


@pytest.mark.parametrize("preset", ["quickstart", "nasbench201", "paper_cifar100"])
def test_every_agent_runs_under_every_preset_with_one_budget(compose, nb201_table, preset):
    from hydra.utils import instantiate

    budgets = set()
    for agent in ("qlearning", "random", "evolution"):
        cfg = compose(f"experiment={preset}", f"agent={agent}", f"space.table={nb201_table}" if preset == "nasbench201"
                      else "space=nsc")
        budgets.add(instantiate(cfg.agent, space=instantiate(cfg.space), seed=0).total_samples)
    assert len(budgets) == 1


def test_each_preset_stops_weak_candidates_as_measured_and_the_paper_never(compose):
    from hydra.utils import instantiate

    from blockqnn.stopping import ASHA, NoStopping

    quick = instantiate(compose("experiment=quickstart").stopping)
    assert isinstance(quick, ASHA) and quick.rungs == (2, 4)  # epoch 1 does not rank digits blocks
    assert isinstance(instantiate(compose("experiment=cifar10_small").stopping), ASHA)
    assert isinstance(instantiate(compose("experiment=paper_cifar100").stopping), NoStopping)
    assert isinstance(instantiate(compose("experiment=quickstart", "stopping=none").stopping), NoStopping)


def test_the_cifar10_small_preset_searches_the_official_archive_at_16px(compose, cifar_files, tmp_path):
    """`experiment=cifar10_small` as a user with a network runs it: torchvision's CIFAR-10 files under data_dir
    (generated here; the download is refused), cut to a class-balanced training set, shrunk to 16x16, the reward on
    images carved from training; two candidates trained in this process."""
    from blockqnn.search import search
    from blockqnn.store import Store

    root, written = cifar_files
    labels = torch.tensor([label for name, (_, batch) in written.items() if name != "test_batch" for label in batch])
    train_size = 10 * int(torch.bincount(labels, minlength=10).min())
    cfg = compose("experiment=cifar10_small", f"data_dir={root}", f"dataset.source.train_size={train_size}",
                  "dataset.val_size=5", "agent.batch_size=2", "agent.budget=2", "logger=none", "progress.mode=off",
                  "executor.workers=0")
    search(cfg, tmp_path / "run")
    with Store.open(tmp_path / "run", readonly=True) as store:
        stored, rows = store.config(), store.candidates()
    assert len(rows) == 2 and {r["status"] for r in rows} <= {"ok", "stopped"}
    assert (stored.dataset.name, stored.dataset.image_size, stored.dataset.source.train_size) == (
        "cifar10", 16, train_size)
    assert (stored.template.F, stored.trainer.max_epochs) == (8, 6)
    assert (stored.stopping._target_, stored.stopping.min_epoch, stored.stopping.eta) == (
        "blockqnn.stopping.ASHA", 1, 3)  # rungs at epochs 1 and 3 of 6
    assert all(len(r["curve"]) == r["epochs"] for r in rows)  # validation accuracy at every epoch trained


@pytest.mark.slow
def test_the_cifar10_small_preset_searches_an_image_folder_from_the_command_line(tmp_path):
    """The same preset on a CIFAR-10-shaped tree (10 classes of 32x32 RGB images, as experiments/make_image_folder.py
    writes one), chosen on the command line: shrunk to 16x16 and cut to the preset's class-balanced size."""
    from blockqnn.store import Store
    from tests.helpers import run_cli
    from tests.test_make_image_folder import make_tree

    tree, run = tmp_path / "cifar10-folder", tmp_path / "run"
    shape = ["dataset=synthetic", "dataset.num_classes=10", "dataset.image_size=32", "dataset.source.train_size=100",
             "dataset.source.test_size=30"]
    made = make_tree(str(tree), *shape)
    assert made.returncode == 0, made.stderr
    done = run_cli("experiment=cifar10_small", "dataset=imagefolder", f"dataset.source.root={tree}",
                   "dataset.source.train_size=40", "dataset.val_size=20", "agent.batch_size=2", "agent.budget=2",
                   "logger=none", "progress.mode=off", f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr[-2000:]
    with Store.open(run, readonly=True) as store:
        cfg, rows = store.config(), store.candidates()
    assert len(rows) == 2 and {r["status"] for r in rows} <= {"ok", "stopped"}
    assert (cfg.dataset.name, cfg.dataset.image_size, cfg.dataset.val_size, cfg.template.F) == (
        "imagefolder", 16, 20, 8)
    assert all(len(r["curve"]) == r["epochs"] for r in rows)

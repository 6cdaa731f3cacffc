"""The presets (``experiment=quickstart|paper_cifar100|nasbench201``, conf/experiment/ and conf/agent_preset/):
what each promises, and one budget for every agent under each."""

from __future__ import annotations

import pytest

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
    table = compose("experiment=nasbench201", f"space.table={nb201_table}")
    space = instantiate(table.space)
    assert 0 < space.lookup(space.decode(agent_of(table).sample(1)[0])) < 1
    for preset in (quick, table):  # the small-budget settings measured on the real table
        agent = agent_of(preset)
        assert (agent.alpha, agent.schedule[0], agent.schedule[-1]) == (0.3, 1.0, pytest.approx(0.1))
        assert agent.schedule == sorted(agent.schedule, reverse=True) and len(set(agent.schedule)) > 10


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


@pytest.mark.slow
def test_the_cifar10_small_preset_searches_a_cifar_shaped_image_folder(tmp_path):
    """What `experiment=cifar10_small` reads: a CIFAR-10-shaped tree (10 classes of 32x32 RGB images, as
    experiments/make_image_folder.py writes one), shrunk to 16x16, the reward on images carved from training."""
    from blockqnn.store import Store
    from tests.helpers import run_cli
    from tests.test_make_image_folder import make_tree

    tree, run = tmp_path / "cifar10-folder", tmp_path / "run"
    shape = ["dataset=synthetic", "dataset.num_classes=10", "dataset.image_size=32", "dataset.source.train_size=100",
             "dataset.source.test_size=30"]
    made = make_tree(str(tree), *shape)
    assert made.returncode == 0, made.stderr
    done = run_cli("experiment=cifar10_small", f"dataset.source.root={tree}", "dataset.val_size=20",
                   "agent.batch_size=2", "agent.budget=2", "logger=none", "progress.mode=off",
                   f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr[-2000:]
    with Store.open(run, readonly=True) as store:
        cfg, rows = store.config(), store.candidates()
    assert len(rows) == 2 and {r["status"] for r in rows} <= {"ok", "stopped"}
    assert (cfg.dataset.image_size, cfg.dataset.val_size, cfg.template.F) == (16, 20, 8)
    assert (cfg.stopping._target_, cfg.stopping.min_epoch, cfg.stopping.eta, cfg.trainer.max_epochs) == (
        "blockqnn.stopping.ASHA", 1, 3, 6)  # rungs at epochs 1 and 3 of 6
    assert all(len(r["curve"]) == r["epochs"] for r in rows)  # validation accuracy at every epoch trained

"""The Lightning module, the lean trainer, the recipes, and the GPU code paths (bf16, channels_last, DDP) on CPU."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelSummary
from lightning.pytorch.loggers import CSVLogger

from blockqnn.codes import Block
from blockqnn.data import datamodule
from blockqnn.fit import Classifier, NonFiniteLossError, accuracy_on_test_set, build_trainer, fit
from tests.blocks import RESIDUAL


def tiny_run(compose, *overrides):
    """A tiny residual network, the synthetic data and a recipe (smoke unless overridden)."""
    cfg = compose("dataset=synthetic", "template=tiny", "trainer=smoke", *overrides)
    data = datamodule(cfg.dataset, cfg.trainer.batch_size, cfg.trainer.eval_batch_size, seed=0)
    data.load()
    torch.manual_seed(0)
    net = instantiate(cfg.template).build(Block.parse(RESIDUAL), data.channels, data.num_classes)
    return Classifier.from_recipe(net, data.num_classes, cfg.trainer, on_gpu=False), data, cfg.trainer


def test_trainer_is_lean(compose):
    trainer = build_trainer(compose("trainer=early_stop").trainer)
    assert trainer.progress_bar_callback is None and trainer.checkpoint_callback is None
    assert trainer.logger is None and not any(isinstance(c, ModelSummary) for c in trainer.callbacks)
    assert trainer.num_sanity_val_steps == 0 and trainer.max_epochs == 12
    assert trainer.precision == "32-true"  # no GPU here: full precision on CPU


def test_trainer_takes_logger_callbacks_and_checkpointing(compose, tmp_path):
    marker = Callback()
    trainer = build_trainer(compose("trainer=final").trainer, logger=CSVLogger(tmp_path), callbacks=[marker],
                            enable_checkpointing=True, default_root_dir=str(tmp_path))
    assert isinstance(trainer.logger, CSVLogger) and marker in trainer.callbacks
    assert trainer.checkpoint_callback is not None and trainer.max_epochs == 300


def test_fit_learns_and_records_every_epoch(compose):
    module, data, recipe = tiny_run(compose, "trainer.max_epochs=2")
    trainer = fit(module, data, recipe)
    assert [h["epoch"] for h in module.history] == [1, 2]
    assert all(h["val_acc"] > 0.5 and h["train_loss"] > 0 for h in module.history)  # 4 classes: chance 0.25
    assert module.history[1]["train_loss"] < module.history[0]["train_loss"]
    assert accuracy_on_test_set(trainer, module, data) > 0.5


def test_gpu_code_paths_run_on_cpu(compose):
    """bf16 autocast and channels_last, the GPU defaults, forced on CPU."""
    module, data, recipe = tiny_run(compose, "trainer.precision=bf16-mixed", "trainer.channels_last=true")
    assert module.channels_last
    trainer = fit(module, data, recipe)
    assert trainer.precision == "bf16-mixed"
    conv = next(m for m in module.net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert module.history[-1]["val_acc"] > 0.5


def test_step_schedule_follows_the_recipe(compose):
    module, data, recipe = tiny_run(compose, "trainer=early_stop", "trainer.max_epochs=3",
                                 "trainer.scheduler.step_size=1", "trainer.scheduler.gamma=0.5",
                                 "trainer.limit_train_batches=2", "trainer.batch_size=16")
    trainer = fit(module, data, recipe)
    assert isinstance(trainer.optimizers[0], torch.optim.Adam)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5**3)


def test_last_epoch_is_validated_off_the_validation_schedule(compose):
    module, data, recipe = tiny_run(compose, "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2",
                                 "trainer.limit_train_batches=3")
    fit(module, data, recipe)
    assert [h["val_acc"] is None for h in module.history] == [True, False, False]


def test_recipes_match_the_paper_notes(compose):
    early, final, smoke = (compose(f"trainer={name}").trainer for name in ("early_stop", "final", "smoke"))
    params = [torch.nn.Parameter(torch.zeros(1))]
    adam = instantiate(early.optimizer)(params)
    assert early.max_epochs == 12 and early.batch_size == 256 and adam.defaults["lr"] == 1e-3
    step = instantiate(early.scheduler)(adam)
    assert (step.step_size, step.gamma) == (5, 0.2)
    sgd = instantiate(final.optimizer)(params)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"] and sgd.defaults["weight_decay"] == 5e-4
    assert instantiate(final.scheduler)(sgd).T_max == final.max_epochs == 300
    assert smoke.max_epochs == 1 and smoke.scheduler is None


class Diverging(torch.nn.Module):
    """A network whose output turns NaN, counting its forward calls."""

    def __init__(self, num_classes):
        super().__init__()
        self.linear = torch.nn.Linear(1, num_classes)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.linear(x.mean((1, 2, 3))[:, None]) * float("nan")


def test_nonfinite_loss_stops_training_within_the_check_interval(compose):
    _, data, recipe = tiny_run(compose, "trainer.nan_check_every=3")
    net = Diverging(data.num_classes)
    module = Classifier.from_recipe(net, data.num_classes, recipe, on_gpu=False)
    with pytest.raises(NonFiniteLossError, match="non-finite training loss .*epoch 1 by step 3"):
        fit(module, data, recipe)
    assert net.calls == 3 and module.history == []


DDP_SCRIPT = """
import json, sys, torch
from hydra.utils import instantiate
from blockqnn.config import compose
from blockqnn.data import datamodule
from blockqnn.codes import Block
from blockqnn.fit import Classifier, fit

cfg = compose("search", ["dataset=synthetic", "template=tiny", "trainer=smoke", "trainer.accelerator=cpu",
                         "trainer.devices=2", "trainer.max_epochs=2"])
data = datamodule(cfg.dataset, cfg.trainer.batch_size, cfg.trainer.eval_batch_size)
data.load()
torch.manual_seed(0)
net = instantiate(cfg.template).build(Block.parse("(1,1,3,0,0) (2,5,0,0,1) (3,7,0,0,0)"), 3, data.num_classes)
module = Classifier.from_recipe(net, data.num_classes, cfg.trainer, on_gpu=False)
trainer = fit(module, data, cfg.trainer)
row = dict(rank=trainer.global_rank, world=trainer.world_size, strategy=type(trainer.strategy).__name__,
           batches=trainer.num_training_batches, history=module.history,
           weight=net[-1].weight.sum().item(), group_released=not torch.distributed.is_initialized())
print("RESULT " + json.dumps(row), flush=True)
"""


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path):
    """devices=2 gives Lightning's DDP (one process per device, gloo on CPU); each rank trains on half of every
    epoch, and the ranks end with the same weights and the same validation accuracy, and release the gloo group
    (left to interpreter exit, it sometimes aborted a finished run)."""
    script = tmp_path / "ddp_fit.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent), "PATH": "/usr/bin:/bin",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    rows = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and len(rows) == 2, proc.stderr[-3000:]
    assert {r["rank"] for r in rows} == {0, 1} and all(r["world"] == 2 for r in rows)
    assert all(r["strategy"] == "DDPStrategy" and r["group_released"] for r in rows)
    assert all(r["batches"] == 1000 // 32 // 2 for r in rows)  # 1,000 training images, batch 32, half each
    assert rows[0]["weight"] == pytest.approx(rows[1]["weight"])
    assert rows[0]["history"][-1]["val_acc"] == rows[1]["history"][-1]["val_acc"] > 0.5

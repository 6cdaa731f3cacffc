"""The Lightning module, the lean trainer, the recipes, and the GPU code paths (bf16, channels_last, DDP) on CPU."""

import csv
import json
import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelSummary
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf, open_dict

from blockqnn.codes import Block
from blockqnn.data import datamodule
from blockqnn.errors import ConfigError
from blockqnn.fit import Classifier, EpochRecord, NonFiniteLossError, accuracy_on_test_set, build_trainer, fit
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


def test_trainer_extra_goes_over_the_lean_defaults(compose):
    recipe = compose("trainer=early_stop", "+trainer.extra.enable_progress_bar=true",
                     "+trainer.extra.num_sanity_val_steps=2", "+trainer.extra.log_every_n_steps=7").trainer
    trainer = build_trainer(recipe)
    assert trainer.progress_bar_callback is not None and trainer.num_sanity_val_steps == 2
    assert trainer.log_every_n_steps == 7
    assert build_trainer(recipe, progress_bar=False).progress_bar_callback is not None  # the user's value wins
    quiet = compose("trainer=early_stop", "+trainer.extra.enable_progress_bar=false").trainer
    assert build_trainer(quiet, progress_bar=True).progress_bar_callback is None


@pytest.mark.parametrize(("extra", "message"), [
    ("max_epochs=5", "trainer.extra.max_epochs=5: set by trainer.max_epochs, not trainer.extra"),
    ("benchmark=false", "trainer.extra.benchmark=False: set by trainer.cudnn_benchmark, not trainer.extra"),
    ("logger=true", "trainer.extra.logger=True: set by the logger group (logger=wandb or logger=none)"),
    ("callbacks=[]", "trainer.extra.callbacks=[]: set by blockqnn.train"),
])
def test_trainer_extra_cannot_give_what_other_settings_give(compose, extra, message):
    """One clear line at composition, and the same from build_trainer for a config that skipped the checks."""
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        compose(f"+trainer.extra.{extra}")
    key, _, value = extra.partition("=")
    recipe = compose().trainer
    with open_dict(recipe):
        recipe.extra[key] = OmegaConf.create(f"v: {value}").v
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        build_trainer(recipe)


def read_rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_epoch_record_writes_every_epoch_and_appends(compose, tmp_path, caplog):
    """One row per epoch (the epoch's learning rate, validation accuracy where it was validated, training loss)
    and one log line each; a second training into the same file (a resume) appends under the same header."""
    module, data, recipe = tiny_run(compose, "trainer=early_stop", "trainer.max_epochs=3", "trainer.batch_size=32",
                                    "trainer.scheduler.step_size=1", "trainer.scheduler.gamma=0.5",
                                    "trainer.limit_train_batches=2", "trainer.check_val_every_n_epoch=2")
    path = tmp_path / "metrics.csv"
    with caplog.at_level(logging.INFO, logger="blockqnn.fit"):
        fit(module, data, recipe, logger=EpochRecord(path, 3, log_lines=True),
            callbacks=[LearningRateMonitor(logging_interval="epoch")])
    rows = read_rows(path)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-3, 5e-4, 2.5e-4])
    assert [float(r["train_loss"]) for r in rows] == pytest.approx([h["train_loss"] for h in module.history])
    assert [r["val_acc"] for r in rows][:2] == ["", str(module.history[1]["val_acc"])]  # epoch 1 not validated
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert lines[0].startswith("epoch 1/3: train_loss ") and "val_acc" not in lines[0] and "lr 0.001" in lines[0]
    assert len(lines) == 3 and "val_acc" in lines[1]

    module, data, recipe = tiny_run(compose, "trainer.max_epochs=1")
    fit(module, data, recipe, logger=EpochRecord(path, 1))
    assert [r["epoch"] for r in read_rows(path)] == ["1", "2", "3", "1"]
    assert path.read_text().count("epoch,") == 1


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
    # 4 classes (chance 0.25): two short epochs on half the data each end near 0.5
    assert rows[0]["history"][-1]["val_acc"] == rows[1]["history"][-1]["val_acc"] > 0.4

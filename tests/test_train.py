import csv
import io
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import blockqnn
from blockqnn import export
from blockqnn.codes import Block, NSCError
from blockqnn.config import compose
from blockqnn.errors import UserError
from blockqnn.resume import ADOPTED, check_same_network, check_train_folder, command_line_keys, merge_stored
from blockqnn.store import Store, StoreError
from blockqnn.train import plan_run, progress_mode, resolve_block, train
from tests.blocks import RESIDUAL
from tests.helpers import folder_digest, make_run, read_wandb_file

SMOKE = ["dataset=synthetic", "template=tiny", "trainer=smoke", "trainer.limit_train_batches=4", "logger=none",
         "onnx=null", "program=null"]  # the exports: tests/test_export.py and the command-line tests


def config(tmp_path, *overrides):
    return compose("train", [*SMOKE, f"data_dir={tmp_path / 'data'}", *overrides])


def test_train_checkpoints_tests_exports_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    folder = tmp_path / "run"
    cfg = config(tmp_path, f"block={RESIDUAL!r}".replace("'", '"'), "logger=wandb")
    result = train(cfg, folder)
    last = folder / "checkpoints" / "last.ckpt"
    assert last.is_file() and (folder / "config.yaml").is_file()
    assert json.loads((folder / "result.json").read_text()) == result
    assert 0.0 <= result["test_acc"] <= 1.0 and result["epochs"] == 1 and result["resumed_from"] is None
    run_id = (folder / "wandb_run_id").read_text()
    assert list((folder / "wandb").glob(f"offline-run-*{run_id}"))
    assert (folder / "checkpoints" / "best.ckpt").is_file() and result["best_checkpoint"].endswith("best.ckpt")
    assert result["best_val_acc"] == pytest.approx(result["val_acc"])  # one epoch: the best is the last
    assert [row["epoch"] for row in metrics(folder)] == ["1"] and float(metrics(folder)[0]["lr"]) == 3e-3
    [artifact] = wandb_artifacts(folder)
    assert artifact.name == f"model-{run_id}" and artifact.type == "model"
    assert {c.path for c in artifact.manifest.contents} == {"model.pt"}
    assert json.loads(artifact.metadata)["test_acc"] == result["test_acc"]

    model = blockqnn.load(folder / "model.pt")
    assert model.blockqnn["nsc"] == RESIDUAL and model.blockqnn["dataset"]["num_classes"] == 4
    assert len(model.blockqnn["dataset"]["mean"]) == 3  # measured normalisation recorded

    # Resuming must start from the checkpoint, not from scratch: mark the checkpoint's weights and see them in
    # the export of a resumed run that has no epochs left to train.
    ckpt = torch.load(last, weights_only=False)
    bias = next(k for k in ckpt["state_dict"] if k.endswith("bias") and ckpt["state_dict"][k].ndim == 1)
    ckpt["state_dict"][bias] += 7.0
    torch.save(ckpt, last)
    resumed = train(config(tmp_path, f"resume={folder}", "logger=wandb"), folder)  # block taken from the folder
    assert resumed["resumed_from"] == str(last) and resumed["epochs"] == 1
    key = bias.removeprefix("net.")
    assert torch.equal(blockqnn.load(folder / "model.pt").net.state_dict()[key], ckpt["state_dict"][bias])
    assert (folder / "wandb_run_id").read_text() == run_id

    more = train(config(tmp_path, f"resume={folder}", "trainer.max_epochs=2"), folder)
    assert more["epochs"] == 2
    assert [row["epoch"] for row in metrics(folder)] == ["1", "2"]  # the resume appended its epoch
    assert OmegaConf.load(folder / "config.yaml").trainer.max_epochs == 2  # what the next resume continues with

    before = folder_digest(folder)
    with pytest.raises(UserError, match=r"has trained 2 epochs, more than trainer.max_epochs=1: give trainer.max_epo"):
        train(config(tmp_path, f"resume={folder}"), folder)
    assert folder_digest(folder) == before


def metrics(folder):
    with open(folder / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def wandb_artifacts(folder):
    """The artifacts the offline W&B runs under ``folder`` logged, as wandb's records."""
    return [record.artifact for path in sorted((folder / "wandb").glob("offline-run-*/*.wandb"))
            for record in read_wandb_file(path) if record.WhichOneof("record_type") == "artifact"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_lightnings_bar_on_a_terminal_and_a_line_per_epoch_elsewhere(tmp_path, monkeypatch, caplog):
    """Search candidates stay quiet (tests/test_fit.py); a full training shows its epochs either way."""
    block = "block=[[1,1,1,0,0],[2,7,0,0,0]]"
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    with caplog.at_level(logging.INFO, logger="blockqnn.fit"):
        train(config(tmp_path, block, "trainer.max_epochs=2"), tmp_path / "bar")
    monkeypatch.undo()
    assert "Epoch 1: 100%" in terminal.getvalue() and "v_num" not in terminal.getvalue(), terminal.getvalue()[-500:]
    assert not [r for r in caplog.records if r.getMessage().startswith("epoch ")]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="blockqnn.fit"):
        train(config(tmp_path, block, "trainer.max_epochs=2"), tmp_path / "log")  # stdout is no terminal here
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"] and "val_acc" in lines[1]
    assert [row["epoch"] for row in metrics(tmp_path / "log")] == ["1", "2"]  # and the file, either way
    assert progress_mode("off") == "off" and progress_mode("bar") == "bar"


def test_trainer_extra_reaches_the_training(tmp_path, monkeypatch):
    """trainer.extra goes over the lean defaults in a full training too: no bar, even on a terminal."""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    train(config(tmp_path, "block=[[1,1,1,0,0],[2,7,0,0,0]]", "+trainer.extra.enable_progress_bar=false"),
          tmp_path / "run")
    monkeypatch.undo()
    assert "Epoch" not in terminal.getvalue() and (tmp_path / "run" / "metrics.csv").is_file()


def test_resume_refuses_another_network(tmp_path):
    folder = tmp_path / "run"
    train(config(tmp_path, "block=[[1,1,1,0,0],[2,7,0,0,0]]"), folder)
    with pytest.raises(UserError, match="another template"):
        train(config(tmp_path, "block=[[1,1,1,0,0],[2,7,0,0,0]]", "template.F=4", f"resume={folder}"), folder)


def test_block_from_a_search_rank(tmp_path):
    run = make_run(tmp_path / "search")
    with Store.open(run, readonly=True) as store:
        best = store.best(3)
    for rank in (1, 3):
        block, source = resolve_block(f"{run}:{rank}")
        assert str(block) == best[rank - 1]["arch"]
        assert source["rank"] == rank and source["search_reward"] == best[rank - 1]["reward"]
    with pytest.raises(UserError, match="rank 999 is out of range"):
        resolve_block(f"{run}:999")
    with pytest.raises(UserError, match="ranks start at 1"):
        resolve_block(f"{run}:0")


def test_block_in_hydra_list_syntax():
    rows = [[1, 4, 0, 0, 0], [2, 1, 3, 1, 0], [3, 1, 3, 2, 0], [4, 5, 0, 1, 3], [5, 7, 0, 0, 0]]
    cfg = OmegaConf.create({"block": rows})
    assert resolve_block(cfg.block)[0] == Block.parse(RESIDUAL)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([[1, 1, 3, 0], [2, 7, 0, 0, 0]], "layer 1: expected 5 integers"),
        ([1, 2, 3], "layer 1: expected 5 integers"),
        ([[1, 1, 3, [0], 0], [2, 7, 0, 0, 0]], r"layer 1: fields must be integers, got \[0\]"),
        ([[1, 1.0, 3, 0, 0], [2, 7, 0, 0, 0]], "layer 1: fields must be integers, got 1.0"),
    ],
)
def test_bad_block_in_hydra_list_syntax_names_the_layer(rows, message):
    with pytest.raises(NSCError, match=message):
        resolve_block(OmegaConf.create({"block": rows}).block)


def test_resume_takes_what_the_command_line_leaves_out_from_the_folder(tmp_path):
    saved = OmegaConf.create(OmegaConf.to_container(config(tmp_path, "block=[[1,1,1,0,0],[2,7,0,0,0]]"), resolve=True))
    overrides = ["resume=x", "trainer.max_epochs=2"]
    assert command_line_keys([*overrides, "+a.b@c=1", "~seed"]) == {"resume", "trainer.max_epochs", "a.b", "seed"}
    cfg = merge_stored(saved, compose("train", overrides), ADOPTED, command_line_keys(overrides))
    assert cfg.block == saved.block and cfg.template == saved.template and cfg.dataset == saved.dataset
    assert cfg.logger == saved.logger and cfg.trainer.batch_size == saved.trainer.batch_size == 32
    assert cfg.trainer.max_epochs == 2 and cfg.trainer.limit_train_batches == 4  # one leaf changed, the rest kept

    named = compose("train", ["template=cifar", "trainer=final"])
    cfg = merge_stored(saved, named, ADOPTED, command_line_keys(["template=cifar", "trainer=final"]))
    assert cfg.template == named.template and cfg.trainer == named.trainer and cfg.dataset == saved.dataset
    everything = merge_stored(saved, named, ADOPTED, None)  # no command line (an API call): only the block is taken
    assert everything.template == named.template and everything.dataset == named.dataset
    assert everything.block == saved.block


def test_a_resumed_training_may_find_its_data_elsewhere_but_not_other_data(tmp_path):
    tree = ["dataset=imagefolder", "block=[[1,1,1,0,0],[2,7,0,0,0]]"]
    saved = config(tmp_path, *tree, "dataset.source.root=/data/old")
    check_same_network(saved, config(tmp_path, *tree, "dataset.source.root=/mnt/new"), tmp_path)
    with pytest.raises(UserError, match=r"another dataset \(dataset.val_size"):
        check_same_network(saved, config(tmp_path, *tree, "dataset.source.root=/mnt/new", "dataset.val_size=7"),
                           tmp_path)


def image_tree(root, classes=2, train=6, val=3, size=40):
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"n0{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8) // (c + 1)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_imagenet_template_on_a_tiny_tree_in_bf16(tmp_path):
    tree = image_tree(tmp_path / "imagenet")
    cfg = compose("train", [
        "dataset=imagenet", "template=imagenet", f"dataset.root={tree}", "dataset.image_size=32",
        "dataset.num_classes=2", "dataset.val_size=2", "dataset.num_workers=0", "template.F=4",
        "template.N=1", "trainer=smoke", "trainer.batch_size=4", "trainer.precision=bf16-mixed",
        "logger=none", f"block={RESIDUAL!r}".replace("'", '"'),
    ])
    result = train(cfg, tmp_path / "run")
    assert 0.0 <= result["test_acc"] <= 1.0
    model = blockqnn.load(tmp_path / "run" / "model.pt")
    assert model.blockqnn["template"]["stem"] == "imagenet" and model.blockqnn["dataset"]["image_size"] == 32
    x = export.example_input(model.blockqnn, batch=2)
    assert model(x).shape == (2, 2)
    torch.export.export(model, (x,))


def cli(*args, cwd=None, smoke=SMOKE):
    return subprocess.run([sys.executable, "-m", "blockqnn.train", *smoke, *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def one_error_line(proc, message):
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: {message}") and proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("case", ["bad_nsc", "rank", "missing_data", "short_row", "flat_list", "nested_field",
                                  "unquoted"])
def test_cli_bad_input_is_one_line(tmp_path, case):
    args = {
        "bad_nsc": ['block="[(1,9,0,0,0),(2,7,0,0,0)]"'],
        "short_row": ["block=[[1,1,3,0],[2,7,0,0,0]]"],
        "flat_list": ["block=[1,2,3]"],
        "nested_field": ["block=[[1,1,3,[0],0],[2,7,0,0,0]]"],
        "rank": [f"block={make_run(tmp_path / 'search')}:50"],
        "missing_data": ['block="[(1,4,0,0,0),(2,7,0,0,0)]"', "dataset=imagefolder",
                         f"dataset.source.root={tmp_path / 'no-images'}"],
        "unquoted": ["block=[(1,4,0,0,0),(2,7,0,0,0)]"],
    }
    proc = cli(*args[case], f"hydra.run.dir={tmp_path / 'out'}")
    expected = {"short_row": "layer 1: ", "flat_list": "layer 1: ", "nested_field": "layer 1: ",
                "unquoted": "block=[(1,4,0,0,0),(2,7,0,0,0)]: an NSC code needs quotes on the command line"}
    one_error_line(proc, expected.get(case, ""))
    assert not (tmp_path / "out").exists()  # no folder holding only Hydra's files to mistake for a train run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A train folder made by the command line (non-default dataset, template, trainer and logger)."""
    folder = tmp_path_factory.mktemp("trained") / "run"
    proc = cli("block=[[1,1,1,0,0],[2,7,0,0,0]]", f"hydra.run.dir={folder}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return folder


def copy_of(folder, tmp_path):
    return Path(shutil.copytree(folder, tmp_path / "run"))




def hydra_record(folder):
    return {path.name: path.read_bytes() for path in (folder / ".hydra").iterdir() if path.is_file()}


@pytest.mark.slow
def test_cli_resume_alone_continues_the_folder_and_keeps_its_hydra_record(trained, tmp_path):
    folder = copy_of(trained, tmp_path)
    original, config_yaml = hydra_record(folder), (folder / "config.yaml").read_bytes()
    proc = cli(f"resume={folder}", smoke=())
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((folder / "result.json").read_text())
    assert result["resumed_from"] == str(folder / "checkpoints" / "last.ckpt") and result["epochs"] == 1
    assert not (folder / "wandb").exists()  # logger=none came from the folder too
    assert hydra_record(folder) == original and "config.yaml" in original
    assert (folder / "config.yaml").read_bytes() == config_yaml  # nothing new to record
    (resume,) = (folder / ".hydra").glob("resume-*")
    assert f"resume={folder}" in (resume / "overrides.yaml").read_text()


def corrupt_config_bytes(folder):
    (folder / "config.yaml").write_bytes(b"\xff\xfe\x00garbage")


def corrupt_config_yaml(folder):
    (folder / "config.yaml").write_text("block: [\n  : :")


def corrupt_checkpoint(folder):
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"\x00garbage" * 100)


def truncate_checkpoint(folder):
    last = folder / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:-100])


CORRUPTIONS = {
    "config.yaml": [corrupt_config_bytes, corrupt_config_yaml],
    "checkpoints/last.ckpt": [corrupt_checkpoint, truncate_checkpoint],
}


@pytest.mark.parametrize(("name", "corrupt"), [(n, c) for n, cs in CORRUPTIONS.items() for c in cs])
def test_a_corrupt_train_folder_is_refused(tmp_path, name, corrupt):
    folder = tmp_path / "run"
    (folder / "checkpoints").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"block": "[(1,1,1,0,0),(2,7,0,0,0)]"}), folder / "config.yaml")
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 0}, folder / "checkpoints" / "last.ckpt")
    assert check_train_folder(folder).block == "[(1,1,1,0,0),(2,7,0,0,0)]"
    corrupt(folder)
    with pytest.raises(UserError, match=f"{folder / name} is corrupt"):
        check_train_folder(folder)
    with pytest.raises(UserError, match=f"{folder / name} is corrupt"):
        train(config(tmp_path, f"resume={folder}"), folder)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("corrupt", "launch"),
    [(corrupt_config_bytes, "resume"), (corrupt_config_yaml, "resume"), (corrupt_checkpoint, "resume"),
     (corrupt_checkpoint, "hydra.run.dir")],
)
def test_cli_corrupt_train_folder_is_one_line_and_left_untouched(trained, tmp_path, corrupt, launch):
    folder = copy_of(trained, tmp_path)
    corrupt(folder)
    before = folder_digest(folder)
    proc = cli(f"{launch}={folder}", smoke=())
    name = "config.yaml" if "config" in corrupt.__name__ else "checkpoints/last.ckpt"
    one_error_line(proc, f"{folder / name} is corrupt")
    assert folder_digest(folder) == before


def test_missing_block_or_run_folder_is_a_clear_error(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a search run"):
        resolve_block(f"{tmp_path / 'plain'}:1")
    with pytest.raises(UserError, match="no block given"):
        train(config(tmp_path), tmp_path / "out")
    with pytest.raises(UserError, match="not a train folder"):
        check_train_folder(str(tmp_path / "plain"))  # what resume= runs first


@pytest.mark.slow
def test_cli_trains_with_ddp_on_two_cpu_processes(tmp_path):
    out = tmp_path / "out"
    proc = cli("block=[[1,1,3,0,0],[2,5,0,0,1],[3,7,0,0,0]]", "trainer.accelerator=cpu", "trainer.devices=2",
               "trainer.strategy=ddp", f"hydra.run.dir={out}", f"data_dir={tmp_path}", "logger=wandb")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]  # no rank failed
    assert len((out / "wandb_run_id").read_text().strip()) > 0  # written by rank 0 (tracked offline)
    assert "test accuracy" in proc.stdout
    result = json.loads((out / "result.json").read_text())
    assert 0.0 <= result["test_acc"] <= 1.0
    model = blockqnn.load(out / "model.pt")
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 4)


def searched_run(folder):
    """A search history as a search on the synthetic data with a narrow tiny template leaves it."""
    cfg = compose("search", ["dataset=synthetic", "dataset.num_classes=3", "template=tiny", "template.F=4",
                             "logger=none"])
    with Store.create(folder, OmegaConf.to_container(cfg, resolve=True)) as store:
        store.record(dict(iteration=0, position=0, arch=str(Block.parse(RESIDUAL)), hash="h", status="ok",
                          reward=0.9, accuracy=0.9, cached=0))
    return folder


def test_a_block_from_a_search_trains_on_its_dataset_and_template_unless_named(tmp_path):
    run = searched_run(tmp_path / "search")
    for overrides, dataset, template in [
        ([], ("synthetic", 3), ("conv", 2, 1, 4)),
        (["template.N=2"], ("synthetic", 3), ("conv", 2, 2, 4)),  # the searched template, scaled
        (["template=cifar", "dataset=digits"], ("digits", 10), ("conv", 3, 2, 32)),
    ]:
        args = [f"block={run}:1", *overrides]
        cfg = plan_run(compose("train", args), tmp_path / "out", command_line_keys(args))[0]
        assert (cfg.dataset.name, cfg.dataset.num_classes) == dataset
        assert (cfg.template.stem, cfg.template.stages, cfg.template.N, cfg.template.F) == template
    api = plan_run(compose("train", [f"block={run}:1"]), tmp_path / "out", None)[0]  # no command line: as given
    assert api.dataset.name == "cifar10"


@pytest.mark.slow
def test_cli_block_from_a_search_says_what_it_took_from_it_and_logs_to_train_log(tmp_path):
    run = searched_run(tmp_path / "search")
    out = tmp_path / "out"
    proc = cli(f"block={run}:1", f"hydra.run.dir={out}", smoke=["trainer=smoke", "trainer.limit_train_batches=2",
                                                               "logger=none"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (f"on dataset synthetic, template conv with 2 stages, N=1, F=4, for 1 epoch; block ranked 1 in {run}; "
            "dataset and template as searched there (name dataset= or template= to choose others)") in proc.stdout
    saved = OmegaConf.load(out / "config.yaml")
    assert saved.dataset.name == "synthetic" and saved.template.F == 4
    log = (out / "train.log").read_text()
    assert "dataset and template as searched there" in log and "test accuracy" in log


def test_a_training_names_the_search_artifacts_it_took_its_block_from(tmp_path):
    """Lineage: offline, the training run's config names the search's history and top-blocks artifacts (W&B takes
    artifacts as inputs only online; there ``use_artifact`` links them, as the stand-in run records)."""
    import wandb

    from blockqnn.tracking import record_lineage

    run = searched_run(tmp_path / "search")
    with Store.open(run) as store:
        store.set("wandb_run_id", "search123")
    args = [f"block={run}:1", "trainer=smoke", "trainer.limit_train_batches=2", "logger=wandb", "onnx=null",
            "program=null"]
    train(compose("train", args), tmp_path / "out", command_line_keys(args))
    wandb.teardown()  # W&B's service writes the offline log behind the run: stopping it flushes the file
    [log] = (tmp_path / "out" / "wandb").glob("offline-run-*/*.wandb")
    config = {item.key: json.loads(item.value_json) for record in read_wandb_file(log)
              if record.WhichOneof("record_type") == "config" for item in record.config.update}
    assert config["lineage"] == {"search_run": str(run.resolve()), "search_wandb_run": "search123",
                                 "history": "history-search123:latest", "top_blocks": "top-blocks-search123:latest"}

    class OnlineRun:
        offline = disabled = False

        def __init__(self):
            self.config, self.used = {}, []

        def use_artifact(self, name):
            self.used.append(name)

    online = OnlineRun()
    record_lineage(online, run)
    assert online.used == ["history-search123:latest", "top-blocks-search123:latest"]


@pytest.mark.slow
def test_an_optuna_sweep_over_trainings_receives_each_test_accuracy(tmp_path):
    """python -m blockqnn.train returns the test accuracy, so hydra/sweeper=optuna can tune a training."""
    import yaml

    sweep = tmp_path / "sweep"
    proc = cli('block="[(1,1,3,0,0),(2,7,0,0,0)]"', "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
               "hydra.sweeper.direction=maximize", "trainer.optimizer.lr=interval(0.01,0.1)",
               f"hydra.sweep.dir={sweep}", f"data_dir={tmp_path / 'data'}", cwd=tmp_path, smoke=["-m", *SMOKE])
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    accuracies = [json.loads((sweep / str(n) / "result.json").read_text())["test_acc"] for n in range(2)]
    assert found["best_value"] == pytest.approx(max(accuracies))

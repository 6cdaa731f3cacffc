import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import blockqnn
from blockqnn import export
from blockqnn.cli import UserError
from blockqnn.config import compose
from blockqnn.nsc import Block
from blockqnn.store import Store, StoreError
from blockqnn.train import resolve_block, train, train_dir_or_resume
from tests.blocks import RESIDUAL
from tests.test_report import make_run

SMOKE = ["dataset=synthetic", "template=tiny", "trainer=smoke", "trainer.limit_train_batches=4", "logger=none"]


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
    assert torch.equal(blockqnn.load(folder / "model.pt").state_dict()[key], ckpt["state_dict"][bias])
    assert (folder / "wandb_run_id").read_text() == run_id

    more = train(config(tmp_path, f"resume={folder}", "trainer.max_epochs=2"), folder)
    assert more["epochs"] == 2


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


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "blockqnn.train", *SMOKE, *args], capture_output=True, text=True,
                          cwd=cwd)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["bad_nsc", "rank", "missing_data"])
def test_cli_bad_input_is_one_line(tmp_path, case):
    args = {
        "bad_nsc": ['block="[(1,9,0,0,0),(2,7,0,0,0)]"'],
        "rank": [f"block={make_run(tmp_path / 'search')}:50"],
        "missing_data": ['block="[(1,4,0,0,0),(2,7,0,0,0)]"', "dataset=imagefolder",
                         f"dataset.source.root={tmp_path / 'no-images'}"],
    }
    proc = cli(*args[case], f"hydra.run.dir={tmp_path / 'out'}")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "out").exists()  # no folder holding only Hydra's files to mistake for a train run


def test_missing_block_or_run_folder_is_a_clear_error(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a search run"):
        resolve_block(f"{tmp_path / 'plain'}:1")
    with pytest.raises(UserError, match="no block given"):
        train(config(tmp_path), tmp_path / "out")
    with pytest.raises(UserError, match="not a train folder"):
        train_dir_or_resume(str(tmp_path / "plain"), "unused")


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

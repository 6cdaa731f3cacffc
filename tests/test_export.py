import json
import subprocess
import sys

import pytest
import torch

import blockqnn
from blockqnn import export
from blockqnn.network import Template
from blockqnn.nsc import Block
from tests.blocks import INCEPTION, RESIDUAL

TEMPLATE = {"_target_": "blockqnn.network.Template", "stem": "conv", "stages": 2, "N": 1, "F": 8}
DATASET = {"name": "synthetic", "channels": 3, "image_size": 16, "num_classes": 5, "mean": [0.5] * 3, "std": [0.2] * 3}


def trained_like(code: str) -> torch.nn.Module:
    """A network whose batch-norm statistics and weights differ from a fresh one's, in eval mode."""
    torch.manual_seed(0)
    model = Template("conv", 2, 1, 8).build(Block.parse(code), 3, 5)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 16, 16) * 2 + 1)
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("code", [RESIDUAL, INCEPTION])
def test_round_trip_gives_identical_outputs_and_exports(tmp_path, code):
    model = trained_like(code)
    path = export.save(tmp_path / "model.pt", Block.parse(code), TEMPLATE, DATASET, model.state_dict())
    loaded = blockqnn.load(path)
    assert not loaded.training
    x = export.example_input(loaded.blockqnn, batch=4)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    program = torch.export.export(loaded, (x,))
    with torch.no_grad():
        assert torch.equal(program.module()(x), loaded(x))
    assert loaded.blockqnn["nsc"] == str(Block.parse(code))
    assert loaded.blockqnn["dataset"]["mean"] == DATASET["mean"]


def test_a_fresh_network_differs_so_the_comparison_means_something():
    a, b = trained_like(RESIDUAL), Template("conv", 2, 1, 8).build(Block.parse(RESIDUAL), 3, 5).eval()
    x = torch.randn(2, 3, 16, 16)
    assert not torch.allclose(a(x), b(x))


class Evil:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_load_refuses_arbitrary_pickles(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    meta = {"format": export.FORMAT, "version": export.VERSION, "nsc": RESIDUAL, "template": {}, "dataset": DATASET}
    torch.save({"meta": json.dumps(meta), "state_dict": {}, "payload": Evil()}, path)
    with pytest.raises(export.ExportError, match="not a blockqnn model file"):
        export.load(path)
    assert "unpickled" not in capsys.readouterr().out


def test_load_never_instantiates_targets_from_the_file(tmp_path):
    model = trained_like(RESIDUAL)
    path = export.save(tmp_path / "m.pt", Block.parse(RESIDUAL), TEMPLATE, DATASET, model.state_dict())
    payload = torch.load(path, weights_only=True)
    meta = json.loads(payload["meta"])
    meta["template"]["_target_"] = "os.system"
    torch.save({"meta": json.dumps(meta), "state_dict": payload["state_dict"]}, path)
    with pytest.raises(export.ExportError, match="unknown template settings: _target_"):
        export.load(path)


def test_save_refuses_other_templates(tmp_path):
    with pytest.raises(export.ExportError, match="only blockqnn.network.Template"):
        export.save(tmp_path / "m.pt", Block.parse(RESIDUAL), {**TEMPLATE, "_target_": "x.Y"}, DATASET, {})


def test_not_a_model_file(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello")
    for name in ("other.pt", "text.pt"):
        with pytest.raises(export.ExportError):
            export.load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        export.load(tmp_path / "missing.pt")


def test_import_blockqnn_stays_light():
    code = "import sys, blockqnn; assert 'torch' not in sys.modules; assert callable(blockqnn.load)"
    subprocess.run([sys.executable, "-c", code], check=True)

import importlib.util
import json
import logging
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

import blockqnn
from blockqnn import export
from blockqnn.codes import Block
from blockqnn.errors import ExportError
from blockqnn.network import Template
from tests.blocks import INCEPTION, RESIDUAL
from tests.helpers import REPO

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
    mean, std = (torch.tensor(DATASET[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        assert torch.equal(model((x - mean) / std), loaded(x))  # the normalisation is part of the loaded model
        assert torch.equal(loaded((x * 255).round().to(torch.uint8)), loaded((x * 255).round() / 255))
    program = torch.export.export(loaded, (x,))
    with torch.no_grad():
        assert torch.equal(program.module()(x), loaded(x))
    assert loaded.blockqnn["nsc"] == str(Block.parse(code))
    assert loaded.blockqnn["dataset"]["mean"] == DATASET["mean"]


def test_a_fresh_network_differs_so_the_comparison_means_something():
    a, b = trained_like(RESIDUAL), Template("conv", 2, 1, 8).build(Block.parse(RESIDUAL), 3, 5).eval()
    x = torch.randn(2, 3, 16, 16)
    assert not torch.allclose(a(x), b(x))


def saved_model(tmp_path, code=RESIDUAL):
    path = export.save(tmp_path / "model.pt", Block.parse(code), TEMPLATE, DATASET, trained_like(code).state_dict())
    return blockqnn.load(path)


@pytest.mark.parametrize("code", [RESIDUAL, INCEPTION])
def test_the_torch_export_program_gives_the_models_logits_at_any_batch_size(tmp_path, code):
    model = saved_model(tmp_path, code)
    path = export.save_program(model, tmp_path / "model.pt2", export.example_input(model.blockqnn, batch=4))
    program = torch.export.load(path).module()
    x = export.example_input(model.blockqnn, batch=7)
    with torch.no_grad():
        assert torch.allclose(program(x), model(x), **export.TOLERANCE)


def test_the_onnx_file_gives_the_models_logits_at_any_batch_size(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = saved_model(tmp_path)
    path = export.save_onnx(model, tmp_path / "model.onnx", export.example_input(model.blockqnn, batch=4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.pt"]  # one file, weights inside
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = export.example_input(model.blockqnn, batch=3)
    (logits,) = session.run(["logits"], {"images": x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(logits), model(x), **export.TOLERANCE)


def test_an_export_that_does_not_reproduce_the_model_is_refused(tmp_path):
    logits = torch.randn(4, 5)
    export.check_logits(tmp_path / "m.onnx", logits, logits + 1e-6)
    with pytest.raises(ExportError, match=r"m.onnx does not reproduce the model: .* by up to 0.01"):
        export.check_logits(tmp_path / "m.onnx", logits, logits + torch.tensor([0.0, 0.0, 0.01, 0.0, 0.0]))
    with pytest.raises(ExportError, match=r"logits \(2, 5\) differ from PyTorch's \(4, 5\)"):
        export.check_logits(tmp_path / "m.onnx", logits, logits[:2])


@pytest.mark.parametrize("absent", [("onnx",), ("onnxscript",), ("onnxruntime",)])
def test_without_the_onnx_extra_the_file_is_skipped_or_unchecked_with_one_line(tmp_path, monkeypatch, caplog,
                                                                                absent):
    if absent == ("onnxruntime",):
        pytest.importorskip("onnxscript")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent else find_spec(name, *a))
    model = saved_model(tmp_path)
    with caplog.at_level(logging.INFO, logger="blockqnn.export"):
        path = export.save_onnx(model, tmp_path / "model.onnx", export.example_input(model.blockqnn, batch=2))
    [line] = [r.getMessage() for r in caplog.records if r.name == "blockqnn.export"]
    if absent == ("onnxruntime",):
        assert path.is_file()
        assert line == "model.onnx not checked: onnxruntime is not installed (pip install 'blockqnn[onnx]')"
    else:
        assert path is None and not (tmp_path / "model.onnx").exists()
        assert line == f"model.onnx skipped: torch.onnx.export needs {absent[0]} (pip install 'blockqnn[onnx]')"


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


def readme_snippet() -> str:
    """The README's example that classifies an image file."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return next(b for b in blocks if "blockqnn.load(" in b and "decode_image" in b)


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """A small network trained on the digits by ``blockqnn.train``, exported, and what it scored."""
    from blockqnn.config import compose
    from blockqnn.train import train

    folder = tmp_path_factory.mktemp("digits") / "run"
    cfg = compose("train", [f"block={RESIDUAL!r}".replace("'", '"'), "dataset=digits", "template=tiny",
                            "trainer=smoke", "trainer.max_epochs=2", "logger=none"])
    result = train(cfg, folder)
    return folder / "model.pt", result


def digits_test():
    from blockqnn.config import load_group
    from blockqnn.data import load_source

    return load_source(load_group("dataset", "digits").source)


def test_the_exported_model_takes_raw_images_and_scores_what_training_measured(digits_model):
    """Raw test images, as uint8 or scaled to [0, 1], give the test accuracy training measured on normalised ones."""
    path, result = digits_model
    model = blockqnn.load(path)
    test = digits_test()
    with torch.no_grad():
        for images in (test.test_images, test.test_images / 255):
            accuracy = (model(images).argmax(1) == test.test_labels).float().mean().item()
            assert accuracy == pytest.approx(result["test_acc"], abs=1e-6)
    assert result["test_acc"] > 0.5 and model.classes == tuple("0123456789")
    torch.export.export(model, (export.example_input(model.blockqnn, batch=2),))


def test_training_writes_the_onnx_file_and_the_program_beside_the_model(digits_model):
    """Both take the test images as floats in [0, 1] and score what training measured."""
    path, result = digits_model
    test = digits_test()
    images = test.test_images / 255
    program = torch.export.load(path.with_name("model.pt2")).module()
    scores = {"program": program(images)}
    if importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnxscript") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path.with_name("model.onnx")), providers=["CPUExecutionProvider"])
        scores["onnx"] = torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])
    for logits in scores.values():
        accuracy = (logits.argmax(1) == test.test_labels).float().mean().item()
        assert accuracy == pytest.approx(result["test_acc"], abs=2e-3)  # a near tie may flip
    assert len(scores) == 2 or not path.with_name("model.onnx").exists()


def test_the_readme_classifies_an_image_file(digits_model, tmp_path, capsys):
    path, _ = digits_model
    test = digits_test()
    Image.fromarray(test.test_images[0, 0].numpy(), mode="L").save(tmp_path / "digit.png")
    code = readme_snippet().replace("runs/train/<run>/model.pt", str(path)).replace("digit.png",
                                                                                     str(tmp_path / "digit.png"))
    assert len(code.strip().splitlines()) == 3
    exec(code, {})
    model = blockqnn.load(path)
    with torch.no_grad():
        expected = model.classes[model(test.test_images[:1]).argmax()]
    assert capsys.readouterr().out.strip() == expected

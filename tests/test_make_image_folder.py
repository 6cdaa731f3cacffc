"""experiments/make_image_folder.py and the image-folder example of docs/searching.md: the tree holds the dataset
image for image, and the page's search runs on the tree `make image-folder` writes, from a folder with nothing else."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

from blockqnn.data import image_folder, synthetic
from tests.helpers import REPO, run_cli

SCRIPT = REPO / "experiments" / "make_image_folder.py"


def make_tree(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True,
                          env=os.environ | {"PYTHONPATH": str(REPO)}, timeout=300)


def shown_image_folder_search(folder: str) -> list[str]:
    """The arguments of the `python -m blockqnn.search ... dataset=imagefolder dataset.source.root=FOLDER` example
    in docs/searching.md."""
    page = (REPO / "docs" / "searching.md").read_text().replace("\\\n", " ")
    [command] = [line for line in page.splitlines() if line.startswith("python -m blockqnn.search")
                 and "dataset=imagefolder" in line and f"dataset.source.root={folder}" in line]
    return shlex.split(command)[3:]


def test_the_tree_holds_the_dataset_image_for_image(tmp_path):
    sizes = ["dataset=synthetic", "dataset.source.train_size=40", "dataset.source.test_size=12",
             "dataset.image_size=8"]
    out = make_tree(str(tmp_path / "tree"), *sizes)
    assert out.returncode == 0, out.stderr
    assert "40 train and 12 test images (8x8, 3 channel(s)) in 4 class folders" in out.stdout
    source = synthetic(40, 12, num_classes=4, channels=3, image_size=8, grid=4, noise=0.4, seed=0)
    tree = image_folder(str(tmp_path / "tree"), image_size=8)
    assert tree.classes == source.classes
    for images, labels, read, read_labels in [
        (source.train_images, source.train_labels, tree.train_images, tree.train_labels),
        (source.test_images, source.test_labels, tree.test_images, tree.test_labels),
    ]:
        for c in range(4):  # ImageFolder reads class by class, each in the order the script numbered them
            assert torch.equal(read[read_labels == c], images[labels == c])


def test_an_existing_folder_is_refused_and_left_alone(tmp_path):
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "mine.txt").write_text("keep")
    out = make_tree(str(tmp_path / "tree"))
    assert out.returncode == 1 and out.stderr.startswith("error: ") and len(out.stderr.splitlines()) == 1
    assert [p.name for p in (tmp_path / "tree").iterdir()] == ["mine.txt"]
    assert make_tree(str(tmp_path / "other"), "dataset=imagenet").returncode == 1
    assert not (tmp_path / "other").exists() and [p.name for p in tmp_path.iterdir()] == ["tree"]


@pytest.mark.slow
def test_the_shown_image_folder_search_runs_on_the_make_target_tree(tmp_path):
    """`make image-folder` writes IMAGE_FOLDER; the page's command reads it from the current folder."""
    folder = re.search(r"^IMAGE_FOLDER \?= (\S+)$", (REPO / "Makefile").read_text(), flags=re.M).group(1)
    args = shown_image_folder_search(folder)
    assert f"dataset.source.root={folder}" in args
    assert make_tree(folder, cwd=tmp_path).returncode == 0
    small = ["agent.budget=2", "agent.batch_size=2", "trainer.max_epochs=1", "stopping=none", "logger=none",
             "progress.mode=off", f"output_root={tmp_path}/runs"]
    out = run_cli(*args, *small, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "best block: " in out.stdout and "run stored in" in out.stdout

"""The built wheel carries the configs: installed without the checkout, blockqnn composes its configs from the
copy inside the package."""

import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.helpers import REPO

SOURCES = ("pyproject.toml", "README.md", "LICENSE", "blockqnn", "conf")


@pytest.mark.slow
def test_the_wheel_ships_the_configs_and_runs_from_them(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:  # a clean copy: building writes build/ and *.egg-info beside the sources
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("blockqnn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"blockqnn/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "blockqnn").rglob("*.py")}
    assert len(configs) > 20 and configs <= names, sorted(configs - names)
    assert modules <= names, sorted(modules - names)

    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    code = ("from blockqnn.config import CONF_DIR, compose; print(CONF_DIR); "
            "print(compose('search', ['experiment=quickstart']).agent.batch_size)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(installed / "blockqnn" / "conf"), "8"]

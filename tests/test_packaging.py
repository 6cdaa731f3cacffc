"""The built wheel carries the configs: installed without the checkout, blockqnn composes its configs from the
copy inside the package. pyproject.toml declares what the package imports, the lock pins it all, and each console
script is the app ``python -m`` runs."""

import ast
import importlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

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
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert all(f"{name} = {target}" in scripts for name, target in project()["scripts"].items()), scripts

    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    code = ("from blockqnn.config import CONF_DIR, compose; print(CONF_DIR); "
            "print(compose('search', ['experiment=quickstart']).agent.batch_size)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(installed / "blockqnn" / "conf"), "8"]


# ---- what the package declares: its imports, a lock, console scripts ------------------------------------------------
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[([^\]]*)\])?\s*(?:>=\s*([^,;\s]+))?")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", re.M)
# The console scripts and the module ``python -m`` runs for each.
SCRIPTS = {"blockqnn-search": "blockqnn.search", "blockqnn-train": "blockqnn.train",
           "blockqnn-report": "blockqnn.report", "blockqnn-nsc": "blockqnn.nsc"}


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(extra: str | None = None) -> dict[str, str | None]:
    """Distribution -> lower bound, for the runtime dependencies or one extra (its ``blockqnn[...]`` expanded)."""
    found = {}
    for line in project()["dependencies"] if extra is None else project()["optional-dependencies"][extra]:
        name, extras, lower = REQUIREMENT.match(line).groups()
        if canonical(name) == "blockqnn":
            for inner in extras.split(","):
                found |= requirements(inner.strip())
        else:
            found[canonical(name)] = lower
    return found


def third_party_imports(folder: Path) -> set[str]:
    """Top-level names of every module imported under ``folder`` (nested imports too) that is neither the
    standard library, this project, nor a script beside the importer."""
    names = set()
    for path in folder.rglob("*.py"):
        script = not (path.parent / "__init__.py").exists()  # experiments/: scripts import the ones beside them
        local = {p.stem for p in path.parent.glob("*.py")} if script else set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        names -= local
    return names - set(sys.stdlib_module_names) - {"blockqnn", "tests", "__future__"}


def distributions(modules: set[str]) -> set[str]:
    """The installed distributions that provide ``modules``."""
    provided = importlib.metadata.packages_distributions()
    unknown = sorted(m for m in modules if m not in provided)
    assert not unknown, f"imported but not installed here, so no distribution to check: {unknown}"
    return {canonical(provided[m][0]) for m in modules}


def test_the_package_declares_what_it_imports_and_nothing_else():
    runtime = requirements()
    optional = set().union(*(requirements(extra) for extra in project()["optional-dependencies"] if extra != "dev"))
    imported = distributions(third_party_imports(REPO / "blockqnn"))
    assert imported <= set(runtime) | optional, f"imported, not declared: {sorted(imported - set(runtime) - optional)}"
    assert set(runtime) <= imported, f"declared, never imported: {sorted(set(runtime) - imported)}"
    assert {"pyyaml", "torchmetrics"} <= set(runtime)


def test_the_tests_and_experiments_import_only_what_the_dev_extra_installs():
    installed = set(requirements()) | set(requirements("dev"))
    used = distributions(third_party_imports(REPO / "tests") | third_party_imports(REPO / "experiments"))
    assert used <= installed, f"imported by tests or experiments, not in the dev extra: {sorted(used - installed)}"


def locked(name: str) -> dict[str, str]:
    return {canonical(n): v for n, v in PIN.findall((REPO / "requirements" / name).read_text())}


def test_the_lock_pins_every_dependency_at_or_above_its_lower_bound():
    """requirements/base.txt is what the package needs, dev.txt adds the development extras; both pin everything
    at the same versions, within pyproject's ranges, whose lower bounds are versions the lock has held."""
    base, dev = locked("base.txt"), locked("dev.txt")
    for name in ("base.txt", "dev.txt"):
        lines = [line for line in (REPO / "requirements" / name).read_text().splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]
        assert all("==" in line for line in lines), [line for line in lines if "==" not in line]
    assert set(base) < set(dev) and all(dev[n] == v for n, v in base.items())
    assert "pytest" not in base and "torch" in base
    for group, pins in ((requirements(), base), (requirements("dev"), dev)):
        for name, lower in group.items():
            assert lower is not None, f"{name} has no lower bound in pyproject.toml"
            assert name in pins, f"{name} is not in the lock: run make lock"
            assert tuple(map(int, re.findall(r"\d+", pins[name])[:3])) >= tuple(map(int, lower.split(".")[:3])), \
                f"{name}=={pins[name]} in the lock is below pyproject's lower bound {lower}"


def test_make_installs_from_the_lock():
    makefile = (REPO / "Makefile").read_text()
    assert "-r requirements/base.txt" in makefile and "-r requirements/dev.txt" in makefile
    assert "constraints.txt" not in makefile and not (REPO / "constraints.txt").exists()
    assert re.search(r"^quickstart: \$\(VENV\)/\.installed$", makefile, re.M)
    assert re.search(r"^test: \$\(VENV\)/\.installed-dev$", makefile, re.M)


def test_each_console_script_is_the_app_python_m_runs():
    scripts = project()["scripts"]
    assert set(scripts) == set(SCRIPTS)
    for name, target in scripts.items():
        module_name, _, function = target.partition(":")
        spec = importlib.util.find_spec(SCRIPTS[name])
        ran = importlib.util.find_spec(f"{SCRIPTS[name]}.__main__") if spec.submodule_search_locations else spec
        assert importlib.util.find_spec(module_name).origin == ran.origin, f"{name} is not python -m {SCRIPTS[name]}"
        assert callable(getattr(importlib.import_module(module_name), function))
        guard = [node for node in ast.parse(Path(ran.origin).read_text()).body if isinstance(node, ast.If)
                 and ast.unparse(node.test) == "__name__ == '__main__'"]
        calls = {n.func.id for g in guard for n in ast.walk(g) if isinstance(n, ast.Call) and
                 isinstance(n.func, ast.Name)}
        assert function in calls, f"python -m {SCRIPTS[name]} does not call {function}()"


def console_script(tmp_path: Path, name: str) -> Path:
    """The script pip writes for ``name`` (pip's template), here to run without installing."""
    module, _, function = project()["scripts"][name].partition(":")
    path = tmp_path / name
    path.write_text(f"import re\nimport sys\nfrom {module} import {function}\nif __name__ == '__main__':\n"
                    f"    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
                    f"    sys.exit({function}())\n")
    return path


def run_script(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(console_script(tmp_path, name)), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_console_scripts_run_as_their_python_m_apps(tmp_path, table_search):
    """Hydra's --help, --cfg job and -m (a multirun of two searches); the argparse CLIs name themselves."""
    shown = run_script(tmp_path, "blockqnn-search", "--help")
    assert shown.returncode == 0 and "One BlockQNN search" in shown.stdout, shown.stderr[-2000:]
    job = run_script(tmp_path, "blockqnn-train", "--cfg", "job", "block=x", "trainer.max_epochs=7")
    assert job.returncode == 0 and "block: x\n" in job.stdout and "max_epochs: 7\n" in job.stdout, job.stderr
    sweep = run_script(tmp_path, "blockqnn-search", "-m", *table_search, "seed=1,2", "output_root=out",
                       "agent.schedule_scale=0.02")
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    [multirun] = (tmp_path / "out" / "multirun").iterdir()
    assert sorted(p.parent.name for p in multirun.glob("*/history.sqlite")) == ["0", "1"]
    usage = run_script(tmp_path, "blockqnn-report", "--help")
    assert usage.returncode == 0 and usage.stdout.startswith("usage: blockqnn-report"), usage.stderr
    check = run_script(tmp_path, "blockqnn-nsc", "check", "(1,4,0,0,0) (2,7,0,0,0)")
    assert (check.returncode, check.stdout) == (0, "ok\n"), check.stderr
    assert run_script(tmp_path, "blockqnn-nsc", "--help").stdout.startswith("usage: blockqnn-nsc")

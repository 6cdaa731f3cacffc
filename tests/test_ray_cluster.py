"""A two-node Ray cluster on this machine, started as on a real one (``ray start --head``, then ``ray start
--address`` with its own CPUs): a node that goes away mid-search costs nothing but time. Its candidates run again
on the other node, nothing is lost, nothing finished trains again."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from blockqnn.store import Store
from tests.helpers import REPO, cli_env, stored_count
from tests.test_search_async import check_async_history
from tests.timed import LOG_ENV, NODE_ENV, SLOWDOWN_ENV, evaluations

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture
def ray_temp(monkeypatch) -> Iterator[str]:
    """The cluster's own temporary folder (short: Ray's sockets live in it), and its home: the nodes and drivers
    see none of this machine's or this process's Ray state. A local ``ray.init`` (another test's) leaves
    ``RAY_AUTH_MODE=token`` in its process's environment and a token in ``~/.ray``, with which a second node
    started later is refused."""
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    monkeypatch.setenv("HOME", temp)
    for name in [name for name in os.environ if name.startswith("RAY_")]:
        monkeypatch.delenv(name)
    yield temp
    shutil.rmtree(temp, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def ray_node(name: str, *args: str, log: Path, env: dict) -> Iterator[subprocess.Popen]:
    """``ray start --block ARGS``; every process of the node (raylet, workers; some of them leave the process group)
    carries a mark of its own in its environment, by which a node's death takes them all (``kill_node``). Its
    workers inherit ``env`` and log ``name`` beside each block they evaluate. At the end whatever of the node is
    left (Ray's idle workers) goes too."""
    mark = f"{name}-{os.getpid()}-{time.monotonic_ns()}"
    with log.open("w") as out:
        node = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args],
                                env=cli_env({**env, NODE_ENV: name, NODE_MARK: mark}), stdout=out,
                                stderr=subprocess.STDOUT)
    node.mark = mark
    try:
        yield node
    finally:
        node.terminate()
        node.wait(timeout=60)
        kill_node(node)


NODE_MARK = "BLOCKQNN_TEST_RAY_NODE"


def kill_node(node: subprocess.Popen) -> None:
    """SIGKILL every process of the node, as a machine that dies takes all of them."""
    marked = f"{NODE_MARK}={node.mark}".encode()
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if entry.isdigit() and marked in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                os.kill(int(entry), signal.SIGKILL)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def alive_nodes(address: str) -> int:
    """Nodes the cluster at ``address`` counts alive, asked by a short-lived driver (0 while the head starts)."""
    ask = "import ray; ray.init(address=%r, log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"
    done = subprocess.run([sys.executable, "-c", ask % address], env=cli_env(), capture_output=True, text=True)
    return int(done.stdout.strip() or 0) if done.returncode == 0 else 0


def running_on(node: str, run: Path, log: Path) -> set[str]:
    """Blocks that started on ``node`` and are not finished yet."""
    if stored_count(run) == 0:
        return set()
    with Store.open(run, readonly=True) as store:
        return set(evaluations(log, node)) & {r["arch"] for r in store.running()}


def test_a_node_killed_mid_search_costs_nothing_but_time(table_search, tmp_path, ray_temp):
    run, log, address = tmp_path / "run", tmp_path / "evaluations.log", f"127.0.0.1:{free_port()}"
    args = [*(o for o in table_search if not o.startswith(("executor.", "agent.schedule_scale"))), "executor=ray",
            f"executor.address={address}", "agent.budget=48"]
    head_args = ["--head", f"--port={address.split(':')[1]}", "--num-cpus=1", "--include-dashboard=false",
                 f"--temp-dir={ray_temp}"]
    timed = {LOG_ENV: str(log), SLOWDOWN_ENV: "20"}  # candidates of 0.1-0.8 s, three at once
    second_args = [f"--address={address}", "--num-cpus=2"]
    with ray_node("head", *head_args, log=tmp_path / "head.log", env=timed), \
            ray_node("second", *second_args, log=tmp_path / "second.log", env=timed) as second:
        wait_for(lambda: alive_nodes(address) == 2, 120, "two nodes")
        with (tmp_path / "search.log").open("w") as out:
            search = subprocess.Popen([sys.executable, "-m", "tests.timed", str(run), *args], cwd=REPO, env=cli_env(),
                                      stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: (stored_count(run) >= 10 and running_on("second", run, log)) or search.poll() is not None,
                 180, "a candidate on the second node")
        assert search.poll() is None, (tmp_path / "search.log").read_text()
        lost, seen = running_on("second", run, log), len(evaluations(log))
        kill_node(second)  # the second node dies, with the candidates it was training
        assert search.wait(timeout=300) == 0, (tmp_path / "search.log").read_text()[-3000:]
        assert alive_nodes(address) == 1
    trained = evaluations(log)
    lost |= set(evaluations(log, "second", since=seen))  # and those it started between the look and its death
    again = {arch for arch, n in Counter(trained).items() if n > 1}
    assert again and again <= lost, f"only the killed node's candidates run again: {again} of {lost}"
    assert again <= set(evaluations(log, "head"))  # retried on the node that is left
    rows = check_async_history(run, sorted(set(trained)))  # each block stored once, none trained twice otherwise
    assert {r["status"] for r in rows} == {"ok"}  # the retried ones finished on the head

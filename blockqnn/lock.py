"""One writer per run folder: a search, a resume and a training hold an exclusive lock on their folder while they run.

Two writers in one folder would be two agents learning into one event log, and compute spent twice (a second
terminal, or a cluster job requeued while its first attempt still runs). The lock is ``flock`` on ``FOLDER/.lock``,
which the kernel releases when the process ends however it ends (SIGKILL and out-of-memory included), so a killed
run never leaves a stale lock and its folder is usable at once. The file holds its holder (pid, host, since) for the
refusal's one line; a free folder's lock file is empty. Readers (``blockqnn.report``, a notebook opening the history
read-only) never look at it. What it guarantees on a network file system: docs/run-folder.md#one-writer-per-folder.

Only rank 0 of a distributed training takes it: the other ranks of the same run work in the same folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from blockqnn.errors import FolderInUse

LOCK_FILE = ".lock"
UNLOCKABLE = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)  # flock on a mount without locks (nolock NFS, Lustre)
log = logging.getLogger(__name__)
_held: set[int] = set()  # lock files this process holds open


def _forget_held() -> None:
    """In a forked child (a CPU worker): close the inherited lock files. The lock belongs to the open file, which a
    child keeps open otherwise, holding the folder after the search itself has died."""
    for fd in _held:
        os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_forget_held)


@contextlib.contextmanager
def exclusive(folder: str | Path) -> Iterator[None]:
    """Hold ``folder`` as its only writer for the ``with`` block, or raise ``FolderInUse`` at once (never waits). A
    block that fails takes back the lock file (and the folder) it created: a refused start leaves nothing behind."""
    folder = Path(folder)
    new_folder, new_file = not folder.exists(), not (folder / LOCK_FILE).exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    _held.add(fd)
    try:
        _take(fd, folder)
        try:
            yield
        except BaseException:
            _take_back(folder, new_folder, new_file)
            raise
        finally:
            with contextlib.suppress(OSError):  # a full or read-only disk: the lock goes with the descriptor anyway
                os.ftruncate(fd, 0)  # free again: the next holder writes its own details
    finally:
        _held.discard(fd)
        os.close(fd)  # releases the lock (the kernel does the same when the process dies)


def _take(fd: int, folder: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise FolderInUse(in_use_line(folder, _read(fd))) from None
    except OSError as e:
        if e.errno not in UNLOCKABLE:
            raise
        log.warning("%s: this file system has no locks (%s): a second writer of this folder will not be refused",
                    folder, e.strerror)
    _write(fd, {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")})


def _take_back(folder: Path, new_folder: bool, new_file: bool) -> None:
    if new_file:
        (folder / LOCK_FILE).unlink(missing_ok=True)
    if new_folder:
        with contextlib.suppress(OSError):  # not empty: the block wrote something worth keeping
            folder.rmdir()


def check_free(folder: str | Path) -> None:
    """Refuse a folder another process holds, without taking it: the run-folder resolvers call it before Hydra writes
    its job record there (the lock itself is taken by the command). This process's own lock does not count."""
    path = Path(folder) / LOCK_FILE
    if not path.is_file():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            details = _read(fd)
            if details and (details.get("pid"), details.get("host")) == (os.getpid(), socket.gethostname()):
                return
            raise FolderInUse(in_use_line(Path(folder), details)) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def writer(folder: str | Path, *, foreign: bool = False) -> contextlib.AbstractContextManager:
    """The lock a command that writes ``folder`` takes first: none for a folder given to resume that is not one of
    its runs (``foreign``: the command refuses it with its own line, and a foreign folder gets no lock file), and none
    on the other ranks of a distributed run."""
    return contextlib.nullcontext() if foreign or not is_rank_zero() else exclusive(folder)


def in_use_line(folder: Path, details: dict | None) -> str:
    who = (f"pid {details.get('pid', '?')} on {details.get('host', '?')} since {details.get('since', '?')}"
           if details else "another process")
    return (f"run folder {folder} is in use by {who}: wait for it, or stop it; a killed run releases the folder "
            "by itself")


def is_rank_zero() -> bool:
    """This process is a run's first (or only) one: the launcher's rank variables are unset or zero."""
    return all(int(os.environ.get(name, 0) or 0) == 0 for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def _read(fd: int) -> dict | None:
    try:
        details = json.loads(os.pread(fd, 4096, 0) or b"null")
    except ValueError:
        return None  # being written this instant
    return details if isinstance(details, dict) else None


def _write(fd: int, details: dict) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(details).encode(), 0)

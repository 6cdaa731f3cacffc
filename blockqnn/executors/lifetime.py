"""Processes this project starts never outlive the process that started them.

A search's workers, and the ranks a distributed training starts, block Ctrl-C and SIGTERM (the parent decides) and
wait on a pipe to it. A parent that dies without stopping them (SIGKILL, the out-of-memory killer, which picks the
largest process: the search) must still take them along, else each keeps its memory (hundreds of MB) forever:

* on Linux the kernel kills the child when its parent dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)``, ``die_with``);
* everywhere, a forked child closes what it inherited from the search that is not its own (``forget_parent``):
  the search's ends of the worker pipes (its own and the other workers'), so that its pipe reads end-of-file once
  the search is gone; the lock file and the history (``blockqnn.lock``, ``blockqnn.store``) likewise.

ctypes and the C library only: nothing to install.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_inherited: set[int] = set()  # descriptors of this process that a forked child must not keep (``forget_parent``)
_inherited_files: set[str] = set()  # files whose descriptors (a library's, e.g. SQLite's) a forked child drops


def _prctl(option: int, value: int) -> bool:
    """``prctl(option, value)`` on Linux; False elsewhere or when refused."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(option, value, 0, 0, 0) == 0


def die_with(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when ``parent`` (its parent's pid, as the parent knew it) dies; exit
    at once if it died already (between the fork and this call). The kernel watches the parent *thread* that
    started this process: workers are started from the search's main thread."""
    if _prctl(PR_SET_PDEATHSIG, signal.SIGKILL) and os.getppid() != parent:
        os._exit(1)


def adopt_orphans() -> bool:
    """Make this process the reaper of its descendants' orphans (Linux; ``PR_SET_CHILD_SUBREAPER``): a process whose
    parent dies is re-parented here instead of to init, so that a test session can still see it."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def private(fd: int) -> int:
    """Mark ``fd`` as this process's own: a forked child does not keep it open (``forget_parent``)."""
    _inherited.add(fd)
    return fd


def release(fd: int) -> None:
    """``fd`` is being closed by its owner: nothing for a child to forget."""
    _inherited.discard(fd)


def private_file(path: str | os.PathLike) -> None:
    """Mark every descriptor this process has, or will have, open on ``path`` or a file beside it named
    ``path`` + suffix (SQLite's ``-wal`` and ``-shm``) as its own; Linux (read from ``/proc/self/fd``)."""
    _inherited_files.add(os.path.realpath(path))


def release_file(path: str | os.PathLike) -> None:
    _inherited_files.discard(os.path.realpath(path))


def _open_on_files() -> set[int]:
    """This process's descriptors on the files marked ``private_file``."""
    found = set()
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{name}").startswith(tuple(_inherited_files)):
                    found.add(int(name))
    return found


def forget_parent() -> None:
    """In a forked child: point every descriptor its parent marked ``private`` at ``/dev/null``. Replaced rather
    than closed: the objects that own the numbers (a ``Connection``, SQLite) still close them some day, and must not
    close a descriptor the child opened since under the same number."""
    held = _inherited | (_open_on_files() if _inherited_files else set())
    if not held:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in held:
            with contextlib.suppress(OSError):  # closed behind our back: nothing held
                os.dup2(null, fd)
    finally:
        os.close(null)
        _inherited.clear()
        _inherited_files.clear()


os.register_at_fork(after_in_child=forget_parent)

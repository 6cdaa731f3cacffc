"""The command-line face shared by ``blockqnn.search``, ``blockqnn.train`` and ``blockqnn.report``, each also a
console script (``blockqnn-search``, ``blockqnn-train``, ``blockqnn-report``, ``blockqnn-nsc``: the same ``main``).

Bad input (an unknown config option, a malformed NSC code, a missing data file, a broken run folder) must end in
one clear line on stderr and exit status 1, not in a traceback. Hydra prints several lines and a stack for these,
so ``hydra_app`` runs the Hydra app with Hydra's own reporting off and reports errors here: a bad-input error as
``error: <message>``; anything else (a bug) with its traceback. ``HYDRA_FULL_ERROR=1`` shows tracebacks for all.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
from dotenv import find_dotenv, load_dotenv
from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    InstantiationException,
    OverrideParseException,
)
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from blockqnn.config import CONF_DIR, check_conf_dir
from blockqnn.errors import UserError
from blockqnn.help import register_help_resolvers
from blockqnn.leftovers import forget, remove_new_empty_folders
from blockqnn.schema import check_config
from blockqnn.threads import machine_cores, share_cores

log = logging.getLogger(__name__)

FULL_ERROR_ENV = "HYDRA_FULL_ERROR"

# Errors that describe bad input. A value outside its declaration is a ConfigError wherever it is given
# (blockqnn.schema); other constructor errors (ValueError, TypeError for an unknown argument) count only when raised
# through ``hydra.utils.instantiate``; elsewhere they are bugs.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, HydraException, OmegaConfBaseException)


class _Reported(BaseException):
    """Carries a bad-input error out of a Hydra job: Hydra catches ``Exception`` only and would print a stack."""


def user_errors(exc: BaseException) -> list[BaseException]:
    """The bad-input errors in ``exc``'s chain of causes, outermost first (Hydra wraps constructor errors)."""
    found, via_instantiate, seen = [], False, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, USER_ERRORS) or (via_instantiate and isinstance(exc, ValueError | TypeError)):
            found.append(exc)
        via_instantiate = via_instantiate or isinstance(exc, InstantiationException)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return found


# Hydra's grammar reads parentheses as a function call: an NSC code on the command line must be quoted.
NSC_QUOTING = ("""an NSC code needs quotes on the command line, e.g. 'block="[(1,4,0,0,0),(2,7,0,0,0)]"' """
               "(or Hydra's list syntax: block=[[1,4,0,0,0],[2,7,0,0,0]])")


def describe(errors: list[BaseException]) -> str:
    """One line for a chain of bad-input errors: the innermost says what is wrong; Hydra's "Could not override
    'x'" context is kept in front of it, its hints after it."""
    inner = one_line(errors[-1])
    outer = errors[0]
    if isinstance(outer, OverrideParseException) and "(" in outer.override:
        return f"{outer.override}: {NSC_QUOTING}"
    if len(errors) > 1 and isinstance(outer, ConfigCompositionException | OverrideParseException):
        first, *hints = _lines(outer)
        return "; ".join([f"{first.rstrip('.')}: {inner}", *hints])
    return inner


# Lines of OmegaConf's and Hydra's messages that only repeat the key or list search paths, and the prefix
# OmegaConf puts before an error raised by a resolver (the run folder check of ``resume=``).
_NOISE = re.compile(r"(full_key:|object_type=|reference_type=|provider=|Config search path)")
_RESOLVER_PREFIX = re.compile(r"^\w+ raised while resolving interpolation: ")


def _lines(exc: BaseException) -> list[str]:
    if isinstance(exc, FileNotFoundError) and exc.filename and exc.strerror:
        return [f"{exc.strerror}: {exc.filename}"]
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not _NOISE.match(line.strip())]
    return [_RESOLVER_PREFIX.sub("", line) for line in lines]


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line; a list Hydra prints after "...:" (e.g. available options) becomes a, b, c."""
    text, listing = "", False
    for line in _lines(exc):
        if not text:
            text = line
        elif text.endswith(":") or (listing and " " not in line):
            text += (" " if text.endswith(":") else ", ") + line
            listing = True
        else:
            text += "; " + line
            listing = False
    return text or type(exc).__name__


def prog(module: str) -> str:
    """The command's name for usage lines: the console script's (``blockqnn-report``, from ``pyproject.toml``) when
    that is what runs, else ``python -m <module>``."""
    name = Path(sys.argv[0]).name
    return name if name.startswith("blockqnn-") else f"python -m {module}"


register_help_resolvers(prog)  # the --help pages name the command as the user typed it


def fail(message: str, code: int = 1) -> None:
    """Print ``error: message`` on stderr and exit: the end of every bad-input path."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def full_error_wanted() -> bool:
    """Whether the user asked for tracebacks (``HYDRA_FULL_ERROR=1``)."""
    return os.environ.get(FULL_ERROR_ENV, "") not in ("", "0")


@contextmanager
def one_line_errors(full: bool | None = None) -> Iterator[None]:
    """Turn bad-input errors raised inside into ``error: ...`` and exit 1; ``full`` (default: from the
    environment) lets them through with their traceback."""
    full = full_error_wanted() if full is None else full
    try:
        yield
    except _Reported as reported:
        fail(str(reported))
    except Exception as exc:
        errors = user_errors(exc)
        if not errors or full:
            raise
        fail(describe(errors))


def discard_unused_output_dir() -> None:
    """Undo what Hydra wrote before the job failed on bad input: a refused resume leaves no ``.hydra/resume-*``
    record, and a refused start no folder holding only Hydra's files. Hydra's files are removed one by one; the
    folder itself only if that leaves it empty (and it is not the working folder)."""
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    record, log = folder / (hydra_cfg.output_subdir or ".hydra"), folder / f"{hydra_cfg.job.name}.log"
    if record.parent != folder:  # a resume's own record beside the run's original .hydra
        shutil.rmtree(record, ignore_errors=True)
    elif folder.is_dir() and {entry.name for entry in folder.iterdir()} <= {record.name, log.name}:
        shutil.rmtree(record, ignore_errors=True)
        log.unlink(missing_ok=True)
        if folder.resolve() != Path.cwd().resolve():
            with contextlib.suppress(OSError):
                folder.rmdir()


def share_cores_with_sibling_jobs() -> None:
    """A multirun whose launcher runs ``n_jobs`` jobs at once on this machine (``hydra/launcher=joblib``) gives each
    job its share of the cores (``blockqnn.threads.share_cores``): two searches side by side on 8 cores get 4
    each, not 8 each, so their workers do not fight over the cores."""
    hydra_cfg = HydraConfig.get()
    jobs = hydra_cfg.launcher.get("n_jobs") if hydra_cfg.mode == RunMode.MULTIRUN else None
    if isinstance(jobs, int) and jobs != 1:
        share = share_cores(jobs)
        log.info("%d job(s) at once on this machine: this one uses %d of its %d cores", jobs, share,
                 machine_cores())


def hydra_app(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Like ``@hydra.main`` on ``conf/<config_name>.yaml``, with one-line bad-input errors and ``.env`` loaded."""

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        full = False  # the user's HYDRA_FULL_ERROR, read when main() starts

        def job(cfg: DictConfig) -> Any:
            try:
                check_config(cfg)  # every value within its declared range, before the task writes anything
                share_cores_with_sibling_jobs()
                return task(cfg)
            except Exception as exc:
                errors = user_errors(exc)
                if not errors or full:
                    raise
                discard_unused_output_dir()
                raise _Reported(describe(errors)) from exc

        hydra_main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(job)

        @functools.wraps(task)
        def main() -> Any:
            nonlocal full
            load_dotenv(find_dotenv(usecwd=True))
            full = full_error_wanted()
            os.environ[FULL_ERROR_ENV] = "1"  # Hydra then re-raises instead of printing its own report
            forget()
            try:
                with one_line_errors(full):
                    check_conf_dir()
                    return hydra_main()
            except SystemExit as refused:
                if refused.code:  # an error: line: no folder this start created stays behind empty
                    remove_new_empty_folders()
                raise
            finally:
                if not full:
                    os.environ.pop(FULL_ERROR_ENV, None)

        return main

    return decorate

"""The project's exceptions, on the ground floor so that every module raises them without importing upward.

Two kinds. *Bad input* (``UserError`` and its subclasses): something the user asked for cannot be done (an
unknown option, a malformed NSC code, a missing dataset, a damaged run folder); the message is the whole report,
and the entry points (``blockqnn.cli``) print it as one ``error: ...`` line and exit 1. *Candidate failures*
(``NonFiniteLossError``, ``TemplateMismatch``, and any other exception inside a candidate's training): one
candidate is recorded as failed and the search goes on. And ``Interrupted``: a signal that stops a search.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user asked for that cannot be done; its message is the whole report."""


class ConfigError(UserError, ValueError):
    """A config that cannot be composed: unknown option, group member or missing value."""


class NSCError(UserError, ValueError):
    """A code that is not a valid block; the message names the layer and the rule."""


class StoreError(UserError):
    """A run folder that cannot be used: not a search run, a corrupt database, or an existing run."""


class FolderInUse(StoreError):
    """A run folder another process is writing (a search, a resume or a training): refused before anything in it is
    touched, naming the holder (``blockqnn.lock``)."""


class RunFolderUnwritable(StoreError):
    """A run folder that stopped taking writes mid-run: its disk full, made read-only, or removed. What was stored
    stays (each write is one transaction); the message says what to do, and ``resumable`` whether the run can go on
    from its folder afterwards."""

    def __init__(self, message: str, resumable: bool = True) -> None:
        super().__init__(message)
        self.resumable = resumable


class AgentStateError(StoreError, ValueError):
    """A saved agent state this agent cannot restore: damaged, or saved with another space or schedule. A
    ``StoreError`` since it comes from a run's history."""


class DataError(UserError, RuntimeError):
    """A dataset that cannot be loaded; the message names the expected path and the ways out. Bad input, not a
    candidate's failure: it stops a search (from any worker) with one line."""


class TableError(UserError, ValueError):
    """A benchmark table that cannot be used (columns, values) or an architecture it lacks: one line saying which."""


class TableNotFoundError(TableError, FileNotFoundError):
    """The table file does not exist."""


class ExportError(UserError, ValueError):
    """A file that is not a blockqnn model, or one this version cannot read."""


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN or infinite loss): the candidate is stopped and recorded as failed."""


class TemplateMismatch(ValueError):
    """A template that cannot take a dataset's images (too many down-sampling stages for their size)."""


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM: the search stops where it is and says how to continue. A ``BaseException`` that is no
    ``KeyboardInterrupt``, so that neither a candidate's error handling nor Lightning's (which turns a
    ``KeyboardInterrupt`` inside ``fit`` into ``sys.exit(1)``) takes it for something else; the candidate it stops
    is recorded neither failed nor finished."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum

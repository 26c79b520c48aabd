"""Long jobs as plain generators (Qt-free): the progress they report, the handle that
cancels them, and what the user reads when one fails. :mod:`explorer.widgets.task_runner`
runs them off the GUI thread.

A job that fails says why in one sentence (``Task.error``). An expected failure (a
``ValueError``, the project's kind for "this input cannot be used": ``DatasetError``,
``ImageLoadError``, ``CheckpointError``, ...; or an ``OSError`` on a file) is its message
alone. Anything else is a defect: its traceback goes once into the :class:`ErrorLog`, never
to the terminal, and the sentence names the log file.
"""

from __future__ import annotations

import datetime
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# What a job raises for input it cannot use: shown as its message, never logged.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` steps (``total`` 0: unknown yet), with a line of text."""

    done: int
    total: int
    text: str = ""


@dataclass(eq=False)
class Task:
    """A job handed to :class:`TaskRunner`; the handle to cancel it and read its outcome."""

    name: str
    job: Callable[[], Iterator[object]]
    on_result: Callable[[object], None] | None = None
    on_done: Callable[[Task], None] | None = None
    task_id: int = 0
    error: str | None = None  # the exception that ended the job, if any
    finished: bool = False
    _cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()


class ErrorLog:
    """The file that keeps the tracebacks of unexpected failures (appended, thread-safe)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def record(self, exc: BaseException, context: str) -> bool:
        """Append ``exc``'s traceback under a dated ``context`` line; False when the file
        cannot be written (the failure's sentence then says so)."""
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(f"--- {stamp} {context}\n{''.join(lines)}\n")
        except OSError:
            return False
        return True


def failure_message(exc: BaseException, context: str, log: ErrorLog) -> str:
    """The sentence for a job that raised ``exc``: an expected error's own message; for
    anything else, what it was and where its traceback now is (written to ``log``)."""
    if isinstance(exc, EXPECTED_ERRORS):
        return str(exc) or type(exc).__name__
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if log.record(exc, context):
        return f"An unexpected error ({what}); the details are in {log.path}"
    return f"An unexpected error ({what}); it could not be written to {log.path}"

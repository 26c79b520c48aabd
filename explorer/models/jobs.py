"""Long jobs as plain generators (Qt-free): the progress they report and the handle that
cancels them. :mod:`explorer.widgets.task_runner` runs them off the GUI thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


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

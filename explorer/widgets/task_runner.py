"""Long jobs (importing folders, exporting animations) off the GUI thread, with progress
and cancel.

A job is a plain generator (Orange's habit: heavy work is a function, the widget only runs
it). It yields :class:`Progress` objects and results; the runner hands every result to the
job's ``on_result`` and every progress to the ``progressed`` signal, on the GUI thread, and
calls ``on_done`` at the end. Cancelling is checked between two yields, where the job is
stopped with ``generator.close()`` (its ``finally`` blocks run on the worker thread). The
worker is superqt's generator worker (:func:`superqt.utils.create_worker`), on Qt's
thread pool.

Jobs run one at a time, in the order started; ``queue_changed`` says how many wait. A job's
function is called on the GUI thread when its turn comes (so its arguments can read the
models as the jobs before it left them); the generator it returns runs on the worker.
``threaded=False`` runs a job on the calling thread (tests): results arrive synchronously,
and a ``progressed`` handler may cancel.

A job that raises ends with ``task.error``, one sentence for the user
(:func:`~explorer.state.jobs.failure_message`): an expected error's message, or for a
defect the path of the log its traceback went to. Nothing is printed.
"""

from __future__ import annotations

import itertools
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot
from superqt.utils import create_worker

from explorer.state.jobs import ErrorLog, Progress, Task, failure_message

# Where a runner made without a log (tools, tests) keeps tracebacks; the window passes one
# beside its settings.
DEFAULT_ERROR_LOG = Path(tempfile.gettempdir()) / "realnvp-explorer-errors.log"


def _begin(task: Task, log: ErrorLog) -> Iterator[object] | None:
    """The job's generator (``None``: cancelled, or its function failed: ``task.error``)."""
    if task.cancelled:
        return None
    try:
        return task.job()
    except Exception as exc:
        task.error = failure_message(exc, f"the job {task.name!r}", log)
        return None


def _iterate(task: Task, generator: Iterator[object] | None, log: ErrorLog) -> Iterator[object]:
    """The job's items until it ends, fails (``task.error``) or is cancelled."""
    try:
        if generator is None or task.cancelled:
            return
        for item in generator:
            yield item
            if task.cancelled:
                break
    except Exception as exc:  # a failing job must not take the app down
        task.error = failure_message(exc, f"the job {task.name!r}", log)
    finally:
        if generator is not None:
            generator.close()


def _on_worker(
    task: Task, generator: Iterator[object] | None, log: ErrorLog, done: threading.Event
) -> Generator[tuple[Task, object], None, Task]:
    """The job's items with their task, as superqt's generator worker runs them; returns
    the task (its ``returned`` signal) once the job has ended."""
    try:
        for item in _iterate(task, generator, log):
            yield task, item
    finally:
        done.set()
    return task


class TaskRunner(QObject):
    """Runs :class:`Task` jobs one after another, on a worker thread or synchronously."""

    started = Signal(object)  # Task
    queue_changed = Signal(int)  # how many jobs wait behind the running one
    progressed = Signal(object, object)  # Task, Progress
    finished = Signal(object)  # Task

    def __init__(
        self,
        threaded: bool = True,
        parent: QObject | None = None,
        error_log: ErrorLog | None = None,
    ) -> None:
        super().__init__(parent)
        self.threaded = threaded
        self.error_log = error_log or ErrorLog(DEFAULT_ERROR_LOG)
        self.current: Task | None = None
        self._queue: deque[Task] = deque()
        self._worker_done: threading.Event | None = None  # set when the worker's job ends
        self._ids = itertools.count(1)
        self._closed = False

    @property
    def busy(self) -> bool:
        return self.current is not None or bool(self._queue)

    @property
    def waiting(self) -> int:
        """Jobs queued behind the running one (cancelled ones no longer count)."""
        return sum(not task.cancelled for task in self._queue)

    def start(
        self,
        name: str,
        job: Callable[[], Iterator[object]],
        on_result: Callable[[object], None] | None = None,
        on_done: Callable[[Task], None] | None = None,
    ) -> Task:
        """Queue ``job`` (a function returning a generator); it starts when the jobs before
        it are done."""
        task = Task(name, job, on_result, on_done, next(self._ids))
        if self._closed:  # the window is closing: nothing new runs
            task.cancel()
            task.finished = True
            return task
        self._queue.append(task)
        if self.current is None:
            self._start_next()
        else:
            self.queue_changed.emit(self.waiting)
        return task

    def cancel_all(self) -> None:
        """Cancel the running job and everything queued (their ``on_done`` still runs)."""
        for task in (self.current, *self._queue):
            if task is not None:
                task.cancel()
        self.queue_changed.emit(self.waiting)

    def cancel_current(self) -> None:
        if self.current is not None:
            self.current.cancel()

    def shutdown(self) -> None:
        """Cancel everything and wait for the worker; nothing is delivered afterwards and
        later jobs are cancelled at once."""
        self._closed = True
        self.cancel_all()
        if self._worker_done is not None:
            self._worker_done.wait()
        self._queue.clear()
        self.current = None  # what the thread left queued for delivery is ignored

    def _start_next(self) -> None:
        while self.current is None and self._queue:
            task = self.current = self._queue.popleft()
            self.queue_changed.emit(self.waiting)
            self.started.emit(task)
            generator = _begin(task, self.error_log)
            if self.threaded:
                self._worker_done = done = threading.Event()
                create_worker(
                    _on_worker,
                    task,
                    generator,
                    self.error_log,
                    done,
                    _connect={"yielded": self._on_pair, "returned": self._on_ended},
                )
                return
            for item in _iterate(task, generator, self.error_log):
                self._on_item(task, item)
            self._on_ended(task)

    @Slot(object)
    def _on_pair(self, pair: tuple[Task, object]) -> None:
        self._on_item(*pair)

    def _on_item(self, task: Task, item: object) -> None:
        if task is not self.current:
            return
        if isinstance(item, Progress):
            self.progressed.emit(task, item)
        elif task.on_result is not None and not task.cancelled:
            task.on_result(item)

    @Slot(object)
    def _on_ended(self, task: Task) -> None:
        if task is not self.current:
            return
        if self._worker_done is not None:
            self._worker_done.wait()  # the job's own clean-up, on the worker, is over
            self._worker_done = None
        task.finished = True
        self.current = None
        try:
            if task.on_done is not None:
                task.on_done(task)
            self.finished.emit(task)
        finally:
            self._start_next()

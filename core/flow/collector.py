"""When Python's cyclic garbage collector may run beside a model copy (no torch, no Qt).

The explorer copies models on worker threads while the GUI thread allocates; a collection
and a copy at once crashed the suite (see :func:`collector_paused`). Model copies run inside
:func:`collector_paused`; explicit collections beside them go through :func:`collect`.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

# Guards the two counts below; a condition, so a copy can wait out a collection, and
# reentrant, because a collection can start (and call _note_collection) on a thread that
# holds it.
_gc_state = threading.Condition(threading.RLock())
_gc_pauses = 0  # copies in progress that paused the cyclic collector
_gc_was_enabled = False
_collecting: dict[int, int] = {}  # thread id -> collections running on it
# How long a copy waits for another thread's collection before it goes on regardless (a
# collection takes milliseconds; this only keeps a lost "stop" from hanging a copy).
COLLECTION_WAIT_S = 5.0


def _note_collection(phase: str, _info: dict) -> None:
    """``gc.callbacks`` entry: counts the collections running on each thread, automatic and
    explicit, so that :func:`collector_paused` can wait for them to end."""
    me = threading.get_ident()
    with _gc_state:
        if phase == "start":
            _collecting[me] = _collecting.get(me, 0) + 1
        elif me in _collecting:  # a "stop" whose "start" came before the callback existed
            _collecting[me] -= 1
            if not _collecting[me]:
                del _collecting[me]
                _gc_state.notify_all()


gc.callbacks.append(_note_collection)


def _other_thread_collecting() -> bool:
    return any(thread != threading.get_ident() for thread in _collecting)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (process-wide) while the block runs, after
    any collection already running on another thread has ended; nested and concurrent uses
    restore it once the last one ends, as it was before.

    Why: the explorer copies models on worker threads (the render thread's precision
    and draft copies, batch copies, completions' copies) while the GUI thread allocates.
    The full suite crashed twice with a segmentation fault in the GUI thread's automatic
    collection while the render thread was copying a model: once inside ``copy.deepcopy``,
    and, after automatic collections were paused during copies, once with the copy just
    made. ``gc.disable()`` does not stop a collection that has already started, and a
    collection lets other threads run while it frees objects (torch releases the GIL as
    it frees a tensor: a spinning thread counted 88,000 to 2.4 million loops inside one
    collection of tensors), so the second copy could run inside a collection that began
    before it. Now a copy first waits for such a collection to end (``gc.callbacks`` say
    when), and none can start until it is made; :func:`collect` is the explicit collection
    that keeps to the same rule."""
    global _gc_pauses, _gc_was_enabled
    with _gc_state:
        if _gc_pauses == 0:
            _gc_state.wait_for(lambda: not _other_thread_collecting(), COLLECTION_WAIT_S)
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_state:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def collect(generation: int = 2) -> bool:
    """``gc.collect(generation)`` unless a model copy (:func:`collector_paused`) is running
    on another thread; then nothing, and False. A copy that starts meanwhile waits for it."""
    with _gc_state:
        if _gc_pauses:
            return False
        gc.collect(generation)
        return True

"""CPU threads for torch: a default that a busy machine does not collapse. Torch-free.

Torch's CPU kernels run in an OpenMP (libgomp) team of ``torch.get_num_threads()``
threads, every core by default, and each of a model's hundreds of small kernels ends at a
barrier where the team waits for its slowest thread. libgomp's threads wait there by
spinning (300,000 turns, milliseconds, before they sleep). When another process holds one
of the cores, the team's thread on that core runs only in the turns the scheduler gives
it, and its partner burns its own turns spinning: every barrier waits for the scheduler.

Measured on a 2-core EPYC shared with four training runs (load average 7 to 10), 16
samples of the bundled model, five runs of each, interleaved (``realnvp sample``'s work):

=========================================  ==================
torch's default: 2 threads, spinning wait  300 to 10,700 ms
2 threads, ``GOMP_SPINCOUNT=30000``         175 to 1,820 ms
2 threads, ``GOMP_SPINCOUNT=3000``          196 to 329 ms
2 threads, ``OMP_WAIT_POLICY=PASSIVE``      64 to 177 ms
1 thread                                   84 to 120 ms
=========================================  ==================

So the default has two parts, :func:`prepare_openmp` and :func:`default_threads`:

- the passive wait (threads sleep at once at a barrier) when other processes keep a core
  busy at the start, set in the environment before torch loads libgomp, which reads it
  once. On a quiet machine the spinning wait stays, being faster there (1.3x for a short
  training run, 1.6x for a completion); a load that arrives after the start is the case
  it does not cover;
- one thread fewer for each core that other processes keep busy at the start
  (:func:`others_running`), at least one.

``tools/threads_table.py`` measures every command both ways, quiet and beside a busy
process. ``--threads N`` on every compute command overrides the count; setting
``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` yourself overrides the wait.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path

WAIT_POLICY = "OMP_WAIT_POLICY"
SPIN_COUNT = "GOMP_SPINCOUNT"
PASSIVE = "PASSIVE"


def prepare_openmp(
    environ: MutableMapping[str, str] | None = None, busy: int | None = None
) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when other processes keep a core busy at the start
    (``busy``: their runnable threads, :func:`others_running` when not given), unless the
    wait was chosen already (either variable set) or torch is loaded (libgomp read its
    environment then: too late). Returns whether it set it. Call it before anything imports
    torch; child processes inherit it.

    On a quiet machine the spinning wait stays: there it is the faster one (``realnvp
    train`` of 30 steps 13.6 against 17.9 s, ``complete`` 2.6 against 4.2 s, medians of
    three, 2-core EPYC, ``tools/threads_table.py``); beside a busy process the passive wait
    is (train 40.5 against 20.5 s)."""
    env = os.environ if environ is None else environ
    if WAIT_POLICY in env or SPIN_COUNT in env or "torch" in sys.modules:
        return False
    if busy is None:
        busy = others_running(own=lambda: 1)
    if not busy:
        return False
    env[WAIT_POLICY] = PASSIVE
    return True


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the system says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def procs_running(stat: str) -> int | None:
    """The ``procs_running`` figure of a ``/proc/stat`` text: threads runnable now."""
    for line in stat.splitlines():
        if line.startswith("procs_running "):
            return int(line.split()[1])
    return None


def own_running(tasks: str = "/proc/self/task") -> int:
    """This process's threads runnable now (state ``R``), the reader among them: at least 1."""
    running = 0
    for stat in Path(tasks).glob("*/stat"):
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):  # a thread that ended meanwhile
            continue
        running += state == "R"
    return max(1, running)


def others_running(
    samples: int = 5,
    interval_s: float = 0.01,
    stat_path: str = "/proc/stat",
    own: Callable[[], int] = own_running,
) -> int | None:
    """Threads of other processes runnable now: the median of ``samples`` readings of
    ``procs_running``, ``interval_s`` apart, less this process's own running threads
    (``own``: the reader, and a GUI's other threads when they run). ``None`` where the
    system does not say (not Linux). Not the load average: it lags by a minute, so a
    command run right after another would count the finished one's threads."""
    readings = []
    for i in range(samples):
        if i:
            time.sleep(interval_s)
        try:
            running = procs_running(Path(stat_path).read_text())
        except OSError:
            return None
        if running is None:
            return None
        readings.append(running - own())
    return max(0, round(statistics.median(readings)))


def default_threads(cores: int, others: int | None) -> int:
    """The team for ``cores`` cores when ``others`` threads of other processes are
    runnable: one core fewer for each, at least one; every core when unknown."""
    if others is None:
        return max(1, cores)
    return max(1, cores - others)


def pick_threads(requested: int | None = None) -> int:
    """``requested`` (``--threads``) when given, else :func:`default_threads` for this
    machine now."""
    if requested:
        return requested
    return default_threads(usable_cores(), others_running())

"""The run agent: what a launcher runs on the run's machine, ``PY -m core.runs.agent``.

The client (:mod:`core.runs.host`) never sends shell text: each operation is one
agent command whose words arrive quoted, and paths are expanded (``~``) and checked here,
by Python, on the machine that holds them. Operations:

``check [--runs-dir DIR]``
    Host facts as one JSON line: package version, checkpoint format, where ``core`` was
    imported from, CPU cores, GPUs (name, memory), free disk in the runs folder.
``start --python PY [--runs-dir DIR] [--out OUT] [--gpus N] -- TRAIN_ARGS...``
    Claims the run folder, then starts ``PY -m core train TRAIN_ARGS --progress json --out
    OUT`` (``torchrun --standalone`` for more than one GPU) under ``supervise``, detached
    (:func:`launch_detached`, the one step that differs per platform): its own process
    group, stdin from the null device, stdout appended to ``OUT/events.jsonl``, stderr to
    ``OUT/trainer.log``, so it outlives the connection and the window that asked. The
    process group is recorded in ``OUT/launch.json``. Prints ``{"out", "pid"}``.
``supervise OUT -- ARGV...``
    The trainer's parent: runs it, passes SIGTERM on, and writes its exit status into
    ``OUT/exit.json``, so a run here and one on a host end with the same sentence.
``status RUN``
    The run's state (``running``, ``done``, ``failed``, ``stopped``), step, max_steps and
    the last test bits/dim.
``follow RUN [--offset N] [--log-offset N]``
    Streams the run as JSON lines until it ends: ``{"o": END, "line": TEXT}`` for each
    complete line of ``events.jsonl`` (``END``: the byte offset after it, so a new follow
    from there repeats and loses nothing), ``{"lo": END, "log": TEXT}`` for new lines of
    ``trainer.log``, ``{"hb": TIME}`` every few seconds while nothing happens (a dead
    connection shows on the next write), and last ``{"end": STATE, "message", "code"}``
    (``code``: the trainer's exit status, ``null`` when unknown). A Slurm job not running
    a trainer yet adds ``{"q": WORDS, "scheduler": FIELDS}`` whenever its place in the
    queue changes (``waiting in the queue (Resources), 3rd``).
``stop RUN`` / ``kill RUN``
    Stop: the trainer's stop file ``OUT/STOP`` (saves and finishes). Kill: SIGKILL to the
    recorded process group, once it is checked to be the same process (boot and start time).
``manifest RUN`` / ``read RUN NAME [--offset N]``
    The run folder's files (relative name, size, SHA-256), and the bytes of one of them
    from an offset (raw on stdout) for a resumable fetch.
``cluster``
    What the Slurm cluster this machine is a login node of offers (torch-free):
    partitions with their GPUs, time limit and idle nodes, the default first, and the
    user's accounts (:mod:`core.runs.cluster`).
``scan DATASET DIR [--download]`` / ``devices``
    The training page's questions, asked where the run would go: the readable images of a
    data set (with a few thumbnails) and the devices torch can train on, as JSON lines.

A failure is one JSON line on stderr after :data:`AGENT_ERROR_MARK`, exit status 2 (the
input or the host) or 1 (the run). This module loads no torch except in ``check``,
``scan`` and ``devices``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from core.config import DATASETS
from core.files.atomic import atomic_write
from core.files.format_version import CHECKPOINT_FORMAT
from core.runs.folder import (
    EVENTS_FILE,
    EXIT_FILE,
    LAUNCH_FILE,
    LOG_FILE,
    STOP_FILE,
    RunFolderError,
    check_run_folder,
    claim_run_folder,
    complete_lines,
    new_run_folder,
    parse_event,
    pid_alive,
    process_start_ticks,
    read_events,
    read_launch,
    read_lock,
    run_state,
    sha256_file,
)
from core.runs.host import expand_home, trainer_argv
from core.runs.slurm import WAITING_STATES
from core.runs.slurm import launch_job_id as slurm_job_id
from core.runs.transport import AGENT_MODULE

AGENT_PROTOCOL = 1  # bumped when an operation changes its words or its answer
AGENT_ERROR_MARK = "REALNVP-AGENT-ERROR "  # core.runs.transport.AGENT_ERROR_MARK
DEFAULT_RUNS_DIR = "~/realnvp-runs"
FOLLOW_POLL_S = 0.25
HEARTBEAT_S = 5.0
EXIT_WAIT_S = 30.0  # a trainer that has said done or error exits within this
CHUNK = 256 * 1024
THUMBNAILS = 8  # a data check shows this many images
THUMBNAIL_SIZE = 48
MIN_FREE_BYTES = 16 * 2**20  # a run needs room for its first checkpoints and samples
HOST_LABEL_VAR = "REALNVP_HOST"  # core.runs.host.HOST_LABEL_VAR


class AgentError(Exception):
    def __init__(self, message: str, kind: str = "agent", status: int = 2) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


def _say(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def _fail(exc: AgentError) -> NoReturn:
    record = {"kind": exc.kind, "message": str(exc), "status": exc.status}
    sys.stderr.write(AGENT_ERROR_MARK + json.dumps(record) + "\n")
    sys.stderr.flush()
    raise SystemExit(exc.status)


def _host() -> str:
    return socket.gethostname()


def _where() -> str:
    """The machine as messages name it: the host as the user typed it (the client sets
    :data:`HOST_LABEL_VAR`), else its own name."""
    return os.environ.get(HOST_LABEL_VAR) or _host()


def _os_error(exc: OSError, what: str) -> AgentError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return AgentError(
            f"the disk of {_where()} is full: {what} could not be written", "disk-full"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return AgentError(f"{what} on {_where()} cannot be written: {exc.strerror}", "bad-input")
    return AgentError(f"{what} on {_where()}: {exc.strerror or exc}", "agent")


# -- paths ----------------------------------------------------------------------------------


def runs_dir(text: str | None) -> Path:
    return Path(os.path.expanduser(text or DEFAULT_RUNS_DIR)).absolute()


def run_path(run: str, runs: str | None = None) -> Path:
    """A run folder as the client names it: absolute, ``~/...``, or relative to the runs
    folder (``run-20261205-081500``)."""
    if not run:
        raise AgentError("no run folder given", "bad-input")
    path = Path(os.path.expanduser(run))
    return path if path.is_absolute() else runs_dir(runs) / path


def existing_run(run: str, runs: str | None = None) -> Path:
    out = run_path(run, runs)
    # A batch job still in the queue has written no event yet: its launch names it.
    if not (out / EVENTS_FILE).is_file() and slurm_job_id(read_launch(out)) is None:
        what = "no run folder" if not out.exists() else "no run in the folder"
        raise AgentError(f"there is {what} {out} on {_where()}", "missing-run")
    return out


# -- processes ------------------------------------------------------------------------------


def _boot_id() -> str | None:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return None


_JOB_CACHE_S = 2.0  # a follower asks often; the controller of a real cluster is shared
_job_cache: dict[str, tuple[float, dict[str, Any]]] = {}


def scheduler_status(launch: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``scheduler`` fields of a Slurm run (:func:`core.runs.slurm.job_status`), read
    at most every :data:`_JOB_CACHE_S`; ``None`` for a run of no scheduler."""
    from core.runs.slurm import job_status, queue_place, show_job

    job_id = slurm_job_id(launch)
    if job_id is None:
        return None
    cached = _job_cache.get(job_id)
    if cached is None or time.monotonic() - cached[0] > _JOB_CACHE_S:
        fields = show_job(job_id) or {}
        pending = fields.get("JobState") == "PENDING"
        place = queue_place(job_id, fields.get("Partition")) if pending else (None, None)
        cached = (time.monotonic(), job_status(job_id, fields, place))
        _job_cache[job_id] = cached
    return dict(cached[1])


def trainer_alive(out: Path, launch: dict[str, Any] | None = None) -> bool | None:
    """Whether the recorded trainer still runs: ``None`` when no launch was recorded (a run
    started by hand or by the desktop app on that machine). A Slurm run's trainer runs
    while its job is queued, running or requeued (the trainer may be on another node)."""
    launch = read_launch(out) if launch is None else launch
    scheduler = scheduler_status(launch)
    if scheduler is not None and scheduler["active"] is not None:
        return bool(scheduler["active"])
    pid = launch.get("pid")
    if not isinstance(pid, int):
        # Started some other way (by hand, by the desktop app there): the run lock says.
        holder = read_lock(out)
        return holder.alive() if holder is not None else None
    if launch.get("boot_id") and launch.get("boot_id") != _boot_id():
        return False  # the machine restarted since
    if launch.get("start_ticks") is not None and process_start_ticks(pid) != launch["start_ticks"]:
        return False
    return pid_alive(pid)


# -- the run's state ------------------------------------------------------------------------


def _events(out: Path, after: int = 0) -> Iterator[dict[str, Any]]:
    """The run's events, those after byte ``after`` of the file only."""
    yield from read_events(out, after)


def run_status(out: Path) -> dict[str, Any]:
    """``state`` (``running``, ``done``, ``failed``, ``stopped``), ``step``, ``max_steps``,
    ``test_bpd`` and ``message`` of the run in ``out``: the run folder's own state
    (:func:`core.runs.folder.run_state`), with what only the launcher knows: a
    trainer still starting (no lock yet) runs, one that ended before its first step
    failed, and a killed one was killed."""
    state = run_state(out)
    launch = read_launch(out)
    alive = trainer_alive(out, launch)
    name, message = state.state, state.message or ""
    last = None
    for e in _events(out):
        if e["event"] in ("start", "done", "error"):
            last = e
    if name == "running" and last is not None and last["event"] != "start":
        # It has said its last word and is exiting (the lock goes last).
        name, message = ended_state(last)
    # A resumed run appends to the events of the segments before it: until its trainer
    # has said something, the earlier segment's end is not this run's.
    starting = (
        _segment_start(launch) > 0 and next(_events(out, _segment_start(launch)), None) is None
    )
    if name == "none" or starting:
        # Nothing trained yet: still starting, or ended before its first step.
        message = "" if starting else message
        name = "running" if alive else "failed"
        if name == "failed" and not message:
            message = "the trainer ended before its first step"
            tail = _log_tail(out)
            message += f": {tail}" if tail else ""
    if name == "running" and alive is False:  # the lock's holder is gone, not yet read
        name = "failed"
    scheduler = scheduler_status(launch)
    if scheduler is not None:
        name, message = _with_scheduler(out, scheduler, name, message, last)
        cancelled = name == "failed" and scheduler["state"] == "CANCELLED"
        if cancelled and (launch.get("stopped") or (launch.get("killed") and last is None)):
            # Taken out of the queue by a stop, or by a kill before any trainer ran:
            # nothing trained, nothing is lost.
            name, message = "stopped", ""
    if name == "failed" and launch.get("killed"):
        message = "killed"
    elif name == "failed" and message:
        message = f"on {_where()}: {message}"  # the trainer's sentence, for a run elsewhere
    record = {
        "run": str(out),
        "state": name,
        "step": state.step or 0,
        "max_steps": state.max_steps,
        "test_bpd": state.test_bpd,
        "message": message,
        "alive": alive,
        "pid": launch.get("pid"),
        "host": _host(),
    }
    if scheduler is not None:
        record["scheduler"] = {k: v for k, v in scheduler.items() if k != "active"}
    return record


def _with_scheduler(
    out: Path, scheduler: dict[str, Any], name: str, message: str, last: dict[str, Any] | None
) -> tuple[str, str]:
    """A Slurm run's state, its events merged with its job's: a job queued, running or
    requeued between allocations runs (a ``requeue`` ends an allocation, not the run),
    and one that ended without the trainer's last word says why, in Slurm's words and its
    output file's."""
    from core.runs.slurm import ENDED_BY

    said_last = last is not None and last["event"] in ("done", "error")
    if scheduler["active"] and not said_last:
        return "running", ""
    job_state = scheduler["state"]
    if name != "failed" or job_state is None or said_last:
        return name, message
    why = ENDED_BY.get(job_state, f"it ended {job_state}")
    before = "before the trainer's first event" if last is None else "before the run ended"
    sentence = f"Slurm job {scheduler['job_id']} ended {before}: {why}"
    tail = _log_tail(out, f"slurm-{scheduler['job_id']}.out", skip=("srun:",))
    return "failed", f"{sentence} ({tail})" if tail else sentence


def _segment_start(launch: dict[str, Any]) -> int:
    """Where the events of the last start begin: the size of ``events.jsonl`` when it was
    launched (0 for a fresh run, or a launch that did not record it)."""
    offset = launch.get("events_offset")
    return offset if isinstance(offset, int) and offset > 0 else 0


def ended_state(event: dict[str, Any]) -> tuple[str, str]:
    """The state and message a ``done`` or ``error`` event ends a run with."""
    if event["event"] == "error":
        return "failed", str(event.get("message", ""))
    return ("done" if event.get("reason", "finished") == "finished" else "stopped"), ""


def _log_tail(out: Path, name: str = LOG_FILE, skip: tuple[str, ...] = ()) -> str:
    """The last line of a log of the run folder; lines that start with ``skip`` (srun's
    own "task 0: Exited" after the trainer's last word) only where no other is left."""
    with contextlib.suppress(OSError), (out / name).open("rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
        lines = [x.strip() for x in f.read().decode("utf-8", "replace").splitlines()]
        lines = [x for x in lines if x]
        said = [x for x in lines if not x.startswith(skip)] if skip else lines
        return (said or lines or [""])[-1]
    return ""


# -- operations -----------------------------------------------------------------------------


def op_check(args: argparse.Namespace) -> None:
    import importlib.metadata

    import core

    try:
        version = importlib.metadata.version("realnvp-explorer")
    except importlib.metadata.PackageNotFoundError:
        version = None
    runs = runs_dir(args.runs_dir)
    existing = runs
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "memory_bytes": int(p.total_memory)})
    _say(
        {
            "protocol": AGENT_PROTOCOL,
            "package_version": version,
            "checkpoint_format": CHECKPOINT_FORMAT,
            "core_path": str(Path(core.__file__).parent),
            "python": sys.executable,
            "python_version": sys.version.split()[0],
            "torch_version": torch.__version__,
            "hostname": _host(),
            "cpu_count": os.cpu_count() or 1,
            "gpus": gpus,
            "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
            "runs_dir": str(runs),
            "runs_dir_exists": runs.is_dir(),
            "free_bytes": free,
        }
    )


def _new_run_name(runs: Path) -> Path:
    out = new_run_folder(runs)
    if out is None:
        raise AgentError(f"no free run folder name in {runs}", "taken")
    return out


def _train_options(train_args: Sequence[str]) -> argparse.Namespace:
    """What the launcher checks among the train options: ``resume``, ``overwrite``,
    ``dataset``, ``data_dir`` and ``download`` (the trainer's defaults)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--resume")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--download", action="store_true")
    return parser.parse_known_args(list(train_args))[0]


def _with_resume(train_args: Sequence[str], checkpoint: Path) -> list[str]:
    """The train options with ``--resume``'s value the checkpoint's full path, so the
    trainer (which starts in the home folder) reads what was checked here."""
    words, after_resume = [], False
    for word in train_args:
        if after_resume:
            word, after_resume = str(checkpoint), False
        elif word == "--resume":
            after_resume = True
        elif word.startswith("--resume="):
            word = f"--resume={checkpoint}"
        words.append(word)
    return words


def _checked_inputs(options: argparse.Namespace, runs: str | None) -> Path | None:
    """What can be checked on the host before a run is said to have started: the
    checkpoint a run resumes (relative: inside the runs folder, as run names are), else
    the data folder (relative: the home folder, where the trainer starts), which only a
    download may still have to make. Returns the checkpoint's full path."""
    if options.resume:
        checkpoint = run_path(options.resume, runs)
        if not checkpoint.is_file():
            what = "a folder, not a checkpoint file" if checkpoint.is_dir() else "no such file"
            raise AgentError(f"cannot resume {checkpoint} on {_where()}: {what}", "bad-input")
        return checkpoint
    data = Path(os.path.expanduser(expand_home(options.data_dir))).absolute()
    if not data.is_dir() and not (options.download and options.dataset != "folder"):
        hint = (
            f" (add --download to fetch {options.dataset})" if options.dataset != "folder" else ""
        )
        raise AgentError(f"there is no data folder {data} on {_where()}{hint}", "bad-input")
    return None


def claim(out: Path, resume: Path | None, overwrite: bool) -> None:
    """The run folder rule of a local run (:mod:`core.runs.folder`), said now and
    not in the trainer's log: a folder in use or holding an earlier run is refused unless
    the run resumes it (a checkpoint in it) or ``overwrite`` moves the earlier run aside
    (done here, so a follower never sees the earlier run's events)."""
    resume_here = resume is not None and resume.parent == out.absolute()
    try:
        check_run_folder(out, resume=resume_here, overwrite=overwrite)
    except RunFolderError as exc:
        raise AgentError(f"on {_where()}: {exc}", "taken") from None
    try:
        claim_run_folder(out, resume=resume_here, overwrite=overwrite).release()
    except RunFolderError as exc:
        raise AgentError(f"on {_where()}: {exc}", "bad-input") from None


def _ignore_hangup() -> None:  # in the child, before exec: nohup
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def launch_detached(argv: Sequence[str], stdout: Any, stderr: Any) -> subprocess.Popen:
    """Start ``argv`` so that it outlives the agent, the connection and the window that
    asked: stdin from the null device, stdout and stderr into the run's files, and a process
    group of its own that :func:`kill_group` ends whole. The one step that differs per
    platform: ``setsid`` with SIGHUP ignored on POSIX, a new process group without a
    console on Windows."""
    if os.name == "nt":
        flags = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        extra: dict[str, Any] = {"creationflags": flags}
    else:
        extra = {"start_new_session": True, "preexec_fn": _ignore_hangup}
    return subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, close_fds=True, **extra
    )


def kill_group(launch: dict[str, Any]) -> None:
    """End what :func:`launch_detached` started, with every process it started."""
    if os.name == "nt":
        subprocess.run(
            ["taskkill", "/T", "/F", "/PID", str(int(launch["pid"]))],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(int(launch["pgid"]), signal.SIGKILL)


def op_supervise(args: argparse.Namespace) -> None:
    """The trainer's parent for its whole life: starts it (in this process group, with this
    process's stdout and stderr, the run's files), passes a SIGTERM on, and writes its exit
    status into ``OUT/exit.json`` so whoever follows the run can say how it ended."""
    process = subprocess.Popen(args.argv, stdin=subprocess.DEVNULL)
    signal.signal(signal.SIGTERM, lambda *_: process.send_signal(signal.SIGTERM))
    code = process.wait()
    with contextlib.suppress(OSError), atomic_write(Path(args.out) / EXIT_FILE) as f:
        f.write(json.dumps({"code": code}).encode())


def exit_code(out: Path) -> int | None:
    """The trainer's exit status, once its supervisor has written it."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        code = json.loads((out / EXIT_FILE).read_text())["code"]
        return code if isinstance(code, int) else None
    return None


def _claimed_run(args: argparse.Namespace) -> tuple[Path, list[str], Path | None]:
    """What every launcher does first (``start``, ``submit``): the version compared, the
    inputs checked, the run folder claimed with room on its disk. Returns the folder, the
    train options (``--resume``'s checkpoint by its full path) and that checkpoint."""
    if args.checkpoint_format is not None and args.checkpoint_format != CHECKPOINT_FORMAT:
        raise AgentError(
            f"realnvp-explorer on {_where()} writes checkpoint format {CHECKPOINT_FORMAT}, the "
            f"program starting the run reads format {args.checkpoint_format}: install the "
            "same version on both",
            "version",
        )
    runs = runs_dir(args.runs_dir)
    options = _train_options(args.train_args)
    resume = _checked_inputs(options, args.runs_dir)
    train_args = args.train_args if resume is None else _with_resume(args.train_args, resume)
    if args.out:
        out = run_path(args.out, args.runs_dir)
    elif resume:  # as a local run: the checkpoint's own folder
        out = resume.parent
    else:
        out = _new_run_name(runs)
    claim(out, resume, options.overwrite)
    free = shutil.disk_usage(out).free
    if free < MIN_FREE_BYTES:
        raise AgentError(
            f"the disk of {_where()} is full: {free / 2**20:.1f} MiB free for the run {out}",
            "disk-full",
        )
    return out, list(train_args), resume


def _events_offset(out: Path) -> int:
    """Where this start's events begin: a resumed run appends to the earlier segments'."""
    with contextlib.suppress(OSError):
        return (out / EVENTS_FILE).stat().st_size
    return 0


def _write_launch(out: Path, launch: dict[str, Any]) -> None:
    with atomic_write(out / LAUNCH_FILE) as f:
        f.write(json.dumps(launch, indent=1).encode())


def op_start(args: argparse.Namespace) -> None:
    out, train_args, _ = _claimed_run(args)
    argv = trainer_argv(os.path.expanduser(args.python), args.gpus, train_args, out)
    events_offset = _events_offset(out)
    try:
        events = (out / EVENTS_FILE).open("ab")
        log = (out / LOG_FILE).open("ab")
    except OSError as exc:
        raise _os_error(exc, f"the run folder {out}") from None
    with contextlib.suppress(OSError):  # an earlier segment's exit status is not this one's
        (out / EXIT_FILE).unlink()
    try:
        process = launch_detached(
            [sys.executable, "-m", AGENT_MODULE, "supervise", str(out), "--", *argv],
            events,
            log,
        )
    except OSError as exc:
        message = f"could not start {sys.executable} on {_where()}: {exc.strerror}"
        raise AgentError(message, "no-python") from None
    finally:
        events.close()
        log.close()
    launch = {
        "pid": process.pid,
        "pgid": process.pid,
        "argv": argv,
        "cwd": os.getcwd(),
        "host": _host(),
        "boot_id": _boot_id(),
        "start_ticks": process_start_ticks(process.pid),
        "started": time.time(),
        "events_offset": events_offset,
    }
    try:
        _write_launch(out, launch)
    except OSError as exc:
        process.kill()
        raise _os_error(exc, f"the run folder {out}") from None
    _say({"out": str(out), "pid": process.pid, "host": _host()})


# The train options a requeued job leaves out: it resumes from latest.pt in its folder.
_NOT_ON_RESUME = {"--resume": 1, "--init-from": 1, "--overwrite": 0}


def _without(words: Sequence[str], options: Mapping[str, int]) -> list[str]:
    """``words`` less ``options`` (name: how many values follow it), spelled either way."""
    kept, skip = [], 0
    for word in words:
        if skip:
            skip -= 1
            continue
        name, sep, _ = word.partition("=")
        if name in options:
            skip = 0 if sep else options[name]
            continue
        kept.append(word)
    return kept


def _job_train_args(train_args: Sequence[str]) -> list[str]:
    """The train options as a batch job takes them: ``~/`` is the host's home, and the
    data folder absolute, as checked here (the job starts in the run folder, not home)."""
    words = [expand_home(word) for word in train_args]
    options = _train_options(words)
    data = str(Path(os.path.expanduser(options.data_dir)).absolute())
    return [*_without(words, {"--data-dir": 1}), "--data-dir", data]


def op_submit(args: argparse.Namespace) -> None:
    """``submit``: the run as a Slurm batch job. The sbatch script is written into the run
    folder (kept: a person can read it and submit it again by hand), submitted with the
    folder as the job's working directory, and the job id recorded in ``launch.json``."""
    from core.runs.slurm import SCRIPT_NAME, SlurmRequest, SubmitError, sbatch_script, submit

    request = SlurmRequest(
        partition=args.partition, gpus=args.gpus, nodes=args.nodes, time=args.time,
        account=args.account, qos=args.qos, extra=tuple(args.sbatch_option or ()),
    )  # fmt: skip
    problem = request.problem()
    if problem:
        raise AgentError(problem, "bad-input")
    out, train_args, _ = _claimed_run(args)
    request = SlurmRequest(**{**request.__dict__, "job_name": out.name})
    fresh = _job_train_args(train_args)
    resumed = _without(fresh, _NOT_ON_RESUME)
    script = out / SCRIPT_NAME
    events_offset = _events_offset(out)
    text = sbatch_script(os.path.expanduser(args.python), fresh, resumed, request)
    try:
        with atomic_write(script) as f:
            f.write(text.encode())
    except OSError as exc:
        raise _os_error(exc, f"the run folder {out}") from None
    try:
        job_id = submit(script, out, _where())
    except SubmitError as exc:
        # Nothing was queued: the folder is left as it was found (a new one removed).
        script.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            out.rmdir()
        raise AgentError(str(exc), "slurm") from None
    launch = {
        "scheduler": {"kind": "slurm", "job_id": job_id},
        "argv": ["sbatch", "--parsable", "--chdir", str(out), str(script)],
        "script": SCRIPT_NAME,
        "host": _host(),
        "started": time.time(),
        "events_offset": events_offset,
    }
    try:
        _write_launch(out, launch)
    except OSError as exc:
        subprocess.run(["scancel", job_id], capture_output=True, check=False)
        raise _os_error(exc, f"the run folder {out}") from None
    _say({"out": str(out), "job_id": job_id, "host": _host()})


def op_cluster(args: argparse.Namespace) -> None:
    from core.runs.cluster import ClusterError, cluster_facts

    try:
        _say(cluster_facts(_where()).to_dict())
    except ClusterError as exc:
        raise AgentError(str(exc), "slurm") from None


def op_status(args: argparse.Namespace) -> None:
    _say(run_status(existing_run(args.run, args.runs_dir)))


def op_follow(args: argparse.Namespace) -> None:
    from core.runs.slurm import queue_words

    out = existing_run(args.run, args.runs_dir)
    offset, log_offset = args.offset, args.log_offset
    launch = read_launch(out)
    # A resumed run's own events start here; an earlier segment's done is not its end.
    segment = _segment_start(launch)
    last_kind, last_write = None, time.monotonic()
    gone_since: float | None = None
    queued: str | None = None
    while True:
        lines, offset_after = complete_lines(out / EVENTS_FILE, offset)
        for end, raw in lines:
            text = raw.decode("utf-8", "replace")
            event = parse_event(text) if end > segment else None
            last_kind = event["event"] if event is not None else last_kind
            _say({"o": end, "line": text})
        offset = offset_after if lines else offset
        log_lines, log_after = complete_lines(out / LOG_FILE, log_offset)
        if log_lines:
            text = "\n".join(raw.decode("utf-8", "replace") for _, raw in log_lines)
            _say({"lo": log_after, "log": text})
            log_offset = log_after
        if lines or log_lines:
            last_write = time.monotonic()
            continue  # read on at once: more may already be there
        if last_kind in ("done", "error"):
            # Its last word is said: the exit status follows once the trainer has gone.
            deadline = time.monotonic() + EXIT_WAIT_S
            while trainer_alive(out) and time.monotonic() < deadline:
                time.sleep(FOLLOW_POLL_S / 5)
            _say_end(out, offset)
            return
        if trainer_alive(out) is False:
            # It ended without saying so (killed, crashed): one more read after a pause
            # catches lines written just before the end.
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since > 2 * FOLLOW_POLL_S:
                _say_end(out, offset)
                return
        scheduler = scheduler_status(launch)
        words = queue_words(scheduler) if scheduler is not None else None
        if words is not None and words != queued:
            # A batch job not yet (or no longer) running a trainer: its place in the queue.
            _say({"q": words, "scheduler": scheduler})
            last_write = time.monotonic()
        queued = words
        if time.monotonic() - last_write > HEARTBEAT_S:
            _say({"hb": round(time.time(), 3)})
            last_write = time.monotonic()
        time.sleep(FOLLOW_POLL_S)


def _say_end(out: Path, offset: int) -> None:
    """A follow's last line: the run's state, why it failed, the trainer's exit status."""
    status = run_status(out)
    end = {"end": status["state"], "offset": offset, "message": status["message"]}
    _say({**end, "code": exit_code(out)})


def _not_running(out: Path, status: dict[str, Any]) -> AgentError:
    return AgentError(
        f"the run {out} on {_where()} is not running ({status['state']})", "not-running", 1
    )


def op_stop(args: argparse.Namespace) -> None:
    out = existing_run(args.run, args.runs_dir)
    status = run_status(out)
    if status["state"] != "running":
        raise _not_running(out, status)
    job = status.get("scheduler")
    if job and job["state"] in WAITING_STATES:
        # No trainer runs to read a stop file (and one starting would remove it as
        # stale): a job still in the queue, or between allocations with its latest.pt
        # saved, is taken out of the queue.
        _scancel(out, job["job_id"], "stopped")
        _say({"out": str(out), "stop": True, "job_id": job["job_id"]})
        return
    try:
        (out / STOP_FILE).touch()
    except OSError as exc:
        raise _os_error(exc, f"{out / STOP_FILE}") from None
    # The trainer removes a stale stop file when it starts: a stop asked for while it was
    # still starting is asked for again once it has started.
    deadline = time.monotonic() + args.wait
    segment = _segment_start(read_launch(out))
    while not any(e["event"] == "start" for e in _events(out, segment)):
        if trainer_alive(out) is False or time.monotonic() > deadline:
            break
        time.sleep(FOLLOW_POLL_S)
    else:
        with contextlib.suppress(OSError):
            (out / STOP_FILE).touch()
    _say({"out": str(out), "stop": True})


def op_kill(args: argparse.Namespace) -> None:
    out = existing_run(args.run, args.runs_dir)
    launch = read_launch(out)
    alive = trainer_alive(out, launch)
    if alive is None:
        raise AgentError(f"{out} on {_where()} records no process to kill", "not-running", 1)
    if not alive:
        raise _not_running(out, run_status(out))
    job_id = slurm_job_id(launch)
    if job_id is not None:
        # Slurm's own end of a job: SIGTERM to its steps (the trainer saves and ends as
        # stopped, core/runs/slurm.py), then SIGKILL; the job stays CANCELLED.
        _scancel(out, job_id, "killed")
        _say({"out": str(out), "killed": True, "job_id": job_id})
        return
    launch["killed"] = time.time()
    with contextlib.suppress(OSError):
        _write_launch(out, launch)
    kill_group(launch)
    _say({"out": str(out), "killed": True})


def _scancel(out: Path, job_id: str, why: str) -> None:
    """``scancel JOB`` for a stop or a kill (``why``), recorded first in ``launch.json``."""
    from core.runs.slurm import sbatch_refusal

    launch = read_launch(out)
    launch[why] = time.time()
    with contextlib.suppress(OSError):
        _write_launch(out, launch)
    try:
        done = subprocess.run(["scancel", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise AgentError(f"scancel {job_id} on {_where()} failed: {exc}", "slurm") from None
    if done.returncode != 0:
        said = sbatch_refusal(done.stderr or done.stdout, _where())
        raise AgentError(f"scancel {job_id}: {said}", "slurm")


def _run_files(out: Path) -> Iterator[Path]:
    """The run's files: regular files only (no links, which could lead out of the folder),
    leaving out temporaries (``.name.*``, written atomically) and the stop file."""
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if any(part.startswith(".") for part in rel.parts) or rel.name == STOP_FILE:
            continue
        if path.is_symlink() or not path.is_file():
            continue
        yield path


def op_manifest(args: argparse.Namespace) -> None:
    out = existing_run(args.run, args.runs_dir)
    wanted = set(args.names or [])
    files = []
    for path in _run_files(out):
        rel = path.relative_to(out).as_posix()
        if wanted and rel not in wanted:
            continue
        with contextlib.suppress(OSError):  # replaced or removed while listing
            size, sha = path.stat().st_size, sha256_file(path)
            files.append({"name": rel, "size": size, "sha256": sha})
    missing = wanted - {f["name"] for f in files}
    if missing:
        raise AgentError(
            f"{out} on {_where()} has no {', '.join(sorted(missing))}", "missing-run", 2
        )
    _say({"out": str(out), "files": files})


def op_read(args: argparse.Namespace) -> None:
    out = existing_run(args.run, args.runs_dir)
    path = (out / args.name).resolve()
    if out.resolve() not in path.parents or not path.is_file():
        raise AgentError(f"{out} on {_where()} has no file {args.name}", "missing-run")
    stdout = sys.stdout.buffer
    with path.open("rb") as f:
        f.seek(args.offset)
        while chunk := f.read(CHUNK):
            stdout.write(chunk)
    stdout.flush()


# -- checking a data set, listing devices (the training page's questions) ----------------------


def _tell(kind: str, **fields: Any) -> None:
    _say({"kind": kind, **fields})


def _thumbnail(pixels: Any) -> None:
    data = base64.b64encode(pixels.tobytes()).decode()
    _tell("thumbnail", shape=list(pixels.shape), data=data)


def op_scan(args: argparse.Namespace) -> None:
    """Counts the readable images of a data set with the trainer's own loaders, a few
    thumbnails on the way, as JSON lines (``listed``, ``progress``, ``thumbnail``, then
    ``done`` or ``error``). The folder is taken as the trainer takes it: ``~`` is this
    machine's home, a relative one starts in the folder the agent runs in."""
    from core.files.images import ImageLoadError, load_image
    from core.training.data import load_dataset
    from core.training.datasets import DatasetError, describe_skipped, list_images

    data_dir = str(Path(expand_home(args.data_dir)).absolute())
    dataset = args.dataset
    try:
        if dataset != "folder":
            try:
                train = load_dataset(dataset, data_dir, True)
                test = load_dataset(dataset, data_dir, False)
            except DatasetError as exc:
                if not args.download:
                    raise
                _tell("done", missing=True, message=str(exc))
                return
            for pixels in train.images[:THUMBNAILS].numpy():
                _thumbnail(pixels)
            n = len(train) + len(test)
            _tell("done", files=n, checked=n, readable=n, train=len(train), test=len(test))
            return
        paths = list_images(data_dir)
        _tell("listed", files=len(paths))
        if not paths:
            _tell("error", message=f"{args.data_dir}: no image files in this folder")
            return
        readable, shown, last = 0, 0, time.monotonic()
        skipped: list[str] = []
        for i, path in enumerate(paths):
            if time.monotonic() - last > 0.2:
                _tell("progress", checked=i, readable=readable)
                last = time.monotonic()
            try:
                pixels = load_image(path, 3, THUMBNAIL_SIZE)
            except ImageLoadError:
                skipped.append(Path(path).relative_to(data_dir).as_posix())
                continue
            readable += 1
            if shown < THUMBNAILS:
                _thumbnail(pixels)
                shown += 1
        if not readable:
            _tell(
                "error",
                message=f"none of the {len(paths)} image files could be read "
                f"({describe_skipped(skipped)})",
            )
            return
        _tell("done", files=len(paths), checked=len(paths), readable=readable, skipped=skipped)
    except DatasetError as exc:
        _tell("error", message=str(exc))


def op_devices(args: argparse.Namespace) -> None:
    """The devices torch can train on here, as ``--device`` accepts them (the project's one
    device picker), with the number of CUDA devices."""
    from core.training.device import available_devices, describe, pick_device

    names = available_devices()
    devices = [
        {"name": n, "label": describe(pick_device(n)) if n.startswith("cuda") else n} for n in names
    ]
    _tell("devices", devices=devices, cuda=sum(n.startswith("cuda") for n in names))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core.runs.agent")
    sub = parser.add_subparsers(dest="op", required=True)
    check = sub.add_parser("check")
    check.add_argument("--runs-dir")
    start = sub.add_parser("start")
    start.add_argument("--python", required=True)
    start.add_argument("--runs-dir")
    start.add_argument("--out")
    start.add_argument("--gpus", type=int, default=1)
    start.add_argument("--checkpoint-format", type=int)
    start.add_argument("train_args", nargs=argparse.REMAINDER)
    submit = sub.add_parser("submit")
    submit.add_argument("--python", required=True)
    submit.add_argument("--runs-dir")
    submit.add_argument("--out")
    submit.add_argument("--checkpoint-format", type=int)
    for name in ("--partition", "--time", "--account", "--qos"):
        submit.add_argument(name)
    submit.add_argument("--gpus", type=int)
    submit.add_argument("--nodes", type=int, default=1)
    submit.add_argument("--sbatch-option", action="append")
    submit.add_argument("train_args", nargs=argparse.REMAINDER)
    scan = sub.add_parser("scan")
    scan.add_argument("dataset", choices=DATASETS)
    scan.add_argument("data_dir")
    scan.add_argument("--download", action="store_true")
    sub.add_parser("devices")
    sub.add_parser("cluster")
    supervise = sub.add_parser("supervise")
    supervise.add_argument("out")
    supervise.add_argument("argv", nargs=argparse.REMAINDER)
    for name in ("status", "follow", "stop", "kill", "manifest", "read"):
        p = sub.add_parser(name)
        p.add_argument("--runs-dir")
        p.add_argument("run")
        if name == "follow":
            p.add_argument("--offset", type=int, default=0)
            p.add_argument("--log-offset", type=int, default=0)
        elif name == "stop":
            p.add_argument("--wait", type=float, default=120.0)
        elif name == "manifest":
            p.add_argument("names", nargs="*")
        elif name == "read":
            p.add_argument("name")
            p.add_argument("--offset", type=int, default=0)
    return parser


OPERATIONS = {
    "check": op_check,
    "start": op_start,
    "submit": op_submit,
    "status": op_status,
    "follow": op_follow,
    "stop": op_stop,
    "kill": op_kill,
    "manifest": op_manifest,
    "read": op_read,
    "scan": op_scan,
    "devices": op_devices,
    "cluster": op_cluster,
    "supervise": op_supervise,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.op in ("start", "submit") and args.train_args[:1] == ["--"]:
        args.train_args = args.train_args[1:]
    if args.op == "supervise" and args.argv[:1] == ["--"]:
        args.argv = args.argv[1:]
    try:
        OPERATIONS[args.op](args)
    except AgentError as exc:
        _fail(exc)
    except BrokenPipeError:  # the client went away (a cut connection): nothing to say
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        _fail(_os_error(exc, exc.filename or "a file"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

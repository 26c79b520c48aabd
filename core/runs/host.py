"""Runs on another machine: check a host, start a run there, follow, stop, kill and fetch it.

This is the Qt-free API the command line (``realnvp remote``) and the desktop app share.
Every call blocks; the GUI calls it from a worker thread. Nothing here imports torch.

A :class:`RunHost` is a machine runs live on, reached through a transport
(:mod:`core.runs.transport`): :func:`ssh_host` (the system OpenSSH client, one shared
connection per host) or :func:`local_host` (this computer). Everything it does there is a
command of the run agent (:mod:`core.runs.agent`), so a run on a host behaves
exactly as a local one: the trainer writes ``OUT/events.jsonl``, ``OUT/trainer.log`` and its
checkpoints, following reads the events by byte offset, stopping writes ``OUT/STOP``::

    host = ssh_host("gpubox", python="~/venv/bin/python")   # or ssh_host("me@10.0.0.5:2222")
    facts = host.check()                  # HostFacts: GPUs, CPU cores, free disk, version
    run = host.start(["--dataset", "mnist", "--data-dir", "~/data", "--preset", "mnist-small"])
    for update in host.follow(run):       # FollowUpdate: event / log / lost / connected / ended
        ...                                # follower.close() from another thread ends it
    host.stop(run)                        # saves latest.pt and finishes; host.kill(run) ends it
    result = host.fetch(run, "cache/run", names=["latest.pt"], progress=..., cancel=event)

Failures raise :class:`~core.runs.transport.RemoteError`: one sentence, a ``kind`` and
the command-line exit status. Starting a run is the only thing a launcher decides
(:class:`Launcher`); a scheduler (a Slurm ``sbatch`` template on a cluster's login node)
would be another ``start`` over the same transport, with the same following and fetching.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from core.files.format_version import CHECKPOINT_FORMAT
from core.runs.cluster import ClusterFacts
from core.runs.folder import parse_event, sha256_file
from core.runs.hosts import user_folder
from core.runs.slurm import SlurmRequest
from core.runs.transport import (
    _NEW_SESSION,
    AGENT_MODULE,
    LocalTransport,
    RemoteError,
    SshTransport,
    Transport,
    agent_failure,
)

HOST_LABEL_VAR = "REALNVP_HOST"  # the host as typed, for the agent's sentences
DEFAULT_PYTHON = "python3"
DEFAULT_RUNS_DIR = "~/realnvp-runs"
RETRY_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 15.0, 30.0)  # then 30 s between tries
# Failures of the way to the host (not of the run) that a follower retries once it has
# followed: the network or the host may come back.
AWAY_KINDS = frozenset({"unknown-host", "refused", "timeout", "unreachable", "ssh"})
CHUNK = 256 * 1024
STATES = ("running", "done", "failed", "stopped")


# -- what the API returns -------------------------------------------------------------------


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_bytes: int


@dataclass(frozen=True)
class HostFacts:
    """What :meth:`RunHost.check` found. ``problem`` is the sentence that stops a run from
    starting there (the checkpoint format differs from this program's), else ``None``."""

    host: str
    hostname: str
    python: str
    python_version: str
    package_version: str | None
    checkpoint_format: int
    core_path: str
    torch_version: str
    cpu_count: int
    gpus: tuple[GpuInfo, ...]
    mps: bool
    runs_dir: str
    free_bytes: int
    problem: str | None = None

    def summary(self) -> list[str]:
        """Lines for a person: the GPUs, the CPU cores, the free disk, the versions."""
        gpus = (
            ", ".join(f"{g.name} ({g.memory_bytes / 2**30:.0f} GiB)" for g in self.gpus)
            if self.gpus
            else ("none (Apple MPS)" if self.mps else "none")
        )
        return [
            f"host: {self.host} ({self.hostname})",
            f"GPUs: {gpus}",
            f"CPU cores: {self.cpu_count}",
            f"free disk in {self.runs_dir}: {self.free_bytes / 1e9:.1f} GB",
            f"realnvp-explorer {self.package_version or '(not installed, imported from source)'}"
            f", checkpoint format {self.checkpoint_format}, torch {self.torch_version}, "
            f"Python {self.python_version} ({self.python})",
        ]


@dataclass(frozen=True)
class RemoteRun:
    """A run somewhere: what the app remembers to re-attach after a restart
    (:meth:`to_dict` / :meth:`from_dict`). ``host`` is ``None`` for this computer."""

    out: str
    host: str | None = None
    python: str = DEFAULT_PYTHON
    config_file: str | None = None
    runs_dir: str = DEFAULT_RUNS_DIR
    # The process :meth:`RunHost.start` launched there (the agent's supervisor of the
    # trainer); not remembered: a later start in the same folder has another.
    pid: int | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        del record["pid"]
        return record

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RemoteRun:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def name(self) -> str:
        return PurePosixPath(self.out).name

    def follow_command(self) -> str:
        """The command line that follows this run from a terminal, quoted for its shell,
        with every option that finds it again (config file, Python, runs folder)."""
        argv = remote_cli(self.host, "follow", self.python, self.runs_dir, self.config_file)
        return join_command([*argv, self.out])


@dataclass(frozen=True)
class RunStatus:
    """A run's state: ``running``, ``done``, ``failed`` or ``stopped``; ``message`` says why
    a run failed; ``alive`` is whether its trainer process runs (``None``: unrecorded)."""

    run: str
    state: str
    step: int
    max_steps: int | None
    test_bpd: float | None
    message: str = ""
    alive: bool | None = None
    pid: int | None = None
    host: str = ""
    # A Slurm run's job: job_id, state (PENDING, RUNNING, ...), reason, position,
    # expected_start, nodes, elapsed, limit, restarts, partition (core.runs.slurm.job_status).
    scheduler: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FollowUpdate:
    """One thing a :class:`Follower` saw.

    ``kind``: ``event`` (``event`` holds the trainer's JSON event), ``log`` (``text``: new
    lines of ``trainer.log``, or an events line that is not JSON), ``connected``, ``lost``
    (``text``: the sentence, ``retry_in``: seconds until the next try), ``ended``
    (``state``: the run's final state, ``text``: why it failed, ``code``: the trainer's
    exit status where known), ``queued`` (a Slurm job that runs no trainer yet: ``text``,
    ``waiting in the queue (Resources), 3rd``, and ``scheduler``, the job's fields, each
    time they change). ``offset`` and ``log_offset`` are where a new follower would resume.
    """

    kind: str
    offset: int
    log_offset: int
    event: dict[str, Any] | None = None
    text: str = ""
    retry_in: float | None = None
    state: str | None = None
    code: int | None = None
    scheduler: dict[str, Any] | None = None


@dataclass(frozen=True)
class RemoteFile:
    name: str  # relative to the run folder, with "/"
    size: int
    sha256: str


@dataclass
class FetchResult:
    folder: Path
    files: list[Path] = field(default_factory=list)
    fetched: int = 0  # files copied now (the others were already there, verified)
    bytes: int = 0


FetchProgress = Callable[[str, int, int], None]  # (name, bytes done, bytes of the file)


# -- the launcher ---------------------------------------------------------------------------


class Launcher(Protocol):
    """Where a run starts. Following, stopping and fetching are the same for every
    launcher; a launcher only decides how the trainer's command gets started."""

    def start(
        self, train_args: Sequence[str], *, out: str | None = None, gpus: int = 1
    ) -> RemoteRun: ...


def _parse_json_line(text: str, what: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                return record
    raise RemoteError(f"the run agent answered {what} with no JSON: {text[-200:]!r}", "agent")


class RunHost:
    """A machine runs live on: this computer or an ssh host (see the module docstring).

    ``python`` is the Python there that has this project installed (a virtual
    environment's ``bin/python``); ``runs_dir`` the folder that new runs go into, and that
    relative run names are taken from (``~`` is the host's home).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        python: str = DEFAULT_PYTHON,
        runs_dir: str = DEFAULT_RUNS_DIR,
        host: str | None = None,
        config_file: str | None = None,
    ) -> None:
        if not python.strip():
            raise RemoteError("no remote Python given", "bad-input")
        self.transport = transport
        self.python = python
        self.runs_dir = runs_dir or DEFAULT_RUNS_DIR
        self.host = host
        self.config_file = config_file

    @property
    def label(self) -> str:
        return self.transport.label

    def command(self, module: str, *args: str) -> list[str]:
        """The local argv that runs ``PY -m MODULE ARGS`` there: the one builder of every
        command sent to the machine (the run agent's operations, the training page's data
        check), so the Python is given as the transport must give it (``~/`` there)."""
        return self.transport.command([self.transport.program(self.python), "-m", module, *args])

    def agent_command(self, op: str, *args: str) -> list[str]:
        """The local argv of one run agent operation there."""
        return self.command(AGENT_MODULE, op, *args)

    def _popen(self, op: str, *args: str, **kwargs: Any) -> subprocess.Popen:
        """One agent operation, started once the shared connection is open."""
        self.transport.connect()
        return subprocess.Popen(
            self.agent_command(op, *args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **_NEW_SESSION,
            **kwargs,
        )

    def call(self, op: str, *args: str, timeout: float | None = 120.0) -> dict[str, Any]:
        """One agent operation; its JSON answer."""
        process = self._popen(op, *args)
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise RemoteError(
                f"{self.label} did not answer {op} within {timeout:.0f} s", "timeout"
            ) from None
        stderr = err.decode("utf-8", "replace")
        if process.returncode != 0:
            raise agent_failure(self.transport, self.python, process.returncode, stderr)
        return _parse_json_line(out.decode("utf-8", "replace"), op)

    def _run_args(self, run: RemoteRun | str) -> list[str]:
        out = run.out if isinstance(run, RemoteRun) else run
        if not str(out).strip():
            raise RemoteError("no run folder given", "bad-input")
        return ["--runs-dir", self.runs_dir, str(out)]

    def remote_run(self, out: str) -> RemoteRun:
        return RemoteRun(out, self.host, self.python, self.config_file, self.runs_dir)

    # -- the operations -------------------------------------------------------------------

    def check(self) -> HostFacts:
        """Connect, run the device probe there, and compare the checkpoint format."""
        r = self.call("check", "--runs-dir", self.runs_dir, timeout=180.0)
        facts = HostFacts(
            host=self.label,
            hostname=str(r.get("hostname", "")),
            python=str(r.get("python", self.python)),
            python_version=str(r.get("python_version", "")),
            package_version=r.get("package_version"),
            checkpoint_format=int(r.get("checkpoint_format", -1)),
            core_path=str(r.get("core_path", "")),
            torch_version=str(r.get("torch_version", "")),
            cpu_count=int(r.get("cpu_count", 1)),
            gpus=tuple(
                GpuInfo(int(g["index"]), str(g["name"]), int(g["memory_bytes"]))
                for g in r.get("gpus", [])
            ),
            mps=bool(r.get("mps", False)),
            runs_dir=str(r.get("runs_dir", self.runs_dir)),
            free_bytes=int(r.get("free_bytes", 0)),
        )
        if facts.checkpoint_format != CHECKPOINT_FORMAT:
            problem = (
                f"realnvp-explorer {facts.package_version} on {self.label} writes checkpoint "
                f"format {facts.checkpoint_format}, this program reads format "
                f"{CHECKPOINT_FORMAT}: install the same version on both"
            )
            facts = HostFacts(**{**facts.__dict__, "problem": problem})
        return facts

    def start(
        self, train_args: Sequence[str], *, out: str | None = None, gpus: int = 1
    ) -> RemoteRun:
        """Start ``realnvp train TRAIN_ARGS`` there, detached; returns at once with the run.

        ``out``: the run folder (relative: inside the runs folder); by default a new
        ``run-YYYYmmdd-HHMMSS`` in the runs folder. A folder that holds a run is refused.
        """
        if gpus < 1:
            raise RemoteError(f"--gpus must be at least 1, got {gpus}", "bad-input")
        args = ["--python", self.python, "--runs-dir", self.runs_dir, "--gpus", str(gpus)]
        args += ["--checkpoint-format", str(CHECKPOINT_FORMAT)]
        if out:
            args += ["--out", out]
        answer = self.call("start", *args, "--", *train_args)
        pid = answer.get("pid")
        return replace(
            self.remote_run(str(answer["out"])), pid=pid if isinstance(pid, int) else None
        )

    def submit(
        self, train_args: Sequence[str], request: SlurmRequest, *, out: str | None = None
    ) -> tuple[RemoteRun, str]:
        """Submit ``realnvp train TRAIN_ARGS`` as a Slurm batch job from this host (a
        cluster's login node): the sbatch script is written into the run folder and
        submitted from there. Returns the run and its job id; following, stopping and
        fetching are a started run's, ``kill`` is ``scancel``."""
        problem = request.problem()
        if problem:
            raise RemoteError(problem, "bad-input")
        args = ["--python", self.python, "--runs-dir", self.runs_dir]
        args += ["--checkpoint-format", str(CHECKPOINT_FORMAT), f"--nodes={request.nodes}"]
        for flag, value in (
            ("--partition", request.partition), ("--time", request.time),
            ("--account", request.account), ("--qos", request.qos), ("--gpus", request.gpus),
            ("--out", out),
        ):  # fmt: skip
            if value is not None and value != "":
                args.append(f"{flag}={value}")  # one word: a value may start with "-"
        args += [f"--sbatch-option={option}" for option in request.extra]
        answer = self.call("submit", *args, "--", *train_args)
        return self.remote_run(str(answer["out"])), str(answer["job_id"])

    def cluster(self) -> ClusterFacts:
        """What the Slurm cluster this host is a login node of offers: its partitions and
        the user's accounts (``sinfo``, ``sacctmgr``)."""
        return ClusterFacts.from_dict(self.call("cluster", timeout=120.0))

    def status(self, run: RemoteRun | str) -> RunStatus:
        r = self.call("status", *self._run_args(run))
        return RunStatus(
            run=str(r["run"]),
            state=str(r["state"]),
            step=int(r.get("step") or 0),
            max_steps=r.get("max_steps"),
            test_bpd=r.get("test_bpd"),
            message=str(r.get("message", "")),
            alive=r.get("alive"),
            pid=r.get("pid"),
            host=str(r.get("host", "")),
            scheduler=r.get("scheduler"),
        )

    def stop(self, run: RemoteRun | str) -> None:
        """Ask the run to save ``latest.pt`` and finish (its ``OUT/STOP`` file)."""
        self.call("stop", *self._run_args(run), timeout=300.0)

    def kill(self, run: RemoteRun | str) -> None:
        """End the run's process group at once; checkpoints already written stay."""
        self.call("kill", *self._run_args(run))

    def follow(
        self, run: RemoteRun | str, offset: int = 0, log_offset: int = 0, **kwargs: Any
    ) -> Follower:
        return Follower(self, run, offset=offset, log_offset=log_offset, **kwargs)

    def manifest(self, run: RemoteRun | str, names: Sequence[str] = ()) -> list[RemoteFile]:
        """The run folder's files with their size and SHA-256, computed there."""
        r = self.call("manifest", *self._run_args(run), *names, timeout=600.0)
        return [RemoteFile(str(f["name"]), int(f["size"]), str(f["sha256"])) for f in r["files"]]

    def fetch(
        self,
        run: RemoteRun | str,
        to: str | os.PathLike,
        *,
        names: Sequence[str] = (),
        progress: FetchProgress | None = None,
        cancel: threading.Event | None = None,
    ) -> FetchResult:
        """Copy the run's files (``names``, or all: checkpoints, samples, events, log) into
        the folder ``to``, each one atomically and verified by size and SHA-256.

        A file already there with the same digest is not copied again; a copy cut short
        (a lost connection, ``cancel`` set) leaves ``.NAME.SHA.part`` that the next fetch
        of the same content continues. Nothing is written outside ``to``.
        """
        folder = Path(to).expanduser().absolute()
        result = FetchResult(folder)
        for _attempt in range(3):
            files = self.manifest(run, names)
            stale = []
            for f in files:
                target = safe_target(folder, f.name)
                fetched = self._fetch_file(run, f, target, progress, cancel)
                if fetched is None:  # replaced on the host while we copied: list again
                    stale.append(f.name)
                    continue
                result.fetched += fetched > 0
                result.bytes += fetched
                if target not in result.files:
                    result.files.append(target)
            if not stale:
                return result
            names = stale
        raise RemoteError(
            f"{', '.join(names)} kept changing on {self.label} while it was copied", "verify"
        )

    def _fetch_file(
        self,
        run: RemoteRun | str,
        f: RemoteFile,
        target: Path,
        progress: FetchProgress | None,
        cancel: threading.Event | None,
    ) -> int | None:
        """Bytes copied (0: it was already there), or ``None`` when the copy does not
        match the host's digest (the file changed there)."""
        if target.is_file() and target.stat().st_size == f.size and sha256_file(target) == f.sha256:
            if progress:
                progress(f.name, f.size, f.size)
            return 0
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}.{f.sha256[:16]}.part")
        have = part.stat().st_size if part.is_file() else 0
        if have > f.size:
            part.unlink()
            have = 0
        copied = 0
        part.touch()
        if have < f.size:
            copied = self._read_into(run, f, part, have, progress, cancel)
        if part.stat().st_size != f.size or sha256_file(part) != f.sha256:
            part.unlink(missing_ok=True)
            return None
        os.replace(part, target)
        return max(copied, 1)

    def _read_into(
        self,
        run: RemoteRun | str,
        f: RemoteFile,
        part: Path,
        have: int,
        progress: FetchProgress | None,
        cancel: threading.Event | None,
    ) -> int:
        args = [*self._run_args(run), f.name, "--offset", str(have)]
        process = self._popen("read", *args, bufsize=0)
        done, copied = have, 0
        try:
            with part.open("ab") as sink:
                assert process.stdout is not None
                while True:
                    if cancel is not None and cancel.is_set():
                        raise RemoteError(f"fetch of {f.name} cancelled", "cancelled")
                    chunk = process.stdout.read(CHUNK)
                    if not chunk:
                        break
                    sink.write(chunk)
                    done += len(chunk)
                    copied += len(chunk)
                    if progress:
                        progress(f.name, min(done, f.size), f.size)
        finally:
            if process.poll() is None and (cancel is not None and cancel.is_set()):
                process.kill()
            err = process.communicate()[1].decode("utf-8", "replace")
        if process.returncode != 0:
            raise agent_failure(self.transport, self.python, process.returncode, err)
        return copied

    def close(self) -> None:
        """Release the shared connection (runs go on)."""
        self.transport.close()


def ssh_host(
    target: str,
    *,
    python: str = DEFAULT_PYTHON,
    runs_dir: str = DEFAULT_RUNS_DIR,
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    connect_timeout: int = 10,
) -> RunHost:
    """A host reached with the system ssh client: an alias or ``user@host[:port]``. The
    agent there names it as typed here, not by its own hostname."""
    env = {HOST_LABEL_VAR: target, **(env or {})}
    transport = SshTransport(
        target, config_file=config_file, env=env, connect_timeout=connect_timeout
    )
    return RunHost(
        transport, python=python, runs_dir=runs_dir, host=target, config_file=config_file
    )


def local_host(python: str | None = None, runs_dir: str = DEFAULT_RUNS_DIR) -> RunHost:
    """This computer, through the same agent commands (the launcher a scheduler or a
    host is an alternative to)."""
    return RunHost(LocalTransport(), python=python or sys.executable, runs_dir=runs_dir)


def host_for(run: RemoteRun) -> RunHost:
    """The host a remembered run lives on."""
    if run.host is None:
        return local_host(run.python, run.runs_dir)
    return ssh_host(run.host, python=run.python, runs_dir=run.runs_dir, config_file=run.config_file)


# -- the trainer's command -----


def join_command(argv: Sequence[str]) -> str:
    """``argv`` as one line for this computer's shell."""
    return subprocess.list2cmdline(argv) if os.name == "nt" else shlex.join(argv)


def remote_cli(
    host: str | None, op: str, python: str, runs_dir: str, config_file: str | None = None
) -> list[str]:
    """``realnvp remote [--ssh-config FILE] HOST OP --python PY --runs-dir DIR``: an
    operation on a host from a terminal, with every option that finds its runs there."""
    argv = ["realnvp", "remote", *(["--ssh-config", config_file] if config_file else [])]
    return [*argv, host or "HOST", op, "--python", python, "--runs-dir", runs_dir]


def expand_home(word: str) -> str:
    """A train option's word with a leading ``~/`` (alone or after ``--option=``) made the
    host's home: the client quotes ``~`` so its own shell leaves it alone."""
    option, sep, value = word.partition("=")
    if sep and option.startswith("--") and (value == "~" or value.startswith("~/")):
        return f"{option}={os.path.expanduser(value)}"
    return os.path.expanduser(word) if word == "~" or word.startswith("~/") else word


def trainer_argv(python: str, gpus: int, train_args: Sequence[str], out: Path) -> list[str]:
    """The trainer's command, the one builder of it (the agent's start, the training page's
    command box): ``--progress json --out OUT`` last
    (argparse keeps the last value of an option given twice); ``~/`` is the host's home."""
    train_args = [expand_home(word) for word in train_args]
    if gpus > 1:
        launcher = [python, "-m", "torch.distributed.run", "--nproc_per_node", str(gpus)]
        launcher.append("--standalone")
    else:
        launcher = [python]
    return [*launcher, "-m", "core", "train", *train_args, "--progress", "json", "--out", str(out)]


# -- files ----------------------------------------------------------------------------------


def safe_target(folder: Path, name: str) -> Path:
    """``folder / name`` for a relative ``a/b`` name from the host; a name that is absolute,
    climbs out (``..``) or names a drive is refused, so a fetch writes only inside
    ``folder``."""
    parts = PurePosixPath(name).parts
    bad = (
        not parts
        or PurePosixPath(name).is_absolute()
        or any(p in ("", ".", "..") or "\\" in p or re.match(r"^[A-Za-z]:", p) for p in parts)
    )
    target = folder.joinpath(*parts).absolute() if not bad else folder
    if bad or folder.absolute() not in target.parents:
        raise RemoteError(f"the host named a file outside the run folder: {name!r}", "bad-input")
    return target


def run_file(run: RemoteRun | str, path: str) -> str:
    """The name inside the run folder of a file an event names by its path on the host (a
    ``samples`` event's PNG, a ``checkpoint`` event's file), for :meth:`RunHost.fetch`'s
    ``names``; a path outside the run folder is refused."""
    out = PurePosixPath(run.out if isinstance(run, RemoteRun) else run)
    try:
        name = PurePosixPath(path).relative_to(out).as_posix()
    except ValueError:
        name = path if not PurePosixPath(path).is_absolute() else ""
    if not name or ".." in PurePosixPath(name).parts:
        raise RemoteError(f"{path} is not a file of the run {out}", "bad-input")
    return name


def default_cache_dir(run: RemoteRun) -> Path:
    """Where fetched runs go by default: ``$XDG_CACHE_HOME/realnvp/runs/HOST/RUN`` (or the
    platform's cache folder)."""
    host = re.sub(r"[^A-Za-z0-9_.@-]", "_", run.host or "local")
    name = re.sub(r"[^A-Za-z0-9_.@-]", "_", run.name) or "run"
    return user_folder("cache") / "runs" / host / name


# -- following ------------------------------------------------------------------------------


class Follower:
    """Follows a run's events through one long-lived agent command (``follow``) on the
    shared connection, from a byte offset of ``events.jsonl``.

    Iterate it (in a worker thread) for :class:`FollowUpdate` s. When the connection
    drops it yields ``lost`` with the retry delay, waits, reconnects and goes on from the
    offset after the last event it yielded, so no event is lost or repeated; the run
    itself never notices. It ends after ``ended`` (the run is over), after
    :meth:`close` (from any thread), or by raising :class:`RemoteError` for a problem no
    retry mends (a missing run folder, no package) or when the host stays away longer
    than ``give_up_after`` seconds (``None``: never give up).
    """

    def __init__(
        self,
        host: RunHost,
        run: RemoteRun | str,
        *,
        offset: int = 0,
        log_offset: int = 0,
        retry_delays: Sequence[float] = RETRY_DELAYS_S,
        give_up_after: float | None = None,
    ) -> None:
        self.host = host
        self.run = run
        self.offset = offset
        self.log_offset = log_offset
        self.retry_delays = tuple(retry_delays) or (1.0,)
        self.give_up_after = give_up_after
        self.connected = False
        self.ever_connected = False
        self.ended_state: str | None = None
        self.reconnects = 0
        self._closed = threading.Event()
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    @property
    def process(self) -> subprocess.Popen | None:
        """The ssh (or agent) process of the current connection."""
        return self._process

    def close(self) -> None:
        """Stop following; the run goes on. Safe from any thread."""
        self._closed.set()
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                self._process.kill()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _update(self, kind: str, **fields: Any) -> FollowUpdate:
        return FollowUpdate(kind, self.offset, self.log_offset, **fields)

    def __iter__(self) -> Iterator[FollowUpdate]:
        failures = 0
        down_since: float | None = None
        while not self.closed:
            try:
                for update in self._session():
                    if update.kind == "connected":
                        failures, down_since = 0, None
                    yield update
                    if update.kind == "ended":
                        return
            except RemoteError as exc:
                if self.closed:
                    return
                # Once a run has been followed, a host that cannot be found or reached is
                # a network gone (a laptop off its Wi-Fi), not a typo: retried too.
                if not (exc.connection or (self.ever_connected and exc.kind in AWAY_KINDS)):
                    raise
                lost = f"lost the connection to {self.host.label}"
                reason = "" if str(exc) == lost else f" ({exc})"
            else:
                if self.closed:
                    return
                reason = ""
            self.connected = False
            down_since = down_since or time.monotonic()
            if (
                self.give_up_after is not None
                and time.monotonic() - down_since > self.give_up_after
            ):
                raise RemoteError(
                    f"lost the connection to {self.host.label} for over "
                    f"{self.give_up_after:.0f} s; the run goes on there",
                    "connection-lost",
                )
            delay = self.retry_delays[min(failures, len(self.retry_delays) - 1)]
            failures += 1
            text = f"lost the connection to {self.host.label}, retrying in {delay:.0f} s{reason}"
            yield self._update("lost", text=text, retry_in=delay)
            if self._closed.wait(delay):
                return
            self.reconnects += 1

    def _session(self) -> Iterator[FollowUpdate]:
        host = self.host
        args = [*host._run_args(self.run), "--offset", str(self.offset)]
        args += ["--log-offset", str(self.log_offset)]
        with self._lock:
            if self.closed:
                return
        process = host._popen("follow", *args)
        with self._lock:
            self._process = process
            if self.closed:  # closed while connecting: close() found no process to end
                process.kill()
        err_lines: list[bytes] = []
        drain = threading.Thread(target=_drain, args=(process.stderr, err_lines), daemon=True)
        drain.start()
        ended = False
        try:
            assert process.stdout is not None
            for raw in process.stdout:
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue
                if not self.connected:
                    self.connected = self.ever_connected = True
                    yield self._update("connected", text=f"following on {host.label}")
                if "o" in record:
                    line = str(record.get("line", ""))
                    event = parse_event(line)
                    self.offset = int(record["o"])
                    if event is not None:
                        yield self._update("event", event=event)
                    elif line.strip():
                        yield self._update("log", text=line)
                elif "q" in record:
                    scheduler = record.get("scheduler")
                    yield self._update(
                        "queued",
                        text=str(record["q"]),
                        scheduler=scheduler if isinstance(scheduler, dict) else None,
                    )
                elif "lo" in record:
                    self.log_offset = int(record["lo"])
                    yield self._update("log", text=str(record.get("log", "")))
                elif "end" in record:
                    ended = True
                    self.ended_state = str(record["end"])
                    code = record.get("code")
                    yield self._update(
                        "ended",
                        state=self.ended_state,
                        text=str(record.get("message", "")),
                        code=code if isinstance(code, int) else None,
                    )
                    return
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            drain.join(timeout=5)
            with self._lock:
                self._process = None
        if not ended and not self.closed:
            code = process.returncode
            if code is None or code <= 0:
                # Killed here, or ended without a word: the connection, not the run.
                raise RemoteError(f"lost the connection to {host.label}", "connection-lost")
            stderr = b"".join(err_lines).decode("utf-8", "replace")
            # A connection failure (ssh's 255) is retried by __iter__; the rest is raised.
            raise agent_failure(host.transport, host.python, code, stderr)


def _drain(stream: Any, into: list[bytes]) -> None:
    with contextlib.suppress(OSError, ValueError):
        for line in stream:
            into.append(line)

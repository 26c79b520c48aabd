"""Transports: how one command reaches the machine a run lives on.

A run's machine is either this computer or a host reached with the system OpenSSH client.
Everything the launcher does there is a command of the run agent
(``PY -m core.runs.agent OP ...``, see :mod:`core.runs.agent`), so the
two transports differ only in how an argv is run:

- :class:`LocalTransport` runs it as a child process;
- :class:`SshTransport` runs it through ``ssh`` with ``BatchMode=yes`` (never a prompt), a
  connect timeout and keep-alives, the user's own config (``-F FILE`` when given), keys,
  agent, ``ProxyJump`` and known hosts. Where the platform has connection sharing (not on
  Windows) one master connection per host (``ControlMaster``/``ControlPersist``, socket in a
  short private folder) carries every command, so following a run or polling it costs no
  new TCP connection or login.

Every word of a remote command is quoted with :func:`shlex.quote`: the host's shell only
splits the words back, it never expands ``$``, ``;``, quotes or spaces in them.

A failure becomes a :class:`RemoteError`: one sentence for the user, a ``kind`` a program
can test, and the command-line exit status (2: the host or the input; 1: the run itself).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

AGENT_MODULE = "core.runs.agent"
# The last stderr line of a failed agent command: this marker, then {"kind", "message"}.
AGENT_ERROR_MARK = "REALNVP-AGENT-ERROR "
# The project is not on a package index: a wheel built from this checkout, or a copy of
# the checkout, is installed there (docs/remote.md, "The package on the host").
INSTALL_ADVICE = (
    "build a wheel in this project's checkout with python -m pip wheel --no-deps -w dist . "
    "and copy it there, then install it with {python} -m pip install "
    "./realnvp_explorer-*.whl, or copy the checkout there and install it with "
    "{python} -m pip install ./realnvp-explorer (or give --python a virtual "
    "environment's bin/python that has it)"
)
SSH_FAILED = 255  # ssh's own exit status when the connection, not the command, failed
NOT_FOUND = 127  # a POSIX shell's status for a command it cannot find
WINDOWS = os.name == "nt"
# Ctrl+C in a terminal reaches the whole foreground process group: children in a session
# of their own are ended by us instead, after we have said what happened.
_NEW_SESSION = {} if WINDOWS else {"start_new_session": True}


class RemoteError(Exception):
    """A remote operation that failed; ``str(error)`` is one sentence for the user.

    ``kind`` names the case for programs (``unknown-host``, ``refused``, ``auth``,
    ``host-key``, ``timeout``, ``unreachable``, ``connection-lost``, ``ssh``, ``no-python``,
    ``no-package``, ``version``, ``disk-full``, ``taken``, ``missing-run``, ``not-running``,
    ``bad-input``, ``verify``, ``cancelled``, ``agent``); ``status`` is the exit status of
    the command line (2 for the host or the input, 1 for a failure of the run itself).
    """

    def __init__(self, message: str, kind: str = "agent", status: int = 2) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status

    @property
    def connection(self) -> bool:
        """Whether retrying later may help (the host or the network was away)."""
        return self.kind in ("connection-lost", "timeout", "unreachable", "refused")


class Transport(Protocol):
    """Runs argv on the run's machine. ``label`` names the machine in messages."""

    label: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """The local argv that runs ``argv`` there."""
        ...

    def program(self, path: str) -> str:
        """A program's path as the machine must be given it (``~/`` is its home)."""
        ...

    def connect(self) -> None:
        """Make sure a command can run now (opens the shared connection); raise
        :class:`RemoteError` saying why not."""
        ...

    def explain(self, returncode: int, stderr: str) -> RemoteError | None:
        """The transport's own failure in a finished command, or ``None`` when the command
        ran (and its own status and stderr say how it went)."""
        ...

    def close(self) -> None:
        """Release the shared connection, if any."""
        ...


class LocalTransport:
    """This computer: the argv runs as it is."""

    label = "this computer"

    def command(self, argv: Sequence[str]) -> list[str]:
        return list(argv)

    def program(self, path: str) -> str:
        return os.path.expanduser(path)

    def connect(self) -> None:
        return None

    def explain(self, returncode: int, stderr: str) -> RemoteError | None:
        return None

    def close(self) -> None:
        return None


# -- ssh ------------------------------------------------------------------------------------

_CONTROL_DIR: str | None = None
_CONTROL_LOCK = threading.Lock()


def _private_dir(path: str) -> bool:
    """Whether ``path`` is a real folder of this user that no one else may enter."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def _control_dir() -> str:
    """The folder of the master sockets: ``/tmp/rnvp-ssh-UID``, this user's alone (0700),
    shared by every process of the user, so a command line run after another, or the app
    after the command line, finds the connection already open. A short path: a socket
    path holds about 100 bytes, and macOS's ``$TMPDIR`` alone takes half. If that name is
    taken by anything else, a fresh private folder of this process instead."""
    global _CONTROL_DIR
    with _CONTROL_LOCK:
        if _CONTROL_DIR is not None and _private_dir(_CONTROL_DIR):
            return _CONTROL_DIR
        base = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
        shared = os.path.join(base, f"rnvp-ssh-{os.getuid()}")
        with contextlib.suppress(FileExistsError):
            os.mkdir(shared, 0o700)
        if _private_dir(shared):
            _CONTROL_DIR = shared
        else:
            _CONTROL_DIR = tempfile.mkdtemp(prefix="rnvp-ssh-", dir=base)  # mode 0700
            atexit.register(shutil.rmtree, _CONTROL_DIR, True)
        return _CONTROL_DIR


# The masters this process started, by socket: the ``ssh -O stop`` that ends each.
_STARTED: dict[str, list[str]] = {}
_STARTED_LOCK = threading.Lock()


@contextlib.contextmanager
def _socket_lock(path: str | None) -> Iterator[None]:
    """Held while one process of this user checks or starts the master of ``path``."""
    if path is None:
        yield
        return
    import fcntl  # POSIX: connection sharing is off on Windows

    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def stop_started_masters() -> int:
    """Ask the shared connections this process started to end (``ssh -O stop``: no new
    commands; one still running through it, a command line's ``follow``, ends first).
    For the desktop app when it quits; the command line leaves them to ``ControlPersist``,
    so the next command finds its connection open. Returns how many were asked."""
    with _STARTED_LOCK:
        started = list(_STARTED.values())
        _STARTED.clear()
    for argv in started:
        subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=False)
    return len(started)


_PORT_SUFFIX = re.compile(r"^(?P<host>[^:\[\]]+):(?P<port>\d{1,5})$")


def split_target(target: str) -> tuple[str, int | None]:
    """``user@host:port`` -> ``("user@host", port)``; an alias or ``user@host`` has no
    port. Raises :class:`RemoteError` for a name ssh would read as an option or that
    holds whitespace."""
    target = target.strip()
    if not target or target.startswith("-") or any(c.isspace() for c in target):
        raise RemoteError(
            f"{target!r} is not a host: give an alias from your ssh config or user@host[:port]",
            "bad-input",
        )
    match = _PORT_SUFFIX.match(target)
    if match is None:
        return target, None
    port = int(match["port"])
    if not 0 < port < 65536:
        raise RemoteError(f"{target}: port {port} is not a port number", "bad-input")
    return match["host"], port


@dataclass
class SshTransport:
    """A host over the system OpenSSH client.

    ``target`` is an alias of the user's ssh config or ``user@host[:port]``;
    ``config_file`` is passed as ``ssh -F``; ``env`` is set for the remote command (with
    ``env NAME=VALUE``, as sshd passes no variables of ours); ``connect_timeout`` and
    ``alive_interval`` are seconds (a connection that misses three keep-alives is dead).
    """

    target: str
    config_file: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    connect_timeout: int = 10
    alive_interval: int = 5
    persist_s: int = 120
    share: bool = not WINDOWS
    ssh: str = "ssh"

    def __post_init__(self) -> None:
        self._destination, self._port = split_target(self.target)
        if self.config_file is not None:
            self.config_file = os.path.expanduser(self.config_file)
            if not os.path.isfile(self.config_file):
                raise RemoteError(f"ssh config file {self.config_file} does not exist", "bad-input")
        self._lock = threading.Lock()
        for name in self.env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise RemoteError(f"{name!r} is not an environment variable name", "bad-input")

    @property
    def label(self) -> str:
        return self.target

    @property
    def control_path(self) -> str | None:
        # One socket per target and config file. Not ssh's %C (local host, remote host,
        # port, user): two aliases of one server with other keys would share a login.
        if not self.share:
            return None
        key = hashlib.sha1(f"{self.target}\0{self.config_file or ''}".encode()).hexdigest()
        return os.path.join(_control_dir(), key[:16])

    def _options(self) -> list[str]:
        argv = [self.ssh]
        if self.config_file:
            argv += ["-F", self.config_file]
        argv += [
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={self.connect_timeout}",
            "-o",
            f"ServerAliveInterval={self.alive_interval}",
            "-o",
            "ServerAliveCountMax=3",
        ]
        if self._port is not None:
            argv += ["-p", str(self._port)]
        return argv

    def _shared(self, master: str) -> list[str]:
        path = self.control_path
        if path is None:
            return []
        return ["-o", f"ControlMaster={master}", "-o", f"ControlPath={path}"]

    def remote_command(self, argv: Sequence[str]) -> str:
        """The one string ssh hands the host's shell: every word quoted."""
        words = list(argv)
        if self.env:
            words = ["env", *(f"{k}={v}" for k, v in self.env.items()), *words]
        return shlex.join(words)

    def program(self, path: str) -> str:
        """``~/venv/bin/python`` as ``./venv/bin/python``: a quoted ``~`` is not expanded
        by the host's shell, and a command over ssh starts in the home folder."""
        if path == "~" or path.startswith("~/"):
            return "." + path[1:]
        if path.startswith("~"):
            raise RemoteError(f"{path}: give the Python as an absolute path or ~/...", "bad-input")
        return path

    def command(self, argv: Sequence[str]) -> list[str]:
        # -T: no terminal, so bytes pass unchanged and Ctrl+C is not forwarded.
        return [
            *self._options(),
            *self._shared("no"),
            "-T",
            "--",
            self._destination,
            self.remote_command(argv),
        ]

    def master_running(self) -> bool:
        if self.control_path is None:
            return False
        result = subprocess.run(
            self._control("check"), capture_output=True, stdin=subprocess.DEVNULL, check=False
        )
        return result.returncode == 0

    def master_pid(self) -> int | None:
        """The process id of the shared connection (``ssh -O check`` says it), or ``None``."""
        if self.control_path is None:
            return None
        result = subprocess.run(
            self._control("check"), capture_output=True, stdin=subprocess.DEVNULL, check=False
        )
        match = re.search(rb"pid=(\d+)", result.stderr)
        return int(match[1]) if result.returncode == 0 and match else None

    def connect(self) -> None:
        """Open the shared connection unless it is open. Without connection sharing, one
        ``true`` on the host proves that commands will run.

        A master that died (killed, a laptop that slept) leaves its socket behind, and a new
        master would find the name taken, say "disabling multiplexing" and live on as a
        plain connection, one more with every later call: the socket that ``-O check``
        finds no master behind is removed first. Processes of this user take turns (a lock
        file beside the socket), so two of them never start two masters at once."""
        path = self.control_path
        with self._lock, _socket_lock(path):
            if path is not None and self.master_running():
                return
            if path is None:
                argv = [*self.command(["true"])]
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                # -f: into the background once logged in; -N: no command. Its stderr goes to
                # a file, not a pipe: the master lives on and would hold a pipe open.
                argv = [
                    *self._options(),
                    *self._shared("yes"),
                    "-o",
                    f"ControlPersist={self.persist_s}",
                    "-f",
                    "-N",
                    "-T",
                    "--",
                    self._destination,
                ]
            with tempfile.TemporaryFile() as err:
                code = subprocess.run(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
                ).returncode
                err.seek(0)
                stderr = err.read().decode("utf-8", "replace")
            if code != 0:
                raise self.explain(SSH_FAILED, stderr) or RemoteError(
                    f"ssh to {self.target} failed with status {code}", "ssh"
                )
            if path is not None:
                stop = self._control("stop")
                with _STARTED_LOCK:
                    _STARTED[path] = stop

    def _control(self, command: str) -> list[str]:
        """``ssh -O COMMAND``: a request to the shared connection's master."""
        return [*self._options(), *self._shared("no"), "-O", command, "--", self._destination]

    def close(self) -> None:
        """End the shared connection (runs on the host are not affected)."""
        if self.control_path is None:
            return
        subprocess.run(
            self._control("exit"), capture_output=True, stdin=subprocess.DEVNULL, check=False
        )

    def login_command(self) -> str:
        """The ``ssh`` command a person types to log in there as this transport does (the
        same config file and port), quoted for the shell."""
        argv = ["ssh"]
        if self.config_file:
            argv += ["-F", self.config_file]
        if self._port is not None:
            argv += ["-p", str(self._port)]
        return shlex.join([*argv, self._destination])

    def explain(self, returncode: int, stderr: str) -> RemoteError | None:
        if returncode != SSH_FAILED:
            return None
        text = stderr.strip()
        host = self.target
        low = text.lower()
        cases = (
            (
                "could not resolve hostname",
                "unknown-host",
                f"unknown host {host}: it is "
                "neither an alias of your ssh config nor a name the network knows",
            ),
            (
                "connection refused",
                "refused",
                f"{host} refused the connection: no ssh server listens on that port",
            ),
            (
                "permission denied",
                "auth",
                f"use a key or an agent for {host}: it refused "
                "the keys offered and would need a password",
            ),
            (
                "too many authentication failures",
                "auth",
                f"use a key or an agent for {host}: it refused the keys offered",
            ),
            (
                "host key verification failed",
                "host-key",
                f"{host}'s host key is not known here or has changed: connect once with "
                f"{self.login_command()} in a terminal and check it",
            ),
            ("no route to host", "unreachable", f"{host} cannot be reached (no route to host)"),
            (
                "network is unreachable",
                "unreachable",
                f"{host} cannot be reached (network is unreachable)",
            ),
            (
                "connection timed out",
                "timeout",
                f"{host} did not answer within {self.connect_timeout} s",
            ),
            (
                "operation timed out",
                "timeout",
                f"{host} did not answer within {self.connect_timeout} s",
            ),
            (
                "can't open user config file",
                "bad-input",
                f"ssh config file {self.config_file} cannot be read",
            ),
            (
                "bad configuration option",
                "bad-input",
                f"the ssh config for {host} has an error: " + _last_line(text),
            ),
        )
        for needle, kind, message in cases:
            if needle in low:
                return RemoteError(message, kind)
        lost = (
            "broken pipe",
            "connection reset",
            "closed by remote host",
            "connection closed",
            "timeout, server",
            "not responding",
            "read from master failed",
            "mux_client",
            "control socket",
        )
        if any(needle in low for needle in lost) or not text:
            return RemoteError(f"lost the connection to {host}", "connection-lost")
        return RemoteError(f"ssh to {host} failed: {_last_line(text)}", "ssh")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# -- running agent commands -----------------------------------------------------------------


def agent_failure(transport: Transport, python: str, returncode: int, stderr: str) -> RemoteError:
    """The sentence for an agent command that ended with ``returncode``: the transport's
    own failure, a Python or package missing on the machine, or the agent's error line."""
    problem = transport.explain(returncode, stderr)
    if problem is not None:
        return problem
    where = transport.label
    lines = [line for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(AGENT_ERROR_MARK):
            with contextlib.suppress(ValueError):
                record = json.loads(line[len(AGENT_ERROR_MARK) :])
                return RemoteError(
                    str(record["message"]),
                    str(record.get("kind", "agent")),
                    int(record.get("status", 2)),
                )
    text = "\n".join(lines)
    if returncode == NOT_FOUND or ("no such file or directory" in text.lower() and python in text):
        return RemoteError(f"there is no Python {python} on {where}", "no-python")
    if re.search(r"No module named '?core", text):
        return RemoteError(
            f"{python} on {where} has no realnvp-explorer: {INSTALL_ADVICE.format(python=python)}",
            "no-package",
        )
    if re.search(r"No module named '?torch", text):
        return RemoteError(
            f"{python} on {where} has realnvp-explorer without torch: install it there with "
            f"{python} -m pip install torch",
            "no-package",
        )
    last = lines[-1] if lines else f"exit status {returncode}"
    return RemoteError(f"the run agent on {where} failed: {last}", "agent")

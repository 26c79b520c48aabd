"""A real OpenSSH server on 127.0.0.1 for the remote-run tests (``tests/test_remote.py``).

:func:`start_sshd` runs ``/usr/sbin/sshd -D`` on a free port with a temporary host key and
an authorized key for the current user, and writes a client config (``ssh -F``) with these
aliases:

- ``rnvp-test``: the server, the right key, its host key known;
- ``rnvp-wrongkey``: the server, a key it does not know (authentication fails);
- ``rnvp-unknownkey``: the server with an empty known-hosts file (host key unknown);
- ``rnvp-refused``: a port where nothing listens (connection refused).

On the "host" the remote Python is :data:`sys.executable` behind a small wrapper script
that puts this checkout first on ``PYTHONPATH``: sshd passes no environment, and the
shared virtual environment's editable install would otherwise import another checkout's
``core``. Without ``sshd`` (``apt-get install openssh-server``) the tests are skipped.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import MNIST_DIR

ROOT = Path(__file__).resolve().parents[1]
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
# A tiny MNIST run for the host: a few dozen steps of the small preset, evaluated on 64
# test images, the averaged weights' batch norm measured on 64 training images (the
# default 2,048 made each evaluation about 9 s here); add --max-steps and --eval-every.
TRAIN = [
    "--dataset", "mnist", "--data-dir", str(MNIST_DIR), "--preset", "mnist-small",
    "--batch-size", "16", "--eval-limit", "64", "--class-limit", "5", "--threads", "1",
    "--log-every", "2", "--ema-bn-images", "64",
]  # fmt: skip
ALIASES = ("rnvp-test", "rnvp-wrongkey", "rnvp-unknownkey", "rnvp-refused")


def sshd_missing() -> str | None:
    """Why the server cannot run here, or ``None``."""
    if not os.path.exists(SSHD):
        return f"no OpenSSH server ({SSHD}); install it with apt-get install openssh-server"
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"no {tool} on PATH (the OpenSSH client)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rnvp-test", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return (path.with_suffix(".pub")).read_text().strip()


@dataclass
class SshServer:
    """A running test server; ``alias`` and ``config`` are what the client needs."""

    root: Path
    port: int
    config: Path
    python: str
    process: subprocess.Popen
    alias: str = "rnvp-test"

    def host(self, alias: str | None = None, **kwargs):
        from core.runs.host import ssh_host

        kwargs.setdefault("python", self.python)
        kwargs.setdefault("runs_dir", str(self.root / "runs"))
        return ssh_host(alias or self.alias, config_file=str(self.config), **kwargs)

    def clients(self) -> list[int]:
        """The ssh processes of this machine that talk to this server (their command line
        names its client config): shared connections and commands alike."""
        config = str(self.config).encode()
        found = []
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if entry.name.isdigit() and Path(argv[0].decode()).name == "ssh" and config in argv:
                    found.append(int(entry.name))
        return found

    def sessions(self) -> list[int]:
        """The server's connections: one sshd process below the listener for each."""
        return [pid for pid, ppid in _parents().items() if ppid == self.process.pid]

    def stop(self) -> None:
        """End the client's shared connections to it, then the server and its sessions."""
        from core.runs.transport import SshTransport

        for alias in ALIASES:
            SshTransport(alias, config_file=str(self.config)).close()
        self.vanish()

    def vanish(self) -> None:
        """The host disappears: the server and every connection it serves end at once.
        Only sshd's own processes are killed (each connection's is a descendant of the
        listener, in a session of its own); the commands run in the sessions are not
        signalled, as when a network cable is pulled."""
        if self.process.poll() is not None:
            return
        for pid in [*_sshd_descendants(self.process.pid), self.process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()

    def restart(self) -> None:
        """The host is back, on the same port with the same keys."""
        self.process = _run_sshd(self.root, self.port)


def _processes() -> tuple[dict[int, int], dict[int, str]]:
    """Each process's parent and name (Linux ``/proc``)."""
    parent, name = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            parent[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
            name[int(entry.name)] = comm
    return parent, name


def _parents() -> dict[int, int]:
    return _processes()[0]


def _sshd_descendants(root_pid: int) -> list[int]:
    """The sshd processes below ``root_pid``."""
    parent, name = _processes()
    found, frontier = [], [root_pid]
    while frontier:
        pid = frontier.pop()
        for child, ppid in parent.items():
            if ppid == pid and name[child].startswith("sshd"):
                found.append(child)
                frontier.append(child)
    return found


def start_sshd(root: Path) -> SshServer:
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    host_pub = _keygen(root / "host_ed25519")
    user_pub = _keygen(root / "id_ed25519")
    _keygen(root / "other_ed25519")
    (root / "authorized_keys").write_text(user_pub + "\n")
    port = free_port()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    (root / "empty_known_hosts").write_text("")
    config = root / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {root / 'host_ed25519'}",
                f"PidFile {root / 'sshd.pid'}",
                f"AuthorizedKeysFile {root / 'authorized_keys'}",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "Subsystem sftp internal-sftp",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    user = getpass.getuser()
    refused = free_port()
    client = root / "ssh_config"
    blocks = []
    keys = ("id_ed25519", "other_ed25519", "id_ed25519", "id_ed25519")
    known_hosts = ("known_hosts", "known_hosts", "empty_known_hosts", "known_hosts")
    ports = (port, port, port, refused)
    for alias, key, known, p in zip(ALIASES, keys, known_hosts, ports):
        blocks.append(
            f"Host {alias}\n  HostName 127.0.0.1\n  Port {p}\n  User {user}\n"
            f"  IdentityFile {root / key}\n  IdentitiesOnly yes\n  IdentityAgent none\n"
            f"  UserKnownHostsFile {root / known}\n  StrictHostKeyChecking yes\n"
            "  LogLevel ERROR\n"
        )
    client.write_text("\n".join(blocks))
    python = root / "host-python"
    python.write_text(
        "#!/bin/sh\n"
        f'PYTHONPATH="{ROOT}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{sys.executable}" "$@"\n'
    )
    python.chmod(0o755)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation folder
    return SshServer(root, port, client, str(python), _run_sshd(root, port))


def _run_sshd(root: Path, port: int) -> subprocess.Popen:
    """``sshd -D`` with the config in ``root``, in a process group of its own; returns once
    it accepts connections on ``port``."""
    with (root / "sshd.log").open("ab") as log:
        process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(root / "sshd_config")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd ended at once: {(root / 'sshd.log').read_text()[-500:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    return process


def running(missing, start, tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator:
    """The body of a fixture for a set of daemons: ``start(folder)`` until the fixture's
    scope ends, then its ``stop()``; skips the tests with ``missing()``'s reason."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    started = start(tmp_path_factory.mktemp(name))
    try:
        yield started
    finally:
        started.stop()


def running_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """The body of a fixture: a server until the fixture's scope ends; skips the tests
    without sshd."""
    yield from running(sshd_missing, start_sshd, tmp_path_factory, "sshd")


def type_into(qtbot, edit, text: str) -> None:
    """Replace a line edit's text by typing, as a user does."""
    from PySide6.QtCore import Qt

    edit.selectAll()
    qtbot.keyClick(edit, Qt.Key.Key_Delete)
    qtbot.keyClicks(edit, text)


def choose_host(qtbot, form, server: SshServer, alias: str | None = None) -> None:
    """The training form's Run on: SSH host, with the server's alias, Python, runs folder
    and config file."""
    form.run_on.setFocus()
    form.set_remote(True)
    type_into(qtbot, form.host, alias or server.alias)
    type_into(qtbot, form.remote_python, server.python)
    type_into(qtbot, form.remote_runs, str(server.root / "runs"))
    type_into(qtbot, form.ssh_config, str(server.config))

"""A real single-node Slurm cluster on this machine for the Slurm tests.

:func:`start_slurm` starts, each by its pid and each with its files in one temporary
folder: ``munged`` with a fresh key and its own socket, then ``slurmctld`` and ``slurmd``
with a ``slurm.conf`` written there (``proctrack/linuxproc``, ``task/none``,
``select/cons_tres``, one node with this machine's cores and memory, one partition
``debug``, free ports). Nothing outside the folder is written and no system daemon is
touched: the clients find the cluster through ``SLURM_CONF`` (:meth:`SlurmCluster.env`).
:meth:`SlurmCluster.stop` ends the daemons it started, by pid. Without Debian's
``slurm-wlm`` and ``munge`` (``.ci/run`` installs them) the tests are skipped with the
reason.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DAEMONS = {name: f"/usr/sbin/{name}" for name in ("munged", "slurmctld", "slurmd")}
CLIENTS = ("sbatch", "scontrol", "squeue", "scancel", "srun", "sinfo")
PARTITION = "debug"


def slurm_missing() -> str | None:
    """Why a cluster cannot run here, or ``None``."""
    for name, path in DAEMONS.items():
        if not os.access(path, os.X_OK):
            return f"no {name} ({path}); install it with apt-get install slurm-wlm munge"
    for tool in CLIENTS:
        if shutil.which(tool) is None:
            return f"no {tool} on PATH; install it with apt-get install slurm-wlm"
    if os.geteuid() != 0:
        # slurmd starts every job as its user; only root can.
        return "the Slurm tests start slurmd, which must run as root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line() -> str:
    """This machine as ``slurmd -C`` describes it (cores, sockets, memory), under
    this host's short name on the loopback address."""
    described = subprocess.run(
        [DAEMONS["slurmd"], "-C"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    return f"{described} NodeAddr=127.0.0.1 State=UNKNOWN"


def _memory_per_core(node_line: str) -> int:
    """The node's memory shared out by core, so each job asks for its share by default
    instead of the whole node (which would let only one job run)."""
    words = dict(word.partition("=")[::2] for word in node_line.split())
    return int(words["RealMemory"]) // int(words["CPUs"])


@dataclass
class SlurmCluster:
    """A running cluster: its folder, its config and the daemons' processes."""

    root: Path
    conf: Path
    node: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    partition: str = PARTITION

    def env(self) -> dict[str, str]:
        """The environment a client command needs to reach this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        """A client command (``sbatch``, ``scontrol``, ...) against this cluster, with
        ``env`` added to its environment (a job started by ``sbatch`` inherits it)."""
        return subprocess.run(
            argv, capture_output=True, text=True, env={**self.env(), **env}, check=check,
            timeout=60,
        )  # fmt: skip

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job``'s fields (``JobState``, ``Reason``, ...); empty once
        Slurm has forgotten the job."""
        shown = self.run("scontrol", "--oneliner", "show", "job", job_id, check=False)
        fields = {}
        for word in shown.stdout.split():
            key, _, value = word.partition("=")
            fields.setdefault(key, value)
        return fields

    def wait_state(self, job_id: str, *states: str, timeout: float = 120) -> dict[str, str]:
        """The job's fields once its state is one of ``states``; fails the test past
        ``timeout`` with the job's last fields and the daemons' logs' tails."""
        deadline = time.monotonic() + timeout
        fields: dict[str, str] = {}
        while time.monotonic() < deadline:
            fields = self.job(job_id)
            if fields.get("JobState") in states:
                return fields
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} never reached {states}: {fields}\n{self.logs()}")

    def logs(self) -> str:
        tails = []
        for name in ("slurmctld", "slurmd"):
            log = self.root / f"{name}.log"
            if log.exists():
                tails.append(f"--- {name}.log\n" + log.read_text()[-1500:])
        return "\n".join(tails)

    def stop(self) -> None:
        """Cancel what is still queued, then end the daemons this cluster started, by pid,
        the node first and munge last."""
        if self.processes.get("slurmctld") and self.processes["slurmctld"].poll() is None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.run("scancel", "--full", f"--partition={self.partition}", check=False)
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _write_conf(root: Path, munge_socket: Path) -> tuple[Path, str]:
    node_line = _node_line()
    node = node_line.split()[0].partition("=")[2]
    for name in ("state", "spool"):
        (root / name).mkdir()
    conf = root / "slurm.conf"
    user = getpass.getuser()
    lines = [
        "ClusterName=rnvptest",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        f"SlurmUser={user}",
        f"SlurmdUser={user}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # A requeued job waits cred_expire seconds before it may start again (120 by
        # default): short here, so a requeue test does not wait two minutes.
        f"AuthInfo=socket={munge_socket},cred_expire=10",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        f"DefMemPerCPU={_memory_per_core(node_line)}",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SchedulerType=sched/backfill",
        # A requeued job is eligible again 11 s after its requeue (Slurm's own delay), then
        # waits for a backfill pass to start it: every 30 s by default, every second here
        # (the test with two requeues went from 70 s to 54 s).
        "SchedulerParameters=bf_interval=1",
        "MpiDefault=none",
        "ReturnToService=2",
        # A finished job stays visible to scontrol for ten minutes.
        "MinJobAge=600",
        "KillWait=10",
        "InactiveLimit=0",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=30",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        node_line,
        f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]
    conf.write_text("\n".join(lines))
    return conf, node


def _start(name: str, argv: list[str], root: Path, env: dict[str, str]) -> subprocess.Popen:
    with (root / f"{name}.out").open("ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,
        )


def _wait(cluster: SlurmCluster, ready, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in cluster.processes.items():
            if process.poll() is not None:
                out = (cluster.root / f"{name}.out").read_text()[-800:]
                raise RuntimeError(f"{name} ended at once: {out}\n{cluster.logs()}")
        if ready():
            return
        time.sleep(0.2)
    raise RuntimeError(f"the cluster never became {what}:\n{cluster.logs()}")


def start_slurm(root: Path) -> SlurmCluster:
    """munged, slurmctld and slurmd in ``root``; returns once the node is idle."""
    root.mkdir(parents=True, exist_ok=True)
    munge = root / "munge"
    munge.mkdir(mode=0o700)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    sock = munge / "munge.socket"
    conf, node = _write_conf(root, sock)
    cluster = SlurmCluster(root, conf, node)
    env = cluster.env()
    try:
        cluster.processes["munged"] = _start(
            "munged",
            [
                DAEMONS["munged"], "--foreground", "--force", f"--socket={sock}",
                f"--key-file={key}", f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}",
            ],
            root,
            env,
        )  # fmt: skip
        _wait(cluster, sock.exists, "ready (munged's socket)")
        cluster.processes["slurmctld"] = _start(
            "slurmctld", [DAEMONS["slurmctld"], "-D", "-i", "-f", str(conf)], root, env
        )
        _wait(cluster, lambda: cluster.run("scontrol", "ping", check=False).returncode == 0,
              "ready (slurmctld answering)")  # fmt: skip
        cluster.processes["slurmd"] = _start(
            "slurmd", [DAEMONS["slurmd"], "-D", "-f", str(conf)], root, env
        )

        def idle() -> bool:
            shown = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout
            return shown.strip().rstrip("*") == "idle"

        _wait(cluster, idle, "ready (the node idle)")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def running_slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """The body of a fixture: a cluster until the fixture's scope ends; skips the tests
    without Slurm."""
    from sshd import running

    yield from running(slurm_missing, start_slurm, tmp_path_factory, "slurm")

"""Runs under Slurm: what a trainer started by a batch job learns from Slurm and asks of it.

A batch job sets ``SLURM_JOB_ID`` (and, once requeued, ``SLURM_RESTART_COUNT``). The
trainer follows Lightning's ``SLURMEnvironment(auto_requeue=True)`` and submitit: the sbatch
script asks for ``--signal=USR1@90``, and on that signal (or a preemption's SIGTERM) the
trainer saves ``latest.pt``, asks Slurm to requeue the job (``scontrol requeue``) and ends;
the requeued job resumes from ``latest.pt`` in the same folder. At most ``max_requeues``
times: the last allocation plans its schedule to the job's end instead (``--time-limit``
from ``squeue``'s time left), and ends as a time-limited run does.

Torch-free, and no Qt: the trainer, the agent on a host and the page share it.
"""

from __future__ import annotations

import datetime
import os
import re
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The trainer's own limit ends this long before the job's: the sbatch script's
# --signal=USR1@90 arrives 90 s before the end, and the last evaluation and save must be
# done before it.
END_MARGIN_S = 120.0
_DURATION = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$")


def parse_slurm_duration(text: str) -> float | None:
    """Seconds in Slurm's ``[DAYS-][HOURS:]MINUTES:SECONDS`` (``squeue %L``/``%l``,
    ``scontrol``'s ``TimeLimit``); ``None`` for ``UNLIMITED``, ``NOT_SET`` and the like.

    >>> parse_slurm_duration("1-02:03:04"), parse_slurm_duration("05:00")
    (93784.0, 300.0)
    >>> parse_slurm_duration("UNLIMITED") is None
    True
    """
    match = _DURATION.match(text.strip())
    if match is None:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


@dataclass(frozen=True)
class SlurmJob:
    """The batch job this process runs in."""

    job_id: str
    restarts: int  # how many times it was requeued before this allocation

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SlurmJob | None:
        """The job of ``environ`` (this process's environment), or ``None`` outside Slurm."""
        env = os.environ if environ is None else environ
        job_id = env.get("SLURM_JOB_ID", "").strip()
        if not job_id:
            return None
        try:
            restarts = int(env.get("SLURM_RESTART_COUNT") or 0)
        except ValueError:
            restarts = 0
        return cls(job_id, restarts)

    def seconds_left(self) -> float | None:
        """The job's time left (``squeue -h -j ID -o %L``), ``None`` where unlimited or
        not known."""
        shown = _slurm_command("squeue", "-h", "-j", self.job_id, "-o", "%L")
        return None if shown is None else parse_slurm_duration(shown)

    def time_limit(self) -> float | None:
        """The trainer's ``--time-limit`` for this allocation: the job's time left, less
        :data:`END_MARGIN_S` (half the time left where that is shorter)."""
        left = self.seconds_left()
        if left is None:
            return None
        return max(left - END_MARGIN_S, left / 2)

    def state(self) -> str | None:
        """The job's state as ``scontrol show job`` gives it (``RUNNING``, ``CANCELLED``,
        ...), ``None`` where Slurm does not answer."""
        return (show_job(self.job_id) or {}).get("JobState")

    def requeue(self) -> str | None:
        """Ask Slurm to requeue the job (it ends this allocation's processes and queues the
        job again, with its own id); ``None`` once done, else Slurm's reason in a sentence."""
        try:
            done = subprocess.run(
                ["scontrol", "requeue", self.job_id],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return f"scontrol requeue {self.job_id} failed: {exc}"
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            return f"Slurm did not requeue job {self.job_id}: {said[-1] if said else 'no reason'}"
        return None


def show_job(job_id: str) -> dict[str, str] | None:
    """``scontrol --oneliner show job ID``'s fields (``JobState``, ``Reason``, ``NodeList``,
    ``RunTime``, ``TimeLimit``, ``Restarts``, ``StartTime``...); ``None`` where Slurm does
    not answer or no longer knows the job (past ``MinJobAge``; there is no ``sacct``
    without a slurmdbd)."""
    shown = _slurm_command("scontrol", "--oneliner", "show", "job", job_id)
    fields: dict[str, str] = {}
    for word in (shown or "").split():
        key, sep, value = word.partition("=")
        if sep:
            fields.setdefault(key, value)
    return fields if fields.get("JobState") else None


# A job in one of these states may still run the trainer (now or once requeued).
ACTIVE_STATES = frozenset(
    {
        "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
        "REQUEUE_FED", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "SPECIAL_EXIT",
    }
)  # fmt: skip
# A job in one of these states runs no trainer yet: in the queue, or between allocations.
WAITING_STATES = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT"}
)
# What a job that ended without the trainer's last word ended by, in a person's words.
ENDED_BY = {
    "TIMEOUT": "it ran into its time limit",
    "CANCELLED": "it was cancelled (scancel)",
    "PREEMPTED": "it was preempted",
    "NODE_FAIL": "its node failed",
    "OUT_OF_MEMORY": "it ran out of memory",
    "BOOT_FAIL": "its node did not boot",
    "DEADLINE": "it passed its deadline",
    "FAILED": "it failed",
}


def queue_place(job_id: str, partition: str | None) -> tuple[int | None, str | None]:
    """A pending job's place among the pending jobs of its partition, in the order Slurm
    will start them (priority first, then submission: ``squeue -t PD --sort=-p,i``; 1 is
    next), and its expected start where Slurm has planned one (``squeue --start``'s ``%S``,
    not ``N/A``); ``None`` for what is not known."""
    where = ["-p", partition] if partition else []
    queue = _slurm_command("squeue", "-h", "-t", "PD", *where, "-o", "%i", "--sort=-p,i")
    ids = (queue or "").split()
    position = ids.index(job_id) + 1 if job_id in ids else None
    start = _slurm_command("squeue", "--start", "-h", "-j", job_id, "-o", "%S")
    start = (start or "").strip()
    return position, start if start and start not in _UNKNOWN else None


_UNKNOWN = (None, "", "(null)", "None", "Unknown", "N/A")


def ordinal(n: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``4th``, ``11th``, ``22nd``.

    >>> [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 102, 111)]
    ['1st', '2nd', '3rd', '4th', '11th', '12th', '13th', '21st', '102nd', '111th']
    """
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def clock_words(when: str, today: str | None = None) -> str:
    """Slurm's ``2026-12-06T14:05:00`` as a person reads it: ``14:05`` on the cluster's
    ``today`` (``YYYY-MM-DD``; by default this machine's), else ``2026-12-07 14:05``.

    >>> clock_words("2026-12-06T14:05:00", "2026-12-06")
    '14:05'
    >>> clock_words("2026-12-07T09:30:10", "2026-12-06")
    '2026-12-07 09:30'
    """
    day, sep, time_of_day = when.partition("T")
    if not sep:
        return when
    today = today or datetime.date.today().isoformat()
    hours_minutes = time_of_day[:5]
    return hours_minutes if day == today else f"{day} {hours_minutes}"


def queue_words(scheduler: Mapping[str, object]) -> str | None:
    """A job that runs no trainer yet, in a person's words: ``waiting in the queue
    (Resources), 3rd, expected to start 14:05``; ``None`` for a job that is not waiting."""
    state = scheduler.get("state")
    if state not in WAITING_STATES:
        return None
    words = [f"waiting in the queue ({scheduler.get('reason') or str(state).lower()})"]
    position = scheduler.get("position")
    if isinstance(position, int):
        words.append(ordinal(position))
    if scheduler.get("expected_start"):
        words.append(f"expected to start {clock_words(str(scheduler['expected_start']))}")
    return ", ".join(words)


def job_status(
    job_id: str,
    fields: Mapping[str, str] | None,
    place: tuple[int | None, str | None] = (None, None),
) -> dict[str, object]:
    """The ``scheduler`` fields of a run's status: Slurm's state (PENDING with its reason,
    its ``position`` in its partition's queue and, where Slurm has planned it, the
    ``expected_start``: ``place``, from :func:`queue_place`), node list, elapsed time and
    limit, restarts; ``state`` is ``None`` where Slurm no longer knows the job."""
    fields = fields or {}

    def known(key: str) -> str | None:
        value = fields.get(key)
        return None if value in _UNKNOWN else value

    state = known("JobState")
    pending = state == "PENDING"
    return {
        "kind": "slurm",
        "job_id": job_id,
        "state": state,
        "reason": known("Reason"),
        "position": place[0] if pending else None,
        "expected_start": place[1] if pending else None,
        "nodes": known("NodeList"),
        "elapsed": known("RunTime"),
        "limit": known("TimeLimit"),
        "restarts": int(fields.get("Restarts") or 0),
        "partition": known("Partition"),
        "active": state in ACTIVE_STATES if state else None,
    }


def job_words(job: Mapping[str, Any]) -> str:
    """A Slurm run's job (its ``scheduler`` fields) in a status line: ``Slurm job 12
    PENDING: waiting in the queue (Resources), 2nd``, ``Slurm job 12 RUNNING on node1,
    00:01:10 of 1-00:00:00``."""
    state = job.get("state") or "no longer known to Slurm"
    words = [f"Slurm job {job['job_id']} {state}"]
    waiting = queue_words(job)
    if waiting:
        words.append(f": {waiting}")
    if job.get("nodes") and state != "PENDING":
        words.append(f" on {job['nodes']}")
    if job.get("elapsed") and job.get("limit") and state != "PENDING":
        words.append(f", {job['elapsed']} of {job['limit']}")
    if job.get("restarts"):
        words.append(f", requeued {job['restarts']}x")
    return "".join(words)


def queue_sentence(job: Mapping[str, Any]) -> str | None:
    """What a job that runs no trainer yet waits for, for the page and its status bar:
    "Waiting in the Slurm queue (Resources), job 12"; ``None`` for a job past the queue."""
    state, job_id = job.get("state"), job.get("job_id")
    if state not in WAITING_STATES:
        return None
    reason = f" ({job['reason']})" if job.get("reason") and job["reason"] != "None" else ""
    position = job.get("position")
    place = f", {ordinal(position)} in line" if isinstance(position, int) else ""
    start = job.get("expected_start")
    start = f", expected to start {clock_words(str(start))}" if start else ""
    if state == "CONFIGURING":
        return f"Slurm job {job_id} is starting on {job.get('nodes') or 'its node'}"
    head = (
        "Waiting in the Slurm queue"
        if state == "PENDING"
        else "Requeued, waiting in the Slurm queue"
    )
    return f"{head}{reason}, job {job_id}{place}{start}"


def launch_job_id(launch: Mapping[str, object]) -> str | None:
    """The Slurm job of a run submitted with the agent's ``submit`` (``launch.json``'s
    ``scheduler``), else ``None``."""
    scheduler = launch.get("scheduler")
    if isinstance(scheduler, dict) and scheduler.get("kind") == "slurm":
        return str(scheduler.get("job_id") or "") or None
    return None


def job_holding(out: Path, launch: Mapping[str, object]) -> str | None:
    """Why no other run may start in the run folder ``out`` now, as one sentence: the
    batch job its ``launch.json`` names is still queued or running there (Slurm's own
    state and working directory say so, so a fetched copy of the folder is free); ``None``
    when it is not, or when this process is that job's trainer."""
    job_id = launch_job_id(launch)
    if job_id is None or job_id == os.environ.get("SLURM_JOB_ID", "").strip():
        return None
    # Also asked by the training form as a folder is typed: a controller that does not
    # answer holds it 5 s at most, and the folder then counts as free (sbatch refuses later).
    shown = _slurm_command("squeue", "-h", "-j", job_id, "-o", "%T %Z", timeout=5)
    state, _, workdir = (shown or "").partition(" ")
    if state not in ACTIVE_STATES:
        return None
    try:
        if not os.path.samefile(workdir, out):
            return None
    except OSError:
        return None
    doing = "still waiting in the queue" if state in WAITING_STATES else f"{state.lower()} there"
    return (
        f"{out} belongs to Slurm job {job_id}, {doing}; wait for it to end, stop it "
        f"(realnvp remote HOST stop) or cancel it (scancel {job_id}), or choose another "
        "output folder"
    )


class SubmitError(Exception):
    """``sbatch`` refused the job or could not run: one sentence."""


def submit(script: Path, out: Path, where: str) -> str:
    """Submit ``script`` with the run folder ``out`` as the job's working directory:
    ``sbatch --parsable --chdir OUT SCRIPT``, an argv (no shell reads the folder's name).
    Returns the job id; :class:`SubmitError` carries sbatch's refusal reworded."""
    argv = ["sbatch", "--parsable", "--chdir", str(out), str(script)]
    done = run_client(argv, where, SubmitError, "run --slurm on a Slurm cluster's login node")
    if done.returncode != 0:
        raise SubmitError(sbatch_refusal(done.stderr or done.stdout, where))
    job_id = done.stdout.strip().splitlines()[-1].split(";")[0] if done.stdout.strip() else ""
    if not job_id.isdigit():
        raise SubmitError(f"sbatch on {where} answered with no job id: {done.stdout.strip()!r}")
    return job_id


_REFUSALS = (
    ("invalid partition", "has no such partition (--partition)"),
    ("invalid account", "refused the account (--account): it does not exist, or may not "
     "use this partition"),
    ("invalid qos", "refused the QOS (--qos)"),
    ("time limit", "refused the time limit (--time): it is over the partition's"),
    ("requested node configuration is not available",
     "has no node with what the job asks for (--gpus, --nodes, --sbatch-option)"),
)  # fmt: skip


def run_client(
    argv: list[str], where: str, error: type[Exception], missing: str, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run one of Slurm's commands here (an argv: no shell reads it); ``error`` with one
    sentence where it is not installed (``missing`` says what to do) or cannot run."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)  # fmt: skip
    except FileNotFoundError:
        raise error(
            f"there is no {argv[0]} on {where}: {missing} (Slurm's commands must be on the "
            "PATH of a non-interactive ssh session)"
        ) from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise error(f"{argv[0]} on {where} could not run: {exc}") from None


def sbatch_refusal(said: str, where: str) -> str:
    """sbatch's error as one sentence: ``sbatch: error: Batch job submission failed:
    Invalid partition name specified`` becomes "Slurm on HOST has no such partition
    (--partition): invalid partition name specified"."""
    lines = [line.strip() for line in said.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "no reason given"
    for prefix in ("sbatch: error:", "Batch job submission failed:"):
        last = last.split(prefix, 1)[-1].strip()
    reason = last[:1].lower() + last[1:]
    for key, meaning in _REFUSALS:
        if key in reason.lower():
            return f"Slurm on {where} {meaning}: {reason}"
    return f"Slurm on {where} refused the job: {reason}"


def _slurm_command(*argv: str, timeout: float = 60) -> str | None:
    """The output of a Slurm client command, ``None`` where it fails or takes more than
    ``timeout`` seconds."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


SCRIPT_NAME = "slurm.sbatch"
OUTPUT_PATTERN = "slurm-%j.out"  # Slurm's output, in the run folder (the job's working dir)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class SlurmRequest:
    """What the job asks of the cluster (the options of the Slurm launcher);
    ``None``: the cluster's default. ``gpus`` is per node; ``extra`` are more ``sbatch``
    options, one word each (``--constraint=a100``)."""

    partition: str | None = None
    gpus: int | None = None
    nodes: int = 1
    time: str | None = None
    account: str | None = None
    qos: str | None = None
    extra: tuple[str, ...] = ()
    job_name: str = "realnvp"

    @property
    def processes(self) -> int:
        return max(self.nodes, 1) * max(self.gpus or 1, 1)

    def cli_words(self) -> list[str]:
        """``--slurm`` and this request as ``realnvp remote HOST train`` takes them; the
        command line parses them back into this request (:func:`core.cli.slurm_request`)."""
        words = ["--slurm"]
        for flag, value in (
            ("--partition", self.partition),
            ("--gpus", self.gpus),
            ("--nodes", self.nodes if self.nodes != 1 else None),
            ("--time", self.time),
            ("--account", self.account),
            ("--qos", self.qos),
        ):
            if value:
                words += [flag, str(value)]
        return words + [f"--sbatch-option={option}" for option in self.extra]

    def problem(self) -> str | None:
        """What makes this request unusable, as one sentence, or ``None``."""
        words = [self.partition, self.time, self.account, self.qos, *self.extra]
        if any(w is not None and ("\n" in w or "\r" in w) for w in words):
            return "an sbatch option cannot hold a line break"
        if self.time is not None and parse_slurm_duration(self.time) is None:
            return f"--time {self.time!r}: give it as HH:MM:SS, MM:SS or DAYS-HH:MM:SS"
        if self.nodes < 1 or (self.gpus is not None and self.gpus < 0):
            return "--nodes must be 1 or more and --gpus 0 or more"
        return None


def sbatch_script(python: str, train_args: list[str], resume_args: list[str],
                  request: SlurmRequest) -> str:  # fmt: skip
    """The batch script of a run, kept in the run folder as :data:`SCRIPT_NAME` and
    submitted from there (``sbatch --chdir RUN``; by hand: ``cd RUN && sbatch slurm.sbatch``).

    The run folder is the job's working directory, so its name never appears in the
    script: whatever it holds (spaces, quotes, ``$(...)``), no shell reads it as code. The
    trainer runs under ``srun``: a fresh run with ``train_args``, a requeued one (a
    ``latest.pt`` in the folder) with ``--resume latest.pt`` and ``resume_args``. Several
    processes run under ``torchrun``, one per node, rendezvous at the job's first node.
    """
    quote = _shell_words
    lines = [
        "#!/bin/bash",
        "# A Real NVP training run on Slurm, written by core/runs/slurm.py.",
        "# To submit it again by hand: cd into this folder, then sbatch slurm.sbatch",
        f"#SBATCH --job-name={_SAFE_NAME.sub('-', request.job_name)[:64] or 'realnvp'}",
        f"#SBATCH --output={OUTPUT_PATTERN}",
        # 90 s before the time limit the trainer is told (SIGUSR1): it saves latest.pt and
        # requeues the job, which resumes from it (core/runs/slurm.py).
        "#SBATCH --signal=USR1@90",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --nodes={max(request.nodes, 1)}",
        "#SBATCH --ntasks-per-node=1",
    ]
    for flag, value in (
        ("--partition", request.partition),
        ("--time", request.time),
        ("--account", request.account),
        ("--qos", request.qos),
    ):
        if value:
            lines.append(f"#SBATCH {flag}={value}")
    if request.gpus:
        lines.append(f"#SBATCH --gpus-per-node={request.gpus}")
    lines += [f"#SBATCH {option}" for option in request.extra]
    lines += [
        "",
        "set -euo pipefail",
        "# This job's working directory is the run folder.",
        f"fresh=({quote(train_args)})",
        f"resumed=(--resume latest.pt {quote(resume_args)})",
        'if [ -f latest.pt ]; then args=("${resumed[@]}"); else args=("${fresh[@]}"); fi',
    ]
    train = [python, "-m", "core", "train", "--progress", "none"]
    if request.processes == 1:
        lines.append(f'srun --kill-on-bad-exit=1 {quote(train)} --out "$PWD" "${{args[@]}}"')
    else:
        # torchrun would die of the SIGUSR1 meant for the trainers: it ignores it (an
        # ignored signal stays ignored across exec), and each trainer installs its own.
        launch = [
            python, "-m", "torch.distributed.run", f"--nnodes={max(request.nodes, 1)}",
            f"--nproc-per-node={max(request.gpus or 1, 1)}", "--rdzv-backend=c10d",
        ]  # fmt: skip
        lines += [
            'first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
            'srun --kill-on-bad-exit=1 bash -c \'trap "" USR1; exec "$@"\' torchrun '
            f'{quote(launch)} --rdzv-id="$SLURM_JOB_ID" --rdzv-endpoint="$first:29500" '
            f'{quote(train[1:])} --out "$PWD" "${{args[@]}}"',
        ]
    return "\n".join(lines) + "\n"


def _shell_words(words: list[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)

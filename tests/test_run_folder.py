"""A run folder belongs to one run: the lock, refusals, take-over, overwrite, resume, state."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.runs.folder import (
    EVENTS_FILE,
    LOCK_FILE,
    LockInfo,
    RunFolderError,
    check_run_folder,
    claim_run_folder,
    read_lock,
    run_state,
)

ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = [
    "--num-scales",
    "2",
    "--mid-channels",
    "4",
    "--num-blocks",
    "1",
    "--batch-size",
    "8",
    "--eval-limit",
    "8",
    "--threads",
    "1",
    "--precision",
    "float32",
]


def _train(data: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "core", "train", "--data-dir", str(data), *TINY_ARGS, *args]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, **kwargs)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(out: Path, **fields) -> None:
    out.mkdir(parents=True, exist_ok=True)
    info = dict(pid=1, host=socket.gethostname(), started=time.time(), command="realnvp train")
    info.update(fields)
    (out / LOCK_FILE).write_text(json.dumps(info))


def _write_events(out: Path, *events: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / EVENTS_FILE).open("a") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")


START = {"event": "start", "step": 0, "total_steps": 400}
STEP = {"event": "step", "step": 10, "loss": 3.0}
EVAL = {"event": "eval", "step": 400, "test_bpd": 1.764}


# -- the lock ---------------------------------------------------------------------------------


def test_a_claim_writes_the_lock_and_releases_it(tmp_path):
    out = tmp_path / "a" / "run"
    with claim_run_folder(out, command="realnvp train --out a/run") as lock:
        info = read_lock(out)
        assert info is not None and info.pid == lock.info.pid and info.host == socket.gethostname()
        assert info.command == "realnvp train --out a/run" and info.alive()
        assert run_state(out).state == "running"
    assert not (out / LOCK_FILE).exists()
    assert run_state(out).state == "none"


def test_a_live_holder_is_refused_by_name(tmp_path):
    out = tmp_path / "run"
    with claim_run_folder(out, command="first trainer"):
        with pytest.raises(RunFolderError) as err:
            claim_run_folder(out, resume=True)
        message = str(err.value)
        assert "in use by another run" in message and "first trainer" in message
        assert f"process {read_lock(out).pid} on {socket.gethostname()}" in message
    assert "\n" not in message


def test_a_lock_of_another_host_is_never_taken(tmp_path):
    out = tmp_path / "run"
    _write_lock(out, host="gpu-box-7", pid=_dead_pid())
    with pytest.raises(RunFolderError, match=r"in use by a run on gpu-box-7.*remove .*run.lock"):
        claim_run_folder(out)
    assert run_state(out).state == "running"


def test_a_stale_lock_is_taken_over_and_that_is_said(tmp_path):
    out = tmp_path / "run"
    pid = _dead_pid()
    _write_lock(out, pid=pid, command="killed trainer")
    assert run_state(out).state == "none" and run_state(out).holder.pid == pid
    with claim_run_folder(out) as lock:
        assert read_lock(out).token == lock.info.token
        assert any(f"process {pid}" in w and "no longer running" in w for w in lock.warnings)


def test_a_reused_pid_does_not_look_like_the_holder(tmp_path):
    import os

    out = tmp_path / "run"
    # Our own pid, recorded with another start time: the process that wrote it is gone.
    _write_lock(out, pid=os.getpid(), pid_start=1)
    info = read_lock(out)
    if LockInfo.for_this_process().pid_start is None:
        pytest.skip("no /proc start times here")
    assert info.alive() is False
    with claim_run_folder(out) as lock:
        assert lock.warnings


def test_a_file_is_not_a_run_folder(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"png")
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        claim_run_folder(path)
    with pytest.raises(RunFolderError, match="part of the path is a file"):
        claim_run_folder(path / "run")
    assert path.read_bytes() == b"png"


# -- earlier runs -----------------------------------------------------------------------------


def test_a_folder_with_an_earlier_run_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    _write_events(out, START, STEP, EVAL, {"event": "done", "step": 400, "reason": "finished"})
    (out / "latest.pt").write_bytes(b"weights")
    with pytest.raises(RunFolderError) as err:
        claim_run_folder(out)
    assert str(err.value).startswith(
        f"{out} already holds a finished run (step 400 of 400, test 1.7640 bits/dim at step 400)"
    )
    assert "--resume" in str(err.value) and "--overwrite" in str(err.value)
    with pytest.raises(RunFolderError, match="contradict"):
        claim_run_folder(out, resume=True, overwrite=True)
    claim_run_folder(out, resume=True).release()
    assert (out / "latest.pt").read_bytes() == b"weights"


def test_overwrite_keeps_the_earlier_run_under_a_dated_name(tmp_path):
    out = tmp_path / "run"
    _write_events(out, START, STEP, {"event": "done", "step": 10, "reason": "stopped"})
    (out / "trainer.log").write_text("old log\n")
    (out / "latest.pt").write_bytes(b"latest")
    (out / "best.pt").write_bytes(b"best")
    (out / "samples").mkdir()
    (out / "samples" / "s.png").write_bytes(b"png")
    (out / "notes.txt").write_text("mine")
    old_events = (out / EVENTS_FILE).read_bytes()
    with claim_run_folder(out, overwrite=True) as lock:
        previous = lock.previous
        assert previous is not None and previous.parent == out
        assert previous.name.startswith("previous-") and len(previous.name) == len(
            "previous-20261205-071500"
        )
        assert any(str(previous) in w for w in lock.warnings)
    assert (previous / "latest.pt").read_bytes() == b"latest"
    assert (previous / "best.pt").read_bytes() == b"best"
    assert (previous / "samples" / "s.png").read_bytes() == b"png"
    assert (previous / EVENTS_FILE).read_bytes() == old_events
    assert (previous / "trainer.log").read_text() == "old log\n"
    # Emptied in place (a launcher may hold them open), the user's own file untouched.
    assert (out / EVENTS_FILE).read_bytes() == b"" and (out / "trainer.log").read_bytes() == b""
    assert not (out / "latest.pt").exists() and (out / "notes.txt").read_text() == "mine"
    assert run_state(out).state == "none"


@pytest.mark.parametrize(
    "events, checkpoint, state",
    [
        ([], False, "none"),
        ([START, {"event": "error", "message": "no such folder"}], False, "none"),
        ([START, STEP, {"event": "error", "message": "disk full"}], True, "failed"),
        ([START, STEP], True, "failed"),  # killed: no done, nobody holds the lock
        ([START, STEP, {"event": "done", "step": 10, "reason": "stopped"}], True, "stopped"),
        ([START, STEP, EVAL, {"event": "done", "step": 400, "reason": "finished"}], True, "done"),
        ([], True, "stopped"),  # checkpoints without an event log
    ],
    ids=["empty", "failed-before-training", "failed", "killed", "stopped", "done", "no-events"],
)
def test_run_state(tmp_path, events, checkpoint, state):
    out = tmp_path / "run"
    out.mkdir()
    _write_events(out, *events)
    if checkpoint:
        (out / "latest.pt").write_bytes(b"x")
    found = run_state(out)
    assert found.state == state
    if state == "failed" and events[-1]["event"] == "error":
        assert found.message == "disk full"
    if state == "done":
        assert (found.step, found.max_steps, found.test_bpd, found.test_step) == (
            400,
            400,
            1.764,
            400,
        )
        assert json.loads(json.dumps(found.to_dict()))["state"] == "done"
    if state == "none":
        check_run_folder(out)  # free for a new run


# -- the trainer ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_train_into_a_finished_run_is_refused_and_overwrite_keeps_it(
    tmp_path, small_mnist
):
    out = tmp_path / "run"
    first = _train(small_mnist, "--out", str(out), "--max-steps", "2", "--progress", "none")
    assert first.returncode == 0, first.stderr
    saved = {n: (out / n).read_bytes() for n in ("latest.pt", "best.pt")}

    second = _train(small_mnist, "--out", str(out), "--max-steps", "1")
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "already holds a finished run (step 2 of 2" in lines[0], lines
    assert {n: (out / n).read_bytes() for n in saved} == saved

    third = _train(small_mnist, "--out", str(out), "--max-steps", "1", "--overwrite")
    assert third.returncode == 0, third.stderr
    assert "warning: the earlier run in" in third.stderr
    (previous,) = out.glob("previous-*")
    assert {n: (previous / n).read_bytes() for n in saved} == saved
    assert run_state(out).state == "done" and run_state(out).step == 1
    assert not (out / LOCK_FILE).exists()


def _train_until(data: Path, event: str, *args: str) -> subprocess.Popen:
    """A trainer started with ``--progress json``, returned once it has said ``event``."""
    argv = [sys.executable, "-m", "core", "train", "--data-dir", str(data), *TINY_ARGS, *args]
    proc = subprocess.Popen(
        [*argv, "--progress", "json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in proc.stdout:
        if json.loads(line)["event"] == event:
            break
    return proc


@pytest.mark.slow
def test_two_concurrent_trainers_the_second_is_refused_naming_the_first(tmp_path, small_mnist):
    out = tmp_path / "run"
    first = _train_until(small_mnist, "step", "--out", str(out), "--max-steps", "100000")
    try:
        second = _train(small_mnist, "--out", str(out), "--max-steps", "2", "--overwrite")
        assert second.returncode == 2
        assert f"in use by another run: process {first.pid} on" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        assert run_state(out).state == "running"
        (out / "STOP").touch()
        assert first.wait(timeout=120) == 0
    finally:
        first.kill()
        first.wait()
    assert run_state(out).state == "stopped" and not (out / LOCK_FILE).exists()


@pytest.mark.slow
def test_a_killed_run_is_taken_over_and_resume_continues_it(tmp_path, small_mnist):
    out = tmp_path / "run"
    args = ("--out", str(out), "--max-steps", "9", "--eval-every", "2", "--log-every", "1")
    first = _train_until(small_mnist, "checkpoint", *args)
    first.kill()
    first.wait()
    assert (out / LOCK_FILE).exists() and run_state(out).state == "failed"
    refused = _train(small_mnist, "--out", str(out), "--max-steps", "9")
    assert refused.returncode == 2 and "already holds a failed run" in refused.stderr
    # No --out, no --max-steps: the run's own folder and length.
    resumed = _train(small_mnist, "--resume", str(out / "latest.pt"), "--progress", "bar")
    assert resumed.returncode == 0, resumed.stderr
    assert f"took over {out} from process {first.pid}" in resumed.stderr
    state = run_state(out)
    assert state.state == "done" and state.step == 9 and state.max_steps == 9

"""``realnvp remote HOST train --slurm``: runs submitted to a real single-node Slurm cluster
(tests/slurm.py) from the command line, through the loopback sshd (tests/sshd.py).

sshd passes no environment: the host's Python is a wrapper that names the test cluster
(``SLURM_CONF``) and this checkout, and the batch jobs inherit both from ``sbatch``."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import wait_for
from sshd import ROOT, running_sshd
from test_remote import NASTY, cli
from test_slurm import TINY, events

from core.runs.agent import _without
from core.runs.folder import RunFolderError, check_run_folder
from core.runs.host import sha256_file
from core.runs.slurm import SCRIPT_NAME, job_status, queue_words, sbatch_refusal

# -- without a cluster ----------------------------------------------------------------------


def test_sbatch_refusals_are_one_sentence_naming_the_option():
    said = "sbatch: error: Batch job submission failed: Invalid partition name specified\n"
    assert sbatch_refusal(said, "login1") == (
        "Slurm on login1 has no such partition (--partition): invalid partition name specified"
    )
    said = (
        "sbatch: error: Batch job submission failed: Invalid account or account/partition "
        "combination specified"
    )
    sentence = sbatch_refusal(said, "login1")
    assert sentence.startswith("Slurm on login1 refused the account (--account)")
    assert "\n" not in sentence
    assert sbatch_refusal("sbatch: error: something new\n", "h") == (
        "Slurm on h refused the job: something new"
    )


def test_a_requeued_job_leaves_out_what_only_the_first_start_means():
    words = ["--resume", "/r/a.pt", "--overwrite", "--init-from=/x.pt", "--max-steps", "9"]
    assert _without(words, {"--resume": 1, "--init-from": 1, "--overwrite": 0}) == [
        "--max-steps",
        "9",
    ]


def test_the_scheduler_fields_are_slurms_with_nothing_made_up():
    pending = {"JobState": "PENDING", "Reason": "Resources", "NodeList": "(null)",
               "RunTime": "00:00:00", "TimeLimit": "UNLIMITED", "Restarts": "0",
               "StartTime": "Unknown", "Partition": "debug"}  # fmt: skip
    status = job_status("12", pending)
    assert status["state"] == "PENDING" and status["reason"] == "Resources"
    assert status["nodes"] is None and status["expected_start"] is None
    assert status["active"] is True and status["limit"] == "UNLIMITED"
    assert job_status("12", None)["state"] is None  # forgotten by Slurm
    placed = job_status("12", pending, (3, "2026-12-06T14:05:00"))
    assert (placed["position"], placed["expected_start"]) == (3, "2026-12-06T14:05:00")
    # A job that left the queue has no place in it, whatever was asked before.
    running = job_status("12", {**pending, "JobState": "RUNNING"}, (3, "2026-12-06T14:05:00"))
    assert (running["position"], running["expected_start"]) == (None, None)


def test_a_waiting_job_is_said_with_its_reason_place_and_start():
    today = datetime.date.today().isoformat()
    job = {"state": "PENDING", "reason": "Resources", "position": 3,
           "expected_start": f"{today}T14:05:00"}  # fmt: skip
    assert queue_words(job) == "waiting in the queue (Resources), 3rd, expected to start 14:05"
    assert queue_words({**job, "position": None, "expected_start": None}) == (
        "waiting in the queue (Resources)"
    )
    assert queue_words({"state": "REQUEUED", "reason": None}) == "waiting in the queue (requeued)"
    assert queue_words({**job, "state": "RUNNING"}) is None


# -- against the cluster, over ssh ----------------------------------------------------------


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    yield from running_sshd(tmp_path_factory)


def host_python(folder: Path, name: str, **env: str) -> str:
    """A host Python that sees this checkout and ``env`` (sshd passes none)."""
    exports = "".join(f'export {k}="{v}"\n' for k, v in env.items())
    path = folder / name
    path.write_text(
        f'#!/bin/sh\nexport PYTHONPATH="{ROOT}"\n{exports}exec "{sys.executable}" "$@"\n'
    )
    path.chmod(0o755)
    return str(path)


@pytest.fixture(scope="module")
def login(sshd, slurm_cluster, tmp_path_factory):
    """The loopback sshd as the cluster's login node: ``(python, runs folder)``."""
    folder = tmp_path_factory.mktemp("login")
    return host_python(folder, "python", SLURM_CONF=str(slurm_cluster.conf)), folder / "runs"


def remote(sshd, login, capsys, action: str, *rest: str) -> tuple[int, str, str]:
    python, runs = login
    where = ["--python", python, "--runs-dir", str(runs)]
    return cli(capsys, "remote", "--ssh-config", str(sshd.config), sshd.alias, action, *where,
               *rest)  # fmt: skip


def job_of(out: str | Path) -> str:
    return json.loads((Path(out) / "launch.json").read_text())["scheduler"]["job_id"]


def status_json(sshd, login, capsys, out: str) -> dict:
    code, text, err = remote(sshd, login, capsys, "status", out, "--json")
    assert code == 0, err
    return json.loads(text)


def submit(sshd, login, capsys, small_mnist, *more: str) -> str:
    args = [*TINY, "--data-dir", str(small_mnist), "--eval-every", "1000"]
    code, text, err = remote(sshd, login, capsys, "train", "--slurm", "--partition", "debug",
                             *args, *more)  # fmt: skip
    assert code == 0, err
    assert "submitted to Slurm" in err and "as job" in err
    return text.splitlines()[-1]  # the run folder, printed last


def hold_the_node(cluster, tmp_path: Path, *options: str) -> str:
    """A job that holds the whole node (``sleep 600``), running once this returns; its id."""
    holder = cluster.run(
        "sbatch", "--parsable", "--exclusive", *options, f"--output={tmp_path / 'holder.out'}",
        "--wrap", "sleep 600",
    ).stdout.strip()  # fmt: skip
    cluster.wait_state(holder, "RUNNING")
    return holder


@pytest.mark.slow
def test_a_slurm_run_requeues_completes_and_is_fetched_bit_for_bit(
    sshd, login, slurm_cluster, small_mnist, capsys, tmp_path
):
    # The run folder's name is one no shell may run: the script never holds it, and
    # sbatch gets it as one word of an argv.
    out = submit(sshd, login, capsys, small_mnist, "--max-steps", "60", "--out", NASTY)
    run = login[1] / NASTY
    assert out == str(run)
    job_id = job_of(run)
    script = (run / SCRIPT_NAME).read_text()
    assert NASTY not in script and "#SBATCH --partition=debug" in script
    assert "#SBATCH --signal=USR1@90" in script and "--requeue" in script
    wait_for(lambda: events(run, "step"), 120, "a first step")
    # The end of an allocation, not of the run: follow goes on through the requeue.
    slurm_cluster.run("scancel", "--signal=USR1", job_id)
    code, _, err = remote(sshd, login, capsys, "follow", out)
    assert code == 0, err
    assert len(events(run, "requeue")) == 1
    assert [e["step"] for e in events(run, "step")] == list(range(1, 61))
    # The follow ends at the trainer's done; the job ends as its processes exit.
    slurm_cluster.wait_state(job_id, "COMPLETED", "FAILED", "CANCELLED")
    status = status_json(sshd, login, capsys, out)
    assert (status["state"], status["step"]) == ("done", 60)
    job = status["scheduler"]
    assert (job["job_id"], job["state"], job["restarts"]) == (job_id, "COMPLETED", 1)
    assert job["nodes"] == slurm_cluster.node and job["partition"] == "debug"
    for where in (run, login[1], Path.home(), Path.cwd()):
        assert not (where / "x").exists(), where  # $(touch x) never ran
    code, _, err = remote(sshd, login, capsys, "fetch", out, "--to", str(tmp_path / "f"))
    assert code == 0, err
    for name in ("latest.pt", "events.jsonl", SCRIPT_NAME, "launch.json", f"slurm-{job_id}.out"):
        assert sha256_file(tmp_path / "f" / name) == sha256_file(run / name), name


@pytest.mark.slow
def test_a_job_behind_one_that_holds_the_node_is_pending_and_kill_keeps_its_checkpoint(
    sshd, login, slurm_cluster, small_mnist, capsys, tmp_path
):
    holder = hold_the_node(slurm_cluster, tmp_path)
    try:
        out = submit(sshd, login, capsys, small_mnist, "--max-steps", "2000")
        job = wait_for(
            lambda: (s := status_json(sshd, login, capsys, out)["scheduler"])["reason"] and s,
            60, "a reason",
        )  # fmt: skip
        status = status_json(sshd, login, capsys, out)
        assert status["state"] == "running" and status["step"] == 0
        assert (job["state"], job["reason"], job["nodes"]) == ("PENDING", "Resources", None)
        code, text, _ = remote(sshd, login, capsys, "status", out)
        assert code == 0 and f"Slurm job {job['job_id']} PENDING: waiting in the queue" in text
        # A stop of a job still in the queue takes it out: no trainer would read STOP.
        queued = submit(sshd, login, capsys, small_mnist, "--max-steps", "2000")
        code, _, err = remote(sshd, login, capsys, "stop", queued)
        assert code == 0, err
        slurm_cluster.wait_state(job_of(queued), "CANCELLED")
        status = status_json(sshd, login, capsys, queued)
        assert (status["state"], status["scheduler"]["state"]) == ("stopped", "CANCELLED")
        assert events(Path(queued)) == []
        # A kill of a job still in the queue is scancel too. Nothing ran and nothing is
        # lost: it reads stopped, as after a stop, not "failed: killed".
        queued = submit(sshd, login, capsys, small_mnist, "--max-steps", "2000")
        code, _, err = remote(sshd, login, capsys, "kill", queued)
        assert code == 0, err
        slurm_cluster.wait_state(job_of(queued), "CANCELLED")
        status = status_json(sshd, login, capsys, queued)
        assert (status["state"], status["message"]) == ("stopped", ""), status
        assert status["scheduler"]["state"] == "CANCELLED" and events(Path(queued)) == []
    finally:
        slurm_cluster.run("scancel", holder)
    run = Path(out)
    wait_for(lambda: events(run, "step"), 120, "a first step")
    code, _, err = remote(sshd, login, capsys, "kill", out)
    assert code == 0, err
    slurm_cluster.wait_state(job_of(run), "CANCELLED", "COMPLETED", "FAILED")
    wait_for(lambda: events(run, "done"), 60, "done")
    status = status_json(sshd, login, capsys, out)
    assert status["scheduler"]["state"] == "CANCELLED", status
    assert status["state"] == "stopped" and (run / "latest.pt").is_file()
    code, _, err = remote(sshd, login, capsys, "kill", out)
    assert code == 1 and "is not running" in err


def follow_process(sshd, login, out: str) -> tuple[subprocess.Popen, list[str]]:
    """``realnvp remote HOST follow OUT`` as a person runs it, its stderr lines collected
    as they come."""
    python, runs = login
    argv = [sys.executable, "-m", "core", "remote", "--ssh-config", str(sshd.config),
            sshd.alias, "follow", "--python", python, "--runs-dir", str(runs), out]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    return process, lines


@pytest.mark.slow
def test_jobs_behind_one_that_holds_the_node_show_their_place_reason_and_start(
    sshd, login, slurm_cluster, small_mnist, capsys, tmp_path
):
    # A holder with a time limit: Slurm's backfill plans when the jobs behind it start.
    holder = hold_the_node(slurm_cluster, tmp_path, "--time=10:00")
    try:
        # Each with a time limit too, so the second's start is planned after the first's.
        first, second = (
            submit(sshd, login, capsys, small_mnist, "--max-steps", "2000", "--time", "05:00")
            for _ in range(2)
        )
        follow, said = follow_process(sshd, login, second)

        def placed(out: str):
            job = status_json(sshd, login, capsys, out)["scheduler"]
            return job if job["reason"] and job["position"] and job["expected_start"] else None

        jobs = [wait_for(lambda out=out: placed(out), 120, f"{out}'s place") for out in
                (first, second)]  # fmt: skip
        assert [(j["state"], j["position"]) for j in jobs] == [("PENDING", 1), ("PENDING", 2)]
        assert jobs[0]["reason"] == "Resources"
        # The second waits for the node, or for the first (Slurm's word for it: Priority).
        assert jobs[1]["reason"] in ("Resources", "Priority")
        # Planned in turn: the first when the holder's time is up, the second 5 min later.
        holder_end = datetime.datetime.fromisoformat(slurm_cluster.job(holder)["EndTime"])
        for job, after in zip(jobs, (0, 300), strict=True):
            start = datetime.datetime.fromisoformat(job["expected_start"])
            assert abs((start - holder_end).total_seconds() - after) <= 60, (job, holder_end)
        code, text, _ = remote(sshd, login, capsys, "status", first)
        waiting = "waiting in the queue (Resources), 1st, expected to start "
        assert code == 0 and f"Slurm job {jobs[0]['job_id']} PENDING: {waiting}" in text
        # follow says the same until the first event; a stop takes the job out of the queue.
        second_words = f"waiting in the queue ({jobs[1]['reason']}), 2nd, expected to start"
        wait_for(lambda: any(second_words in line for line in said), 60, f"follow: {said}")
        for out in (first, second):
            code, _, err = remote(sshd, login, capsys, "stop", out)
            assert code == 0, err
        assert follow.wait(timeout=60) == 0, said
    finally:
        slurm_cluster.run("scancel", holder)


@pytest.mark.slow
def test_a_folder_whose_job_is_still_queued_refuses_another_run(
    sshd, login, slurm_cluster, small_mnist, capsys, tmp_path, monkeypatch
):
    holder = hold_the_node(slurm_cluster, tmp_path)
    try:
        out = submit(sshd, login, capsys, small_mnist, "--max-steps", "2000")
        job_id = job_of(out)
        script = (Path(out) / SCRIPT_NAME).read_text()
        taken = (
            f"{out} belongs to Slurm job {job_id}, still waiting in the queue; wait for it to "
            f"end, stop it (realnvp remote HOST stop) or cancel it (scancel {job_id}), or "
            "choose another output folder"
        )
        # A second submit into the same folder, over ssh: one sentence, nothing replaced.
        args = [*TINY, "--data-dir", str(small_mnist), "--out", out]
        code, text, err = remote(sshd, login, capsys, "train", "--slurm", *args)
        assert (code, text) == (2, "")
        assert err == f"realnvp remote: error: on {sshd.alias}: {taken}\n"
        assert job_of(out) == job_id and (Path(out) / SCRIPT_NAME).read_text() == script
        # A trainer started on the login node itself, fresh or resuming: the same sentence.
        monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
        code, _, err = cli(capsys, "train", *args)
        assert code == 2 and err == f"realnvp train: error: {taken}\n"
        with pytest.raises(RunFolderError) as refused:
            check_run_folder(out, resume=True)
        assert str(refused.value) == taken
        # The job's own trainer is not refused by its own job.
        monkeypatch.setenv("SLURM_JOB_ID", job_id)
        check_run_folder(out, resume=True)
        monkeypatch.delenv("SLURM_JOB_ID")
        # Once the job has left the queue the folder is free again.
        code, _, err = remote(sshd, login, capsys, "stop", out)
        assert code == 0, err
        slurm_cluster.wait_state(job_id, "CANCELLED")
        assert check_run_folder(out).state == "none"
    finally:
        slurm_cluster.run("scancel", holder)


@pytest.mark.slow
def test_a_job_that_fails_before_its_first_event_says_why(
    sshd, login, slurm_cluster, small_mnist, capsys, tmp_path
):
    # A Python that the login node has and the job's node does not: it ends at once.
    python = host_python(tmp_path, "python", SLURM_CONF=str(slurm_cluster.conf))
    Path(python).write_text(
        Path(python).read_text().replace("exec ", 'case "$*" in *"core train"*) echo "no torch '
        'on this node" >&2; exit 3;; esac\nexec ')
    )  # fmt: skip
    out = submit(sshd, (python, login[1]), capsys, small_mnist, "--max-steps", "5")
    slurm_cluster.wait_state(job_of(out), "FAILED", "COMPLETED", "CANCELLED")
    status = status_json(sshd, (python, login[1]), capsys, out)
    assert status["state"] == "failed" and status["scheduler"]["state"] == "FAILED"
    assert "before the trainer's first event" in status["message"]
    assert "no torch on this node" in status["message"]


@pytest.mark.slow
def test_a_missing_partition_and_a_missing_sbatch_are_one_sentence(
    sshd, login, small_mnist, capsys, tmp_path
):
    args = [*TINY, "--data-dir", str(small_mnist), "--out", "nowhere"]
    code, text, err = remote(sshd, login, capsys, "train", "--slurm", "--partition", "nope",
                             *args)  # fmt: skip
    assert (code, text) == (2, "")
    assert err == (
        "realnvp remote: error: Slurm on rnvp-test has no such partition (--partition): "
        "invalid partition name specified\n"
    )
    assert not (login[1] / "nowhere").exists()  # nothing was queued, nothing left
    no_slurm = host_python(tmp_path, "python", PATH="/nonexistent")
    code, text, err = remote(sshd, (no_slurm, login[1]), capsys, "train", "--slurm", *args)
    assert (code, text) == (2, "")
    assert err.startswith("realnvp remote: error: there is no sbatch on rnvp-test")
    assert err.count("\n") == 1
    # The Slurm options alone, without --slurm, are refused before connecting.
    code, _, err = remote(sshd, login, capsys, "train", "--partition", "debug", *args)
    assert code == 2 and "--partition only go with --slurm" in err

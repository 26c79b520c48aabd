"""Runs on a real single-node Slurm cluster (the ``slurm_cluster`` fixture, tests/slurm.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import wait_for as conftest_wait_for

from core.files.checkpoint import read_checkpoint
from core.runs.folder import EVENTS_FILE, read_events
from core.runs.slurm import SCRIPT_NAME, SlurmRequest, sbatch_script

ROOT = Path(__file__).resolve().parents[1]


def test_the_test_cluster_runs_a_batch_job(slurm_cluster, tmp_path: Path):
    out = tmp_path / "hi.out"
    submitted = slurm_cluster.run(
        "sbatch", "--parsable", f"--output={out}", "--wrap", "echo hi from $SLURM_JOB_ID"
    )
    job_id = submitted.stdout.strip().split(";")[0]
    fields = slurm_cluster.wait_state(job_id, "COMPLETED", "FAILED", "CANCELLED")
    assert fields["JobState"] == "COMPLETED", fields
    assert fields["NodeList"] == slurm_cluster.node
    assert out.read_text() == f"hi from {job_id}\n"


# The tiny model of the Slurm tests: about 13 steps a second on this machine's shared CPU.
TINY = [
    "--dataset", "mnist", "--num-scales", "2", "--mid-channels", "4", "--num-blocks", "1",
    "--batch-size", "16", "--eval-limit", "64", "--class-limit", "4", "--threads", "1",
    "--precision", "float32", "--log-every", "1",
]  # fmt: skip


def submit(cluster, run: Path, train_args: list[str], resume_args: list[str]) -> str:
    """The run's sbatch script written into ``run`` and submitted from there, as the
    launcher does; its job id."""
    run.mkdir()
    request = SlurmRequest(partition=cluster.partition, job_name=run.name)
    (run / SCRIPT_NAME).write_text(sbatch_script(sys.executable, train_args, resume_args, request))
    submitted = cluster.run(
        "sbatch", "--parsable", f"--chdir={run}", str(run / SCRIPT_NAME), PYTHONPATH=str(ROOT)
    )
    return submitted.stdout.strip().split(";")[0]


def events(run: Path, kind: str | None = None) -> list[dict]:
    found = read_events(run / EVENTS_FILE) if (run / EVENTS_FILE).exists() else []
    return [e for e in found if kind is None or e["event"] == kind]


def wait_for(what, cluster, job_id: str, timeout: float = 120):
    return conftest_wait_for(
        what, timeout, lambda: f"job {job_id}: {cluster.job(job_id)}\n{cluster.logs()}"
    )


def signal_when_training(cluster, job_id: str, run: Path, allocation: int) -> None:
    """SIGUSR1 to the job's steps, as --signal=USR1@90 sends it, once the trainer of the
    ``allocation``-th start (0: the first) has logged a step."""

    def training() -> bool:
        seen = events(run)
        starts = [i for i, e in enumerate(seen) if e["event"] == "start"]
        return len(starts) > allocation and any(
            e["event"] == "step" for e in seen[starts[allocation] :]
        )

    wait_for(training, cluster, job_id)
    cluster.run("scancel", "--signal=USR1", job_id)


def test_a_signalled_job_requeues_resumes_and_counts_every_step_once(
    slurm_cluster, small_mnist, tmp_path: Path
):
    run = tmp_path / "requeued run"
    args = [*TINY, "--data-dir", str(small_mnist), "--max-steps", "120", "--eval-every", "1000"]
    job_id = submit(slurm_cluster, run, args, args)
    for allocation in range(2):
        signal_when_training(slurm_cluster, job_id, run, allocation)
        wait_for(lambda n=allocation: len(events(run, "requeue")) > n, slurm_cluster, job_id)
    fields = slurm_cluster.wait_state(job_id, "COMPLETED", "FAILED", "CANCELLED", timeout=180)
    assert fields["JobState"] == "COMPLETED", fields
    assert fields["Restarts"] == "2"
    requeues = events(run, "requeue")
    assert [(e["job_id"], e["requeues"], e["max_requeues"]) for e in requeues] == [
        (job_id, 1, 3),
        (job_id, 2, 3),
    ]
    starts = events(run, "start")
    assert [s["resumed"] for s in starts] == [False, True, True]
    # Each allocation resumes at the step the previous one saved and requeued at.
    assert [s["step"] for s in starts[1:]] == [r["step"] for r in requeues]
    assert all(0 < r["step"] < 120 for r in requeues)
    steps = [e["step"] for e in events(run, "step")]
    assert steps == list(range(1, 121)), steps
    (done,) = events(run, "done")
    assert (done["reason"], done["step"]) == ("finished", 120)
    assert read_checkpoint(run / "latest.pt")["training"]["step"] == 120
    assert (run / SCRIPT_NAME).exists() and (run / f"slurm-{job_id}.out").exists()


def test_past_its_requeues_a_signalled_job_ends_as_a_time_limited_run(
    slurm_cluster, small_mnist, tmp_path: Path
):
    run = tmp_path / "run"
    args = [
        *TINY, "--data-dir", str(small_mnist), "--max-steps", "400", "--eval-every", "1000",
        "--max-requeues", "0",
    ]  # fmt: skip
    job_id = submit(slurm_cluster, run, args, args)
    signal_when_training(slurm_cluster, job_id, run, 0)
    fields = slurm_cluster.wait_state(job_id, "COMPLETED", "FAILED", "CANCELLED", timeout=180)
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "0", fields
    assert events(run, "requeue") == []
    (done,) = events(run, "done")
    assert done["reason"] == "time_limit" and done["step"] < 400
    assert events(run, "eval")[-1]["step"] == done["step"]  # evaluated and saved at its end
    assert read_checkpoint(run / "latest.pt")["training"]["step"] == done["step"]


def test_a_cancelled_job_keeps_its_checkpoint_and_is_not_requeued(
    slurm_cluster, small_mnist, tmp_path: Path
):
    # scancel sends SIGTERM, as a preemption does, to a job it has marked cancelled: the
    # trainer saves and ends as stopped, and does not requeue it.
    run = tmp_path / "run"
    args = [*TINY, "--data-dir", str(small_mnist), "--max-steps", "400", "--eval-every", "1000"]
    job_id = submit(slurm_cluster, run, args, args)
    wait_for(lambda: events(run, "step"), slurm_cluster, job_id)
    slurm_cluster.run("scancel", job_id)
    fields = slurm_cluster.wait_state(job_id, "CANCELLED", "COMPLETED", "FAILED")
    assert fields["JobState"] == "CANCELLED" and fields["Restarts"] == "0", fields
    (done,) = wait_for(lambda: events(run, "done"), slurm_cluster, job_id)
    assert done["reason"] == "stopped" and events(run, "requeue") == []
    assert read_checkpoint(run / "latest.pt")["training"]["step"] == done["step"]

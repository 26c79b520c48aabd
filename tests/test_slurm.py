"""Runs on a real single-node Slurm cluster (the ``slurm_cluster`` fixture, tests/slurm.py)."""

from __future__ import annotations

from pathlib import Path


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

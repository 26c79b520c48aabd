"""The training page with *Run on: Slurm cluster (over SSH)*: Check host asks the cluster
for its partitions and accounts, the form's job settings are remembered per host, a queued
job shows its place in the queue, a requeue marks the curve, and File > Recent Runs names
the job's state. Against the real single-node cluster (tests/slurm.py) through the
loopback sshd (tests/sshd.py), as ``tests/test_slurm_remote.py`` does from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sshd import running_sshd
from test_slurm_remote import hold_the_node, host_python, login  # noqa: F401 (a fixture)

from core.runs import hosts
from core.runs.cluster import ClusterFacts, Partition, parse_accounts, parse_sinfo
from core.runs.host import ssh_host
from core.runs.slurm import queue_sentence
from core.runs.transport import RemoteError

# -- without a cluster ----------------------------------------------------------------------


def test_sinfo_lines_merge_per_partition_with_the_default_first():
    text = (
        "gpu|up|2-00:00:00|2/1/0/3|gpu:a100:4\n"
        "debug*|up|infinite|0/1/0/1|(null)\n"
        "gpu|up|2-00:00:00|0/2/0/2|gpu:h100:8(S:0-1)\n"
        "junk line\n"
    )
    debug, gpu = parse_sinfo(text)
    assert (debug.name, debug.default, debug.gpus_per_node) == ("debug", True, 0)
    assert (gpu.idle, gpu.total, gpu.gpus_per_node) == (3, 5, 8)
    assert gpu.gres == ("gpu:a100:4", "gpu:h100:8(S:0-1)") and gpu.limit_seconds == 172800
    assert gpu.describe() == (
        "gpu · gpu:a100:4, gpu:h100:8(S:0-1) · limit 2-00:00:00 · 3 of 5 nodes idle"
    )
    assert parse_accounts("lab\nlab\nphysics|\n\n") == ["lab", "physics"]
    facts = ClusterFacts((debug, gpu), ("lab",), "me")
    assert ClusterFacts.from_dict(json.loads(json.dumps(facts.to_dict()))) == facts


def test_a_queued_job_is_said_in_one_sentence():
    job = {"job_id": "12", "state": "PENDING", "reason": "Resources", "expected_start": None}
    assert queue_sentence(job) == "Waiting in the Slurm queue (Resources), job 12"
    placed = {**job, "position": 3, "expected_start": "2026-12-06T14:05:00"}
    assert queue_sentence(placed).startswith(
        "Waiting in the Slurm queue (Resources), job 12, 3rd in line, expected to start "
    )
    requeued = {**job, "state": "REQUEUED", "reason": None}
    assert queue_sentence(requeued) == "Requeued, waiting in the Slurm queue, job 12"
    assert queue_sentence({**job, "state": "RUNNING"}) is None


def test_slurm_settings_are_remembered_per_host_and_an_empty_one_too(tmp_path, monkeypatch):
    monkeypatch.setenv(hosts.CONFIG_DIR_VAR, str(tmp_path))
    hosts.remember(
        "login1", python="~/venv/bin/python", slurm_partition="gpu", slurm_time="1:00:00"
    )
    hosts.remember("login1", slurm_time="", python="")  # cleared time: the partition's own
    assert hosts.remembered("login1") == {
        "python": "~/venv/bin/python",
        "slurm_partition": "gpu",
        "slurm_time": "",
    }


def test_the_job_settings_are_checked_against_the_partition_chosen(qtbot, explorer_settings):
    from PySide6.QtCore import Qt

    from explorer.training.workspace import TrainingPanel

    panel = TrainingPanel(probe_devices=False, settings=explorer_settings)
    qtbot.addWidget(panel)
    form, slurm = panel.form, panel.form.slurm
    form.run_on.setFocus()
    qtbot.keyClick(form.run_on, Qt.Key.Key_End)
    assert form.where.slurm and explorer_settings.remote_host["run_on"] == "slurm"
    slurm._asked = form.where.host_choice()
    gpu = Partition("gpu", False, True, "1-00:00:00", ("gpu:a100:4",), 1, 2)
    debug = Partition("debug", True, True, "infinite", (), 1, 1)
    slurm._cluster_answered(slurm._asked, ClusterFacts((debug, gpu), ("lab",), "me"))
    assert [slurm.partition.itemData(i) for i in range(2)] == ["debug", "gpu"]
    assert slurm.account.itemText(0) == "lab"
    slurm.partition.setFocus()
    qtbot.keyClick(slurm.partition, Qt.Key.Key_Down)
    assert slurm.partition_name() == "gpu"
    for spin, value in ((slurm.gpus, 8), (slurm.nodes, 3)):
        spin.setFocus()
        spin.selectAll()
        qtbot.keyClicks(spin, str(value))
    slurm.time.setFocus()
    qtbot.keyClicks(slurm.time, "2-00:00:00")
    assert slurm.problems() == [
        "8 GPUs per node asked for; partition gpu's nodes have 4",
        "3 nodes asked for; partition gpu has 2",
        "the time limit is over partition gpu's 1-00:00:00",
    ]
    assert slurm.request().gpus == 8 and slurm.request().partition == "gpu"


# -- against the cluster ---------------------------------------------------------------------


def test_the_form_asks_slurm_about_its_folder_off_the_gui_thread(
    qtbot, slurm_cluster, tmp_path, monkeypatch
):
    """A local output folder whose ``launch.json`` names a batch job still in the queue is
    refused with the trainer's sentence; the question goes to Slurm on a thread, so the
    form keeps answering while the controller does not (stopped with SIGSTOP here)."""
    import os
    import signal

    from explorer.training import folder_hold
    from explorer.training.form import TrainingForm

    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    holder = hold_the_node(slurm_cluster, tmp_path)
    controller = slurm_cluster.processes["slurmctld"]
    out = tmp_path / "queued-run"
    out.mkdir()
    job_id = slurm_cluster.run(
        "sbatch", "--parsable", f"--chdir={out}", f"--output={tmp_path / 'job.out'}",
        "--wrap", "sleep 1",
    ).stdout.strip()  # fmt: skip
    try:
        slurm_cluster.wait_state(job_id, "PENDING")
        (out / "launch.json").write_text(
            json.dumps({"scheduler": {"kind": "slurm", "job_id": job_id}})
        )
        form = TrainingForm(runs_dir=tmp_path, probe_devices=False)
        qtbot.addWidget(form)
        form.out.setText(str(out))
        assert f"checking whether Slurm job {job_id} still holds {out}…" in form.problems()
        assert form.checking
        taken = (
            f"{out} belongs to Slurm job {job_id}, still waiting in the queue; wait for it to "
            f"end, stop it (realnvp remote HOST stop) or cancel it (scancel {job_id}), or "
            "choose another output folder"
        )
        qtbot.waitUntil(lambda: taken in form.problems(), timeout=30_000)
        assert not form.checking
        # The controller stops answering: every look at the form asks again (no answer is
        # fresh), and each returns at once with the last answer while the question waits.
        monkeypatch.setattr(folder_hold, "FRESH_S", 0.0)
        os.kill(controller.pid, signal.SIGSTOP)
        try:
            assert taken in form.problems()
            assert form.slurm_hold.asking, "the question should still be waiting for Slurm"
            assert taken in form.problems()
            assert len(form.slurm_hold.asking) == 1  # asked once at a time
        finally:
            os.kill(controller.pid, signal.SIGCONT)
        # The job leaves the queue: the folder is free again.
        slurm_cluster.run("scancel", job_id)
        slurm_cluster.wait_state(job_id, "CANCELLED")
        qtbot.waitUntil(lambda: not form.slurm_hold.asking, timeout=30_000)
        qtbot.waitUntil(lambda: not any(job_id in p for p in form.problems()), timeout=30_000)
    finally:
        slurm_cluster.run("scancel", job_id, check=False)
        slurm_cluster.run("scancel", holder, check=False)


# -- against the cluster, over ssh ----------------------------------------------------------


def test_the_queue_is_asked_less_often_while_nothing_changes(qtbot, explorer_settings):
    """Each answer that says nothing new doubles the wait before the next question, up to
    the slowest pace; any change (state, reason, place, expected start) and a requeue go
    back to the first pace."""
    from core.runs.host import RemoteRun, RunStatus
    from explorer.training import slurm_run
    from explorer.training.workspace import TrainingPanel

    panel = TrainingPanel(probe_devices=False, settings=explorer_settings)
    qtbot.addWidget(panel)
    watch = panel.queue
    run = RemoteRun("/nowhere/run-1", "no-such-host")
    watch.run = run
    job = {"job_id": "7", "state": "PENDING", "reason": "Resources", "position": 2}

    def answer(**changes) -> int:
        scheduler = {**job, **changes}
        watch._answered(run, RunStatus(run.out, "running", 0, None, None, scheduler=scheduler))
        watch._timer.stop()  # no question goes out: only the pace is checked
        return watch.interval_ms

    first, slowest = slurm_run.QUEUE_POLL_MS, slurm_run.QUEUE_POLL_MAX_MS
    assert answer() == first  # the first answer is news
    paces = [answer() for _ in range(6)]
    assert paces == [min(first * 2**i, slowest) for i in range(1, 7)]
    assert paces[-1] == slowest
    assert answer(position=1) == first  # one place up: back to the first pace
    assert answer(position=1) == 2 * first
    assert answer(position=1, state="RUNNING", reason=None) == first
    watch._timer.setInterval(slowest)
    watch._on_event({"event": "requeue", "step": 40})  # back in the queue: asked at once
    assert watch.interval_ms == first
    watch.stop()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    yield from running_sshd(tmp_path_factory)


def test_the_cluster_operation_reads_sinfo_on_the_login_node(sshd, login, slurm_cluster):  # noqa: F811
    python, runs = login
    host = ssh_host(sshd.alias, python=python, runs_dir=str(runs), config_file=str(sshd.config))
    facts = host.cluster()
    assert facts.partitions == (
        Partition(slurm_cluster.partition, True, True, "infinite", (), 1, 1),
    )
    assert facts.accounts == ()  # the test cluster keeps no accounts (no slurmdbd)


def test_a_host_without_slurm_is_one_sentence(sshd, tmp_path):
    # The host's PATH holds no Slurm command (the Python is named by its full path).
    python = host_python(tmp_path, "python", PATH=str(tmp_path / "empty"))
    host = ssh_host(sshd.alias, python=python, config_file=str(sshd.config))
    with pytest.raises(RemoteError) as caught:
        host.cluster()
    said = str(caught.value)
    assert said.startswith(f"there is no sinfo on {sshd.alias}:") and "\n" not in said


def _shots(window, screenshot_dir, name: str, qtbot) -> None:
    """The window at 1024x640 and 1366x768, as a person sees the page, into the shots."""
    for width, height in ((1024, 640), (1366, 768)):
        window.resize(width, height)
        qtbot.wait(400)
        assert (window.width(), window.height()) == (width, height)
        assert window.grab().save(str(screenshot_dir / f"slurm_{name}_{width}x{height}.png"))


def _entry(window, run) -> str:
    window.menus.fill_recent_runs()
    actions = window.menus.recent_runs_menu.actions()
    return next(a.text() for a in actions if a.text().startswith(f"{run.name} on "))


def _remembered_job_state(window, run) -> str | None:
    """The Slurm state File > Recent Runs keeps for ``run`` (the page's last look at it)."""
    record = next(r for r in window.settings.recent_runs() if r["out"] == run.out)
    return (record.get("scheduler") or {}).get("state")


def _on_the_cluster(qtbot, form, sshd, login) -> None:  # noqa: F811
    """Run on: the Slurm cluster (the last choice, picked with the keyboard), the login
    node's fields typed, Check host clicked and answered."""
    from PySide6.QtCore import Qt
    from test_training_remote import click, type_into

    python, runs = login
    form.run_on.setFocus()
    qtbot.keyClick(form.run_on, Qt.Key.Key_End)
    assert form.run_on.currentText() == "Slurm cluster (over SSH)"
    assert form.slurm.isVisible() and form.where.slurm and form.remote
    type_into(qtbot, form.host, sshd.alias)
    type_into(qtbot, form.remote_python, python)
    type_into(qtbot, form.remote_runs, str(runs))
    type_into(qtbot, form.ssh_config, str(sshd.config))
    click(qtbot, form.check_host_button)
    qtbot.waitUntil(lambda: form.slurm.cluster is not None, timeout=60_000)


def _tiny_run(qtbot, panel, small_mnist, steps: int) -> None:
    """A tiny model on a tiny data set (the host's folder, checked there), ``steps`` long;
    Start enabled."""
    from test_training_remote import type_into

    form = panel.form
    type_into(qtbot, form.data_dir, str(small_mnist))
    qtbot.waitUntil(
        lambda: form.scan_report is not None and form.scan_report.finished, timeout=60_000
    )
    for spin, value in (
        (form.num_scales, 2), (form.mid_channels, 4), (form.num_blocks, 1),
        (form.batch_size, 16), (form.eval_every, 1000), (form.eval_limit, 24),
        (form.log_every, 1), (form.threads, 1),
    ):  # fmt: skip
        spin.setValue(value)
    form.length_unit.setCurrentIndex(form.length_unit.findData("steps"))
    form.length.setValue(steps)
    qtbot.waitUntil(lambda: panel.start_button.isEnabled(), timeout=30_000)


def _status_asks(monkeypatch) -> list[str]:
    """The page asks the host for a Slurm run's status after 0.2 s, slowing to 0.8 s while
    nothing changes, whenever it asks at all (so asking while the trainer runs would show);
    each ask started is listed."""
    from explorer.training import slurm_run

    asked: list[str] = []

    class CountedCall(slurm_run.BlockingCall):
        def start(self):
            asked.append("status")
            return super().start()

    monkeypatch.setattr(slurm_run, "QUEUE_POLL_MS", 200)
    monkeypatch.setattr(slurm_run, "QUEUE_POLL_MAX_MS", 800)
    monkeypatch.setattr(slurm_run, "BlockingCall", CountedCall)
    return asked


def _asks_by_event(panel, asked: list[str]) -> list[tuple[str, int, bool]]:
    """For each event of the page's run, as it arrives: its kind, how many status asks had
    started by then, and whether another is planned (the queue watch's timer)."""
    seen: list[tuple[str, int, bool]] = []
    process = panel.process

    def record(event: dict) -> None:
        seen.append((event["event"], len(asked), panel.queue.polling))

    # Connected once the queue watch follows the run, so it sees each event after the watch.
    process.run_started.connect(lambda _run: process.event_received.connect(record))
    return seen


def _segments(seen: list[tuple[str, int, bool]]) -> list[list[tuple[str, int, bool]]]:
    """The step events of each allocation (from a start to a requeue or the end)."""
    parts: list[list[tuple[str, int, bool]]] = [[]]
    for record in seen:
        if record[0] == "requeue":
            parts.append([])
        elif record[0] == "step":
            parts[-1].append(record)
    return [part for part in parts if part]


def _never_asked_while_steps_came(seen: list[tuple[str, int, bool]]) -> None:
    for steps in _segments(seen):
        assert {asks for _, asks, _ in steps} == {steps[0][1]}, seen  # no ask started
        assert not any(polling for *_, polling in steps), seen  # none planned


@pytest.mark.slow
def test_the_page_submits_a_slurm_job_shows_its_queue_requeue_and_opens_it(
    qtbot, sshd, login, slurm_cluster, small_mnist, make_window, explorer_settings,  # noqa: F811
    screenshot_dir, tmp_path, monkeypatch,
):  # fmt: skip
    from PySide6.QtCore import Qt
    from test_training_remote import click, type_into

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # fetched files
    asked = _status_asks(monkeypatch)
    # A job that holds the node: the page's job waits behind it.
    holder = hold_the_node(slurm_cluster, tmp_path)
    try:
        slurm_cluster.wait_state(holder, "RUNNING")
        window = make_window()
        window.resize(1366, 768)
        window.show_page("training")
        panel = window.training_panel
        form = panel.form
        _on_the_cluster(qtbot, form, sshd, login)
        # The cluster's one partition, its default, with the node the holder takes.
        assert form.slurm.partition.currentText() == (
            "debug (default) · no GPUs · no time limit · 0 of 1 nodes idle"
        )
        assert form.slurm.account.count() == 0  # no accounting here: no accounts, no error
        assert "accounts: none listed" in form.slurm.cluster_status.text()

        # A time limit Slurm would not read is one sentence, and Start stays off.
        type_into(qtbot, form.slurm.time, "half an hour")
        qtbot.waitUntil(lambda: "HH:MM:SS or D-HH:MM:SS" in panel.reason.text(), timeout=5_000)
        assert not panel.start_button.isEnabled() and "\n" not in panel.reason.text()
        type_into(qtbot, form.slurm.time, "00:30:00")
        _tiny_run(qtbot, panel, small_mnist, 60)
        command = panel.command.text()
        assert command.startswith(f"realnvp remote --ssh-config {sshd.config} {sshd.alias} train")
        assert " --slurm --partition debug --time 00:30:00 " in command

        click(qtbot, panel.start_button)
        seen = _asks_by_event(panel, asked)
        qtbot.waitUntil(lambda: panel.remote_run is not None, timeout=60_000)
        run = panel.remote_run
        job_id = json.loads(Path(run.out, "launch.json").read_text())["scheduler"]["job_id"]
        assert panel.process.job_id == job_id
        # The only job waiting: first in line (no expected start: the holder has no limit).
        waiting = f"Waiting in the Slurm queue (Resources), job {job_id}, 1st in line"
        qtbot.waitUntil(lambda: panel.info.text().startswith(waiting), timeout=60_000)
        # Answers that say nothing new slow the questions down, to the slowest pace.
        qtbot.waitUntil(lambda: panel.queue.interval_ms == 800, timeout=30_000)
        # The status bar cuts the sentence after the job (the window's smallest width);
        # its tooltip has it whole.
        status = window.training_status.button
        assert status.text().startswith(f"Waiting in the Slurm queue (Resources), job {job_id}")
        assert waiting in status.toolTip()
        assert f"On {sshd.alias}, Slurm job {job_id} PENDING: {run.out}" == panel.where.text()
        # The job's settings are remembered for this login node.
        kept = hosts.remembered(sshd.alias)
        assert (kept["slurm_partition"], kept["slurm_time"]) == ("debug", "00:30:00")
        assert _entry(window, run).startswith(
            f"{run.name} on {sshd.alias} — running · Slurm job {job_id} PENDING: "
            "waiting in the queue (Resources), 1st"
        )
        _shots(window, screenshot_dir, "pending", qtbot)

        # The node is free: the job runs, the curves come as for any run.
        slurm_cluster.run("scancel", holder)
        qtbot.waitUntil(lambda: len(panel.train_points[0]) >= 5, timeout=120_000)
        assert "parameters" in panel.info.text()  # the start event's facts, not the queue's
        qtbot.waitUntil(lambda: f"Slurm job {job_id} RUNNING" in panel.where.text(), timeout=10_000)
        # The end of an allocation: the job requeues, resumes from latest.pt, and the
        # curve shows a mark where it did, with every step once.
        slurm_cluster.run("scancel", "--signal=USR1", job_id)
        qtbot.waitUntil(lambda: len(panel.plot.requeue_marks) == 1, timeout=60_000)
        requeued_at = panel.plot.requeue_marks[0].value()
        qtbot.waitUntil(
            lambda: len(panel.train_points[0]) >= requeued_at + 3 or not panel.running,
            timeout=120_000,
        )
        _shots(window, screenshot_dir, "running", qtbot)
        qtbot.waitUntil(lambda: not panel.running, timeout=180_000)
        assert panel.train_points[0] == list(range(1, 61))
        assert panel.plot.requeue_marks[0].value() == requeued_at
        # The host is asked while the job waits, never while the trainer's steps come; at
        # the requeue at once (the job is back in the queue), and once at the end.
        _never_asked_while_steps_came(seen)
        assert len(_segments(seen)) == 2
        requeue = next(i for i, record in enumerate(seen) if record[0] == "requeue")
        assert seen[requeue][1] == seen[requeue - 1][1] + 1, seen
        assert len(asked) == seen[-1][1] + 1 and not panel.queue.polling
        assert panel.message.text().startswith("Finished at step 60")
        ended = f"Slurm job {job_id} COMPLET"
        qtbot.waitUntil(lambda: ended in _entry(window, run), timeout=60_000)
        assert _entry(window, run).startswith(f"{run.name} on {sshd.alias} — done")

        try:
            with qtbot.waitSignal(window.model_opened, timeout=120_000):
                click(qtbot, panel.open_button)
        except qtbot.TimeoutError:  # what the page said, for the failure's report
            pytest.fail(
                f"not opened: message {panel.message.text()!r}, fetching "
                f"{panel.runs.fetching_now}, last error {window.last_error!r}"
            )
        origin, fetched = window.model_panel.values["source"].toolTip().splitlines()
        assert origin == f"{sshd.alias}:{run.out}/latest.pt"
        local = Path(fetched.removeprefix("fetched to "))
        assert local.read_bytes() == Path(run.out, "latest.pt").read_bytes()

        # Another host's settings, then this one typed again: its job settings come back.
        type_into(qtbot, form.slurm.time, "2:00:00")
        type_into(qtbot, form.host, "elsewhere")
        qtbot.keyClick(form.host, Qt.Key.Key_Return)
        type_into(qtbot, form.host, sshd.alias)
        qtbot.keyClick(form.host, Qt.Key.Key_Return)
        assert form.slurm.time.text() == "00:30:00"
        assert form.slurm.partition_name() == "debug"
        qtbot.waitUntil(lambda: not form.checking_host and not form.slurm.asking, timeout=60_000)
    finally:
        slurm_cluster.run("scancel", holder, check=False)


def _queue(slurm_cluster) -> list[str]:
    """The jobs Slurm still has queued or running, by id."""
    return slurm_cluster.run("squeue", "-h", "-o", "%i").stdout.split()


@pytest.mark.slow
def test_stop_takes_a_queued_job_out_and_kill_cancels_a_running_one_from_the_page(
    qtbot, sshd, login, slurm_cluster, small_mnist, make_window, screenshot_dir,  # noqa: F811
    tmp_path, monkeypatch,
):  # fmt: skip
    from test_training_remote import click

    asked = _status_asks(monkeypatch)
    holder = hold_the_node(slurm_cluster, tmp_path)
    try:
        window = make_window()
        window.resize(1366, 768)
        window.show_page("training")
        panel = window.training_panel
        _on_the_cluster(qtbot, panel.form, sshd, login)
        _tiny_run(qtbot, panel, small_mnist, 2000)
        # A job behind the holder: Stop takes it out of the queue (no trainer would read
        # the stop file), in one sentence; nothing is left queued.
        click(qtbot, panel.start_button)
        qtbot.waitUntil(lambda: panel.remote_run is not None, timeout=60_000)
        run, job_id = panel.remote_run, panel.process.job_id
        waiting = f"Waiting in the Slurm queue (Resources), job {job_id}"
        qtbot.waitUntil(lambda: panel.info.text().startswith(waiting), timeout=60_000)
        qtbot.waitUntil(lambda: len(asked) >= 3, timeout=30_000)  # asked while it waits
        click(qtbot, panel.stop_button)
        assert panel.info.text() == (
            f"Cancelling Slurm job {job_id}: it is still waiting in the queue…"
        )
        qtbot.waitUntil(lambda: not panel.running, timeout=60_000)
        assert panel.message.text() == f"Slurm job {job_id} cancelled before it started"
        assert panel.start_button.isEnabled() and not panel.stop_button.isEnabled()
        assert _queue(slurm_cluster) == [holder]
        qtbot.waitUntil(lambda: _remembered_job_state(window, run) == "CANCELLED", timeout=30_000)
        assert _entry(window, run).startswith(
            f"{run.name} on {sshd.alias} — stopped · Slurm job {job_id} CANCELLED"
        )
        assert json.loads(Path(run.out, "launch.json").read_text())["stopped"]
        assert not Path(run.out, "events.jsonl").exists()  # no trainer ever ran
        _shots(window, screenshot_dir, "cancelled", qtbot)
    finally:
        slurm_cluster.run("scancel", holder, check=False)

    # The node is free: a job runs, and the host is not asked while its steps come.
    click(qtbot, panel.start_button)
    seen = _asks_by_event(panel, asked)
    qtbot.waitUntil(lambda: panel.remote_run not in (None, run), timeout=60_000)
    run, job_id = panel.remote_run, panel.process.job_id
    qtbot.waitUntil(lambda: len(panel.train_points[0]) >= 30, timeout=120_000)
    assert f"Slurm job {job_id} RUNNING" in panel.where.text()
    _never_asked_while_steps_came(seen)
    # Kill is scancel: the trainer saves and ends, the job is CANCELLED, the checkpoint
    # stays, and the page says so.
    click(qtbot, panel.kill_button)
    qtbot.waitUntil(lambda: not panel.running, timeout=120_000)
    step = panel.last_step
    assert panel.message.text() == (
        f"Slurm job {job_id} cancelled at step {step}; its checkpoints stay: {run.out}/latest.pt"
    )
    assert Path(run.out, "latest.pt").is_file() and panel.open_button.isEnabled()
    assert panel.start_button.isEnabled()
    # The page's last look at the job says how it ended, beside the run folder.
    cancelled = f"On {sshd.alias}, Slurm job {job_id} CANCELLED: {run.out}"
    qtbot.waitUntil(lambda: panel.where.text() == cancelled, timeout=30_000)
    assert _remembered_job_state(window, run) == "CANCELLED"
    # (The menu's own look at the host may add the run's length to the step.)
    assert _entry(window, run).startswith(f"{run.name} on {sshd.alias} — stopped (step {step:,}")
    assert f") · Slurm job {job_id} CANCELLED on " in _entry(window, run)
    assert _queue(slurm_cluster) == []
    _shots(window, screenshot_dir, "killed", qtbot)

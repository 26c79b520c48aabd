"""The training page's runs on an ssh host, against a real OpenSSH server on 127.0.0.1
(``tests/sshd.py``), driven with real Qt events: Check host, Start, curves and previews
filling, Stop, Open in Explorer, File > Recent Runs, and one sentence for a bad host."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from conftest import MNIST_DIR, needs_mnist
from PySide6.QtCore import Qt
from sshd import TRAIN, choose_host, running_sshd, type_into

from core.runs.host import RemoteRun
from explorer.training.command_line import remote_command
from explorer.training.process import DataScan, RunSettings
from explorer.training.remote_run import local_run_state, remote_name, run_entry_text
from explorer.training.workspace import TrainingPanel


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    yield from running_sshd(tmp_path_factory)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Fetched files go to this test's folder, not the user's cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def click(qtbot, button) -> None:
    assert button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


# -- no server needed -----------------------------------------------------------------------


def test_a_remote_call_that_breaks_unexpectedly_still_answers(qtbot):
    """A defect in a call (not a RemoteError or OSError) comes back as ``failed`` with its
    words; the page that waits on it is never left fetching forever."""
    from explorer.training.remote_run import BlockingCall

    def broken():
        raise KeyError("sha256")

    call = BlockingCall(broken)
    with qtbot.waitSignal(call.failed, timeout=10_000) as blocker:
        call.start()
    assert blocker.args == ["unexpected KeyError: 'sha256'"]
    assert call.done
    ok = BlockingCall(lambda: 42)
    with qtbot.waitSignal(ok.succeeded, timeout=10_000) as blocker:
        ok.start()
    assert blocker.args == [42] and ok.done


def test_the_copied_command_starts_the_same_run_from_a_terminal():
    from explorer.training.remote_run import HostChoice

    settings = RunSettings().with_values(data_dir="~/data", out="run-1", max_steps=40, gpus=2)
    text = remote_command(settings, HostChoice("gpubox", "~/venv/bin/python", "~/r", "~/cfg"))
    assert text.startswith(
        "realnvp remote --ssh-config '~/cfg' gpubox train --python '~/venv/bin/python' "
        "--runs-dir '~/r' --gpus 2 --out run-1 --dataset mnist --data-dir data/mnist"[:80]
    )
    # The host's paths as typed: its agent expands ~ there (a relative --resume or --out is
    # inside the runs folder, so ~/ cannot be dropped to mean the home).
    assert "--data-dir '~/data' " in text and "--max-steps 40" in text
    assert "--progress" not in text
    resumed = RunSettings().with_values(resume="~/realnvp-runs/run-1/latest.pt", out="~/elsewhere")
    text = remote_command(resumed, HostChoice("gpubox"))
    assert "--out '~/elsewhere' --resume '~/realnvp-runs/run-1/latest.pt' " in text


def test_a_followed_run_shows_the_command_that_follows_it_from_a_terminal():
    run = RemoteRun("/h/runs/run 1", "gpubox", "~/venv/bin/python", None, "~/runs")
    assert run.follow_command() == (
        "realnvp remote gpubox follow --python '~/venv/bin/python' --runs-dir '~/runs' "
        "'/h/runs/run 1'"
    )


def test_a_remote_path_is_named_inside_its_run_folder():
    run = RemoteRun("/home/u/runs/run-1", "gpubox")
    assert remote_name("/home/u/runs/run-1/samples/step_10.png", run) == "samples/step_10.png"
    assert remote_name("/etc/passwd", run) is None


def test_recent_runs_name_host_and_state(tmp_path):
    (tmp_path / "events.jsonl").write_text(
        '{"event": "start", "step": 0, "total_steps": 40}\n'
        '{"event": "step", "step": 20, "total_steps": 40, "loss": 3.0}\n'
        '{"event": "done", "step": 20, "reason": "stopped"}\n'
    )
    assert local_run_state(tmp_path) == ("stopped", 20, 40)
    assert local_run_state(tmp_path / "gone") == ("missing", None, None)
    remote = {"out": "/h/runs/run-7", "host": "gpubox", "state": "running", "step": 1200}
    assert run_entry_text({**remote, "max_steps": 5000}) == (
        "run-7 on gpubox — running (step 1,200 / 5,000)"
    )
    assert run_entry_text({"out": str(tmp_path), "host": None}).endswith(
        "on this computer — stopped (step 20 / 40)"
    )


# -- against the server ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "sentence"),
    [
        ("rnvp-wrongkey", "use a key or an agent for rnvp-wrongkey"),
        ("rnvp-refused", "rnvp-refused refused the connection"),
    ],
)
def test_a_bad_host_is_one_sentence_and_start_stays_off(
    qtbot, sshd, explorer_settings, alias, sentence
):
    panel = TrainingPanel(probe_devices=False, settings=explorer_settings)
    qtbot.addWidget(panel)
    choose_host(qtbot, panel.form, sshd, alias)
    click(qtbot, panel.form.check_host_button)
    qtbot.waitUntil(lambda: sentence in panel.form.host_status.text(), timeout=30_000)
    assert not panel.start_button.isEnabled()
    assert sentence in panel.reason.text()
    assert "Traceback" not in panel.form.host_status.text()
    # Remembered for the next start of the app.
    assert explorer_settings.remote_host["host"] == alias
    assert explorer_settings.remote_host["run_on"] == "ssh"


@needs_mnist
@pytest.mark.slow
def test_a_run_on_the_host_is_followed_stopped_fetched_and_listed(
    qtbot, sshd, make_window, explorer_settings
):
    window = make_window()
    window.resize(1366, 768)
    window.show_page("training")
    panel = window.training_panel
    form = panel.form
    choose_host(qtbot, form, sshd)
    click(qtbot, form.check_host_button)
    qtbot.waitUntil(lambda: form.host_facts is not None, timeout=60_000)
    assert "CPU cores" in form.host_status.text()
    # The data folder is the host's, and the data check ran there.
    type_into(qtbot, form.data_dir, str(MNIST_DIR))
    qtbot.waitUntil(
        lambda: form.scan_report is not None and form.scan_report.finished, timeout=60_000
    )
    assert form.scan_report.error is None and form.scan_report.train == 60_000
    for spin, value in (
        (form.batch_size, 16),
        (form.eval_every, 10),
        (form.eval_limit, 64),
        (form.log_every, 2),
        (form.threads, 1),
    ):
        spin.setValue(value)
    form.length_unit.setCurrentIndex(form.length_unit.findData("steps"))
    form.length.setValue(400)
    qtbot.waitUntil(lambda: panel.start_button.isEnabled(), timeout=10_000)
    assert panel.command.text().startswith("realnvp remote --ssh-config")

    click(qtbot, panel.start_button)
    qtbot.waitUntil(lambda: panel.remote_run is not None, timeout=60_000)
    run = panel.remote_run
    assert run.host == sshd.alias and Path(run.out).parent == sshd.root / "runs"
    assert sshd.alias in panel.where.text() and run.out in panel.where.text()
    # Curves and previews fill from the host's events; the grid is a fetched local copy.
    qtbot.waitUntil(
        lambda: len(panel.train_points[0]) >= 3 and panel.sample_step is not None,
        timeout=120_000,
    )
    assert Path(panel._samples[0]).is_file()
    assert not panel._samples[0].startswith(run.out)
    assert f"Training on {sshd.alias}" in window.training_status.button.text()

    # Cut the follow stream's ssh: the page says so and retries; the run never notices.
    follower = panel.process.follower
    follower.process.kill()
    qtbot.waitUntil(lambda: "retrying in" in panel.connection.text(), timeout=30_000)
    assert "retrying in" in window.training_status.button.toolTip()
    seen = len(panel.train_points[0])
    qtbot.waitUntil(
        lambda: panel.connection.isHidden() and len(panel.train_points[0]) > seen + 2,
        timeout=60_000,
    )
    assert follower.reconnects >= 1

    click(qtbot, panel.stop_button)
    qtbot.waitUntil(lambda: not panel.running, timeout=120_000)
    events = [
        json.loads(line) for line in Path(run.out, "events.jsonl").read_text().split("\n") if line
    ]
    assert events[-1]["event"] == "done" and events[-1]["reason"] in ("stopped", "finished")
    # Through the cut connection no event was lost or shown twice.
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert panel.train_points[0] == steps
    assert panel.checkpoint == str(Path(run.out) / "latest.pt")
    assert explorer_settings.recent_runs()[0]["state"] in ("stopped", "done")

    with qtbot.waitSignal(window.model_opened, timeout=60_000):
        click(qtbot, panel.open_button)
    origin, fetched = window.model_panel.values["source"].toolTip().splitlines()
    assert origin == f"{sshd.alias}:{run.out}/latest.pt"
    assert window.model_panel.values["source"].text() == origin
    local = Path(fetched.removeprefix("fetched to "))
    assert local.read_bytes() == Path(run.out, "latest.pt").read_bytes()
    assert sshd.alias in window.windowTitle()

    # File > Recent Runs lists it with its state; opening it re-attaches from the start.
    window.menus.fill_recent_runs()
    entry = next(
        a for a in window.menus.recent_runs_menu.actions() if a.text().startswith(f"{run.name} on ")
    )
    assert entry.text().startswith(f"{run.name} on {sshd.alias} — stopped")
    entry.trigger()
    assert window.current_page == "training"
    qtbot.waitUntil(lambda: not panel.running and panel.train_points[0] == steps, timeout=60_000)
    assert panel.remote_run == run and sshd.alias in panel.where.text()
    assert form.remote and form.host.text() == sshd.alias
    assert panel.command.text().startswith(f"realnvp remote --ssh-config {sshd.config} ")
    assert form.batch_size.value() == 16 and form.out.text() == run.out

    # A run folder on the host that holds a run is refused there, in one sentence.
    qtbot.waitUntil(lambda: panel.start_button.isEnabled(), timeout=60_000)
    click(qtbot, panel.start_button)
    qtbot.waitUntil(lambda: not panel.running, timeout=60_000)
    assert "already holds" in panel.message.text() and "Traceback" not in panel.message.text()
    assert panel.message.text().count("\n") == 0
    assert panel.where.isHidden()

    # The host check that re-attaching started has answered before the window goes.
    qtbot.waitUntil(lambda: not form.checking_host, timeout=60_000)


def test_recent_runs_asks_a_host_once_at_a_time_however_often_it_opens(
    qtbot, sshd, make_window, explorer_settings, monkeypatch
):
    """File > Recent Runs asks the host about a run it last saw running as it opens; opened
    again and again before the host answers, it starts no second question (each one is an
    ssh session: dozens at once went past sshd's session limit and crowded the machine)."""
    from explorer import menus
    from explorer.training.remote_run import BlockingCall

    started: list[str] = []

    class Counted(BlockingCall):
        def start(self):
            started.append("status")
            return super().start()

    monkeypatch.setattr(menus, "BlockingCall", Counted)
    out = sshd.root / "runs" / "run-asked-once"
    out.mkdir(parents=True, exist_ok=True)
    start = {"event": "start", "time": time.time(), "step": 0, "total_steps": 40}
    step = {"event": "step", "time": time.time(), "step": 10, "loss": 3.0, "total_steps": 40}
    done = {"event": "done", "time": time.time(), "step": 40, "reason": "finished"}
    (out / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in (start, step, done)))
    run = RemoteRun(str(out), sshd.alias, sshd.python, str(sshd.config), str(sshd.root / "runs"))
    explorer_settings.remember_run({**run.to_dict(), "state": "running", "step": 10})
    window = make_window()
    for _ in range(30):
        window.menus.fill_recent_runs()
    assert started == ["status"] and window.menus.asking_now()
    entry = f"{run.name} on {sshd.alias} — "
    qtbot.waitUntil(lambda: not window.menus.asking_now(), timeout=60_000)
    # The answer: the run has finished, and the entry says so without being reopened.
    action = window.menus.run_actions[(sshd.alias, run.out)]
    assert action.text().startswith(entry + "done")
    assert explorer_settings.recent_runs()[0]["state"] == "done"
    # A finished run is not asked about again.
    window.menus.fill_recent_runs()
    assert started == ["status"]


def test_closing_the_window_ends_the_shared_connections_it_opened(qtbot, sshd, make_window):
    window = make_window()
    window.show_page("training")
    form = window.training_panel.form
    choose_host(qtbot, form, sshd)
    click(qtbot, form.check_host_button)
    qtbot.waitUntil(lambda: form.host_facts is not None, timeout=60_000)
    assert len(sshd.clients()) == 1 and len(sshd.sessions()) == 1  # the shared connection
    window.close()
    # Not left to live on for ControlPersist's two minutes after the app has gone.
    qtbot.waitUntil(lambda: not sshd.clients() and not sshd.sessions(), timeout=10_000)


@pytest.fixture
def home_python(sshd):
    """The host's Python as ``~/...``, the form ``docs/remote.md`` recommends: a link in a
    folder of the home (the host's home is this machine's)."""
    folder = Path(tempfile.mkdtemp(prefix=".rnvp-test-", dir=Path.home()))
    (folder / "python").symlink_to(sshd.python)
    yield f"~/{folder.name}/python"
    shutil.rmtree(folder)


def wait_for(predicate, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@needs_mnist
@pytest.mark.slow
def test_every_host_operation_runs_with_a_home_relative_python(qtbot, sshd, home_python, tmp_path):
    """check, the form's data check, start, status, follow, stop, kill and fetch: each
    command sent to the host goes through the one argv builder, so ``~/`` is the host's."""
    host = sshd.host(python=home_python)
    assert host.check().problem is None
    scan = DataScan("mnist", str(MNIST_DIR), parent=None, host=host)
    scan.start()
    qtbot.waitUntil(lambda: scan.report.finished, timeout=60_000)
    assert scan.report.error is None and scan.report.train == 60_000
    long_run = [*TRAIN, "--max-steps", "5000", "--eval-every", "5000"]
    run = host.start(long_run)
    follower = host.follow(run)
    for update in follower:
        if update.kind == "event" and update.event["event"] == "step":
            follower.close()
    assert follower.offset > 0
    assert host.status(run).state == "running"
    host.stop(run)
    assert list(host.follow(run))[-1].state == "stopped"
    fetched = host.fetch(run, tmp_path, names=["latest.pt"])
    assert fetched.files == [tmp_path / "latest.pt"]
    killed = host.start(long_run)
    wait_for(lambda: host.status(killed).step >= 2)
    host.kill(killed)
    wait_for(lambda: host.status(killed).alive is False, 30)
    assert host.status(killed).message == "killed"


@pytest.mark.parametrize("size", [(1024, 640), (1366, 768)])
@pytest.mark.slow
def test_the_page_with_a_host_and_a_running_run_keeps_the_window_size(qtbot, make_window, size):
    """The host's rows, a long run folder on the host, the start event's facts and the
    status bar's host name never widen the window past the size asked for."""
    window = make_window()
    window.resize(*size)
    window.show_page("training")
    panel = window.training_panel
    qtbot.mouseClick(panel.form.run_on, Qt.MouseButton.LeftButton)
    panel.form.set_remote(True)
    assert panel.form.host.isVisible() and not panel.form.data_browse.isVisible()
    panel._set_remote(RemoteRun("/home/someone/realnvp-runs/run-20261205-084755-long-name", "gpu"))
    panel.info.setText(
        "928,123 parameters · cpu (1 thread) · bf16 · 60,000 training / 10,000 test images"
    )
    panel.rate.setText("130 images/s · ETA 8 min 21 s")
    status = window.training_status
    status.set_host("a-rather-long-host-name.example.org")
    status.started()
    status.progressed(224, 2000, "ETA 8 min 21 s")
    status.set_connection("lost the connection to a-rather-long-host-name, retrying in 5 s")
    qtbot.wait(300)  # the layouts take in the new texts
    window.resize(*size)
    qtbot.wait(300)
    assert (window.width(), window.height()) == size
    assert "retrying in 5 s" in status.button.toolTip()

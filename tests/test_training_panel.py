"""The training panel against the real trainer: short CPU runs on a tiny folder of images.

Every run uses a tiny model on 8x8 grayscale images with one torch thread, so a step takes
milliseconds; the runs are open-ended (``--max-steps`` large) and each test ends its own.
No test asserts a duration.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt
from sshd import choose_host, running_sshd

from core.config import DATASET_GEOMETRY, geometry_problem
from core.runs.folder import EVENTS_FILE, STOP_FILE, parse_event, pid_alive
from core.runs.folder import read_events as read_event_log
from explorer.training.process import DATASET_LABELS, PRESETS, RunSettings
from explorer.training.run_controller import LEAVE, STOP
from explorer.training.workspace import TrainingPanel

WAIT_MS = 60_000


def tiny_run(data_dir: Path, out: Path, **changes) -> RunSettings:
    settings = RunSettings().with_values(
        dataset="folder",
        data_dir=str(data_dir),
        in_channels=1,
        image_size=8,
        preset=None,
        num_scales=2,
        mid_channels=4,
        num_blocks=1,
        batch_size=8,
        max_steps=1_000_000,  # runs until the test stops it
        eval_every=5,
        eval_limit=8,
        log_every=1,
        threads=1,
        out=str(out),
    )
    return settings.with_values(**changes)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 random 8x8 grayscale PNGs."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture
def make_panel(qtbot, tmp_path: Path):
    """``make_panel(probe_devices=False)``: a shown panel; a run it still has at the end of
    the test is killed before the panel closes."""

    def kill_run(panel: TrainingPanel) -> None:
        if panel.running:
            panel.kill()
            qtbot.waitUntil(lambda: not panel.running, timeout=WAIT_MS)

    def make(probe_devices: bool = False) -> TrainingPanel:
        panel = TrainingPanel(runs_dir=tmp_path / "runs", probe_devices=probe_devices)
        # Never a modal dialog in a test: closing with a run still going kills it.
        panel.close_prompt = lambda parent, out: panel.kill() or "cancel"
        qtbot.addWidget(panel, before_close_func=kill_run)
        panel.resize(1100, 760)
        panel.show()
        return panel

    return make


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    yield from running_sshd(tmp_path_factory)


@pytest.fixture(params=["local", "ssh"])
def on_host(request, qtbot):
    """``on_host(panel)``: point the panel's form at where the case runs: this computer, or
    the loopback ssh host (``tests/sshd.py``; its files are this machine's, so the same
    folders serve), checked there. The page's cases run for both: one code path."""

    def here(panel: TrainingPanel) -> None:
        pass

    here.remote = False

    def over_ssh(panel: TrainingPanel) -> None:
        choose_host(qtbot, panel.form, server)
        qtbot.mouseClick(panel.form.check_host_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: panel.form.host_facts is not None, timeout=WAIT_MS)

    if request.param == "local":
        return here
    server = request.getfixturevalue("sshd")
    over_ssh.remote = True
    return over_ssh


def process_gone(pid: int) -> bool:
    """No such process, or only its zombie waiting for its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def start_when_ready(qtbot, panel: TrainingPanel, settings: RunSettings) -> None:
    panel.form.apply(settings)
    panel.form.start_scan()
    qtbot.waitUntil(panel.start_button.isEnabled, timeout=WAIT_MS)
    panel.start_button.click()
    assert panel.running


def wait_gone(pid: int) -> None:
    """Wait for a process of ours that no QProcess watches any more, and reap it."""
    for _ in range(600):
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:  # someone else reaped it
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} did not end")


# -- without Qt or processes ----------------------------------------------------------------


def test_gui_process_never_imports_torch():
    """The page loads only the torch-free remote-run API of ``core`` (runs on ssh hosts),
    its settings' resources path, and never torch."""
    code = (
        "import sys, explorer.training.workspace; print('torch' in sys.modules); "
        "print(*sorted(m for m in sys.modules if m.startswith('core')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    torch_loaded, core_modules = out.stdout.splitlines()
    assert torch_loaded == "False"
    allowed = {"core", "core.config", "core.training", "core.files", "core.files.format_version"}
    allowed |= {"core.files.resources", "core.runs", "core.runs.folder", "core.runs.host"}
    allowed |= {"core.runs.transport", "core.runs.hosts", "core.runs.slurm", "core.files.atomic"}
    allowed |= {"core.runs.cluster"}  # the Slurm cluster's partitions (Run on: Slurm)
    assert set(core_modules.split()) <= allowed


def test_constants_written_out_agree_with_core():
    from core.flow.model import PRESETS as CORE_PRESETS
    from core.flow.model import FlowConfig
    from core.runs.stopping import STOP_FILE as CORE_STOP_FILE
    from core.training.datasets import DATASETS, dataset_geometry

    assert STOP_FILE == CORE_STOP_FILE
    assert set(DATASET_LABELS) == set(DATASETS)
    assert {k: (c.num_scales, c.mid_channels, c.num_blocks) for k, c in CORE_PRESETS.items()} == (
        PRESETS
    )
    for name, geometry in DATASET_GEOMETRY.items():
        assert dataset_geometry(name, None, None) == geometry
    for size in range(2, 40):
        for scales in range(1, 5):
            try:
                FlowConfig(image_size=size, num_scales=scales)
                fits = True
            except ValueError:
                fits = False
            assert (geometry_problem(size, scales) is None) == fits, (size, scales)


def test_command_lines_are_accepted_by_the_trainer(tmp_path: Path):
    from core.cli import build_parser

    folder = tiny_run(tmp_path / "imgs", tmp_path / "out", lr=3e-4, flip=True)
    mnist = RunSettings().with_values(data_dir="data", out="runs/a", epochs=3, download=True)
    resume = RunSettings().with_values(
        resume=str(tmp_path / "out" / "latest.pt"), out=str(tmp_path / "out")
    )
    multi = RunSettings().with_values(data_dir="data", out="runs/b", gpus=2, device="auto")
    for settings in (folder, mnist, resume, multi):
        argv = settings.command("python")
        start = argv.index("core") + 1
        args = build_parser().parse_args(argv[start:])
        assert args.progress == "json"
        assert Path(args.out).is_absolute()
    assert folder.command()[:4] == [sys.executable, "-m", "core", "train"]
    assert "--preset" in mnist.command() and "mnist-small" in mnist.command()
    assert "--num-scales" in folder.command() and "--lr" in folder.command()
    assert "--dataset" not in resume.command() and "--resume" in resume.command()
    assert multi.command()[1:6] == [
        "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"
    ]  # fmt: skip
    assert multi.command()[multi.command().index("--device") + 1] == "cuda"
    shell = folder.shell_command()
    assert shell.endswith(f"2>> {tmp_path / 'out' / 'trainer.log'}")


def test_the_event_reader_keeps_partial_lines_and_split_characters(tmp_path: Path):
    """The one reader of a run's files (the agent's follow and a reopened run): whole lines
    only, a multi-byte character cut between two writes kept whole."""
    from core.runs.folder import complete_lines

    path = tmp_path / EVENTS_FILE
    text = '{"event": "eval", "test_bpd": 1.5, "note": "é"}\n'.encode()
    cut = text.index("é".encode()) + 1  # inside the two bytes of é
    path.write_bytes(text[:cut])
    assert complete_lines(path, 0) == ([], 0)
    with path.open("ab") as f:
        f.write(text[cut:] + b'{"event": "st')
    lines, offset = complete_lines(path, 0)
    assert [raw.decode() for _, raw in lines] == [text.decode().rstrip("\n")]
    with path.open("ab") as f:
        f.write(b'ep"}\r\n')
    assert complete_lines(path, offset)[0] == [(path.stat().st_size, b'{"event": "step"}')]
    assert parse_event('{"event": "eval", "test_bpd": null}') == {"event": "eval", "test_bpd": None}
    assert parse_event("not json") is None and parse_event("[1]") is None


# -- the panel: settings ----------------------------------------------------------------------


@pytest.mark.slow
def test_invalid_settings_keep_start_disabled(qtbot, make_panel, image_folder, tmp_path):
    panel = make_panel()
    form = panel.form
    # Before a data folder is checked, the Data box keeps no room for the check's words and
    # thumbnails: no blank space under the folder.
    assert not form.data_status.isVisibleTo(panel) and not form.thumbnails.isVisibleTo(panel)
    good = tiny_run(image_folder, tmp_path / "run")
    form.apply(good)
    form.start_scan()
    qtbot.waitUntil(panel.start_button.isEnabled, timeout=WAIT_MS)
    assert form.data_status.text() == "40 readable images"
    assert len(form.thumbnails.labels) == 8
    assert form.data_status.isVisibleTo(panel) and form.thumbnails.isVisibleTo(panel)
    assert str(image_folder) in panel.full_command  # Copy: full paths, works anywhere
    assert panel.command.text().startswith("cd ") and " --out . " in panel.command.text()
    assert str(Path(sys.executable).parent) not in panel.command.text()

    cases = [
        (dict(image_size=9), "do not fit 2 scales"),
        (dict(lr=float("nan")), "learning rate"),
        (dict(batch_size=64), "fewer than one batch"),
        (dict(out=""), "output folder"),
        (dict(resume=str(tmp_path / "missing.pt")), "no checkpoint file"),
    ]
    for change, reason in cases:
        panel.form.apply(good.with_values(**change))
        assert not panel.start_button.isEnabled(), change
        assert reason in panel.reason.text(), (change, panel.reason.text())
        assert panel.start() is False
    panel.form.apply(good)
    panel.form.lr.setText("fast")
    assert "learning rate" in panel.reason.text()
    panel.form.lr.setText("1e-3")
    assert panel.start_button.isEnabled()


@pytest.mark.slow
def test_the_form_keeps_the_trainers_run_folder_rule(qtbot, make_panel, image_folder, tmp_path):
    """The form refuses what the trainer would (core.runs.folder), in its own words:
    a finished run's folder until Start afresh is ticked, and a folder a live run holds."""
    import json
    import socket

    from PySide6.QtCore import Qt

    out = tmp_path / "run"
    out.mkdir()
    (out / "latest.pt").write_bytes(b"weights")
    with (out / EVENTS_FILE).open("w") as f:
        for event in (
            {"event": "start", "step": 0, "total_steps": 40},
            {"event": "step", "step": 40, "loss": 3.0},
            {"event": "done", "step": 40, "reason": "finished"},
        ):
            f.write(json.dumps(event) + "\n")
    panel = make_panel()
    panel.form.apply(tiny_run(image_folder, out))
    panel.form.start_scan()
    qtbot.waitUntil(lambda: "already holds" in panel.reason.text(), timeout=WAIT_MS)
    assert "a finished run (step 40 of 40)" in panel.reason.text()
    assert "tick Start afresh" in panel.reason.text()
    assert not panel.start_button.isEnabled()

    box = panel.form.overwrite
    qtbot.mouseClick(box, Qt.MouseButton.LeftButton, pos=box.rect().center())
    assert box.isChecked()
    qtbot.waitUntil(panel.start_button.isEnabled, timeout=WAIT_MS)
    assert "--overwrite" in panel.form.settings().command()

    (out / "run.lock").write_text(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
    )
    panel.form.changed.emit()
    assert f"in use by another run: process {os.getpid()}" in panel.reason.text()
    assert not panel.start_button.isEnabled()


@pytest.mark.slow
def test_the_data_check_names_the_files_it_skips(qtbot, make_panel, image_folder, tmp_path):
    import shutil

    folder = tmp_path / "mixed"
    shutil.copytree(image_folder, folder)
    (folder / "notes.png").write_text("not an image")
    (folder / "sub").mkdir()
    (folder / "sub" / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    panel = make_panel()
    panel.form.apply(tiny_run(folder, tmp_path / "run"))
    panel.form.start_scan()
    qtbot.waitUntil(lambda: "readable images" in panel.form.data_status.text(), timeout=WAIT_MS)
    assert panel.form.data_status.text() == (
        "40 readable images (2 unreadable files skipped: notes.png, sub/cut.jpg)"
    )


def test_opening_a_run_folder_that_does_not_exist_says_so(make_panel, tmp_path):
    panel = make_panel()
    missing = tmp_path / "no-such-run"
    assert panel.open_run(missing) is False
    assert panel.message.text() == f"{missing}: no such folder"
    assert not missing.exists()


@pytest.mark.slow
def test_empty_folder_is_refused_and_devices_are_listed(qtbot, make_panel, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    panel = make_panel(probe_devices=True)
    panel.form.apply(tiny_run(empty, tmp_path / "run"))
    panel.form.start_scan()
    qtbot.waitUntil(lambda: "no image files" in panel.reason.text(), timeout=WAIT_MS)
    assert "no image files" in panel.form.data_status.text()
    assert not panel.start_button.isEnabled()
    qtbot.waitUntil(lambda: panel.form.devices_probed, timeout=WAIT_MS)
    names = [panel.form.device.itemData(i) for i in range(panel.form.device.count())]
    assert names[:2] == ["auto", "cpu"]


# -- the panel: real runs ---------------------------------------------------------------------


@pytest.mark.slow
def test_run_shows_progress_and_stop_keeps_a_checkpoint(
    qtbot, make_panel, on_host, image_folder, tmp_path
):
    panel = make_panel()
    on_host(panel)
    panel.open_when_done.setChecked(True)
    out = tmp_path / "run"
    ready, opened = [], []
    panel.checkpoint_ready.connect(ready.append)
    panel.open_checkpoint_requested.connect(opened.append)
    start_when_ready(qtbot, panel, tiny_run(image_folder, out))
    assert not panel.start_button.isEnabled() and panel.stop_button.isEnabled()

    qtbot.waitUntil(lambda: panel.sample_step is not None, timeout=WAIT_MS)
    # The curve and the progress bar are redrawn a moment after the events.
    qtbot.waitUntil(lambda: panel.train_curve.getData()[0] is not None, timeout=WAIT_MS)
    assert len(panel.train_curve.getData()[0]) >= 1
    qtbot.waitUntil(lambda: panel.progress.value() > 0, timeout=WAIT_MS)
    assert panel.progress.maximum() == 1_000_000
    assert "images/s" in panel.rate.text()
    assert len(panel.test_points[0]) >= 1 and not panel.samples.image.isNull()
    start = next(e for e in read_event_log(out) if e["event"] == "start")
    assert start["precision"] in panel.info.text().split(" · ")  # what auto chose, and why
    assert start["precision_reason"] in panel.info.toolTip()

    with qtbot.waitSignal(panel.training_stopped, timeout=WAIT_MS) as stopped:
        panel.stop_button.click()
    assert stopped.args == ["stopped"]
    events = read_event_log(out)
    done = [e for e in events if e["event"] == "done"]
    assert done and done[-1]["reason"] == "stopped"
    assert (out / "latest.pt").is_file()
    assert ready == [str(out / "latest.pt")]
    qtbot.waitUntil(lambda: bool(opened), timeout=WAIT_MS)  # a host's is fetched first
    qtbot.waitUntil(panel.open_button.isEnabled, timeout=WAIT_MS)
    if on_host.remote:
        assert Path(opened[0]).read_bytes() == (out / "latest.pt").read_bytes()
        assert panel.message.text().startswith("Fetched latest.pt from ")
    else:
        assert opened == ready and "Stopped at step" in panel.message.text()
        assert "already holds a stopped run" in panel.reason.text()  # the folder holds it

    # The run reopened from its folder shows the same curves.
    again = make_panel()
    assert again.open_run(out)
    assert again.train_points == panel.train_points
    assert again.test_points == panel.test_points
    qtbot.waitUntil(lambda: again.sample_step == panel.sample_step, timeout=WAIT_MS)
    assert again.checkpoint == str(out / "latest.pt")
    assert again.follower is None  # the run has ended: nothing more to follow


@pytest.mark.slow
def test_stop_through_the_file_alone_saves(qtbot, make_panel, image_folder, tmp_path):
    """Stop is the stop file alone, on every platform and under torchrun; a stop asked for
    before the trainer has started is asked again once it has."""
    out = tmp_path / "run"
    out.mkdir()
    (out / STOP_FILE).touch()  # a stale one, left by an earlier run: the trainer ignores it
    panel = make_panel()
    start_when_ready(qtbot, panel, tiny_run(image_folder, out))
    qtbot.waitUntil(lambda: panel.last_step >= 2, timeout=WAIT_MS)
    with qtbot.waitSignal(panel.training_stopped, timeout=WAIT_MS) as stopped:
        panel.stop_button.click()
    assert stopped.args == ["stopped"]
    done = [e for e in read_event_log(out) if e["event"] == "done"]
    assert done[-1]["reason"] == "stopped" and done[-1]["step"] >= 2
    assert (out / "latest.pt").is_file() and not (out / STOP_FILE).exists()

    again = make_panel()
    start_when_ready(qtbot, again, tiny_run(image_folder, tmp_path / "early"))
    with qtbot.waitSignal(again.training_stopped, timeout=WAIT_MS) as stopped:
        again.stop_button.click()  # at once: the trainer has not said start yet
    assert stopped.args == ["stopped"]
    done = [e for e in read_event_log(tmp_path / "early") if e["event"] == "done"]
    assert done and done[-1]["reason"] == "stopped"


@pytest.mark.slow
def test_trainer_error_is_shown_and_start_comes_back(qtbot, make_panel, on_host, tmp_path):
    bad = tmp_path / "old" / "latest.pt"
    bad.parent.mkdir()
    bad.write_text("this is not a checkpoint")
    panel = make_panel()
    on_host(panel)
    panel.form.apply(
        RunSettings().with_values(resume=str(bad), out=str(tmp_path / "resumed"), threads=1)
    )
    assert panel.start_button.isEnabled(), panel.reason.text()
    with qtbot.waitSignal(panel.training_stopped, timeout=WAIT_MS) as stopped:
        panel.start_button.click()
    assert stopped.args == ["failed"]
    assert panel.message.isVisible()
    assert "exit status 2" in panel.message.text()
    assert str(bad) in panel.message.text()
    assert "error" in panel.log.toPlainText()
    assert panel.start_button.isEnabled() and not panel.stop_button.isEnabled()


@pytest.mark.slow
def test_kill_ends_the_run_at_once(qtbot, make_panel, on_host, image_folder, tmp_path):
    panel = make_panel()
    on_host(panel)
    out = tmp_path / "run"
    start_when_ready(qtbot, panel, tiny_run(image_folder, out))
    qtbot.waitUntil(lambda: panel.last_step > 0, timeout=WAIT_MS)
    pid = json.loads((out / "launch.json").read_text())["pid"]
    with qtbot.waitSignal(panel.training_stopped, timeout=WAIT_MS) as stopped:
        panel.kill_button.click()
    assert stopped.args == ["killed"]
    assert panel.message.text().startswith("Killed at step")
    assert not panel.running and not panel.kill_button.isEnabled()
    qtbot.waitUntil(lambda: process_gone(pid), timeout=10_000)  # its process group ended


@pytest.mark.slow
def test_closing_asks_and_stop_closes_after_the_checkpoint(
    qtbot, make_panel, image_folder, tmp_path
):
    panel = make_panel()  # a window of its own: its closeEvent asks like the main window's
    out = tmp_path / "run"
    start_when_ready(qtbot, panel, tiny_run(image_folder, out))
    qtbot.waitUntil(lambda: panel.last_step > 0, timeout=WAIT_MS)
    asked = []
    panel.close_prompt = lambda parent, run: asked.append(run) or "cancel"
    assert panel.close() is False
    assert panel.running and panel.isVisible() and asked == [str(out)]

    panel.close_prompt = lambda parent, run: STOP
    assert panel.confirm_close(panel) is False  # closes itself once the trainer has saved
    qtbot.waitUntil(lambda: not panel.isVisible(), timeout=WAIT_MS)
    assert not panel.running
    assert read_event_log(out / EVENTS_FILE)[-1]["reason"] == "stopped"
    assert panel.confirm_close(panel) is True


@pytest.mark.slow
def test_leave_running_detaches_the_trainer(qtbot, make_panel, image_folder, tmp_path):
    panel = make_panel()
    out = tmp_path / "run"
    start_when_ready(qtbot, panel, tiny_run(image_folder, out))
    qtbot.waitUntil(lambda: panel.last_step > 0, timeout=WAIT_MS)
    pid = panel.process.pid
    panel.close_prompt = lambda parent, run: LEAVE
    assert panel.confirm_close(panel) is True
    assert not panel.running
    try:
        size = (out / EVENTS_FILE).stat().st_size
        qtbot.waitUntil(lambda: (out / EVENTS_FILE).stat().st_size > size, timeout=WAIT_MS)
        # Reopening its folder follows the run that is still going; the page says whose
        # run it follows (not that the folder is "in use by another run"), and its Stop
        # asks that run to stop through the folder's STOP file.
        viewer = make_panel()
        assert viewer.open_run(out) and viewer.follower is not None
        seen = viewer.last_step
        qtbot.waitUntil(lambda: viewer.last_step > seen, timeout=WAIT_MS)
        said = viewer.reason.text()
        assert said.startswith("Following the run in "), said
        assert "(process " in said and "started outside this window" in said, said
        assert "in use" not in said and not viewer.start_button.isEnabled()
        assert viewer.stop_button.isEnabled() and not viewer.kill_button.isEnabled()
        qtbot.mouseClick(viewer.stop_button, Qt.MouseButton.LeftButton)
        assert (out / STOP_FILE).exists() or not pid_alive(pid)
        assert not viewer.stop_button.isEnabled() and "to stop" in viewer.reason.text()
        qtbot.waitUntil(lambda: viewer.follower is None, timeout=WAIT_MS)  # its done event
        wait_gone(pid)
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            wait_gone(pid)
    assert read_event_log(out)[-1]["reason"] == "stopped"
    assert not viewer.stop_button.isEnabled() and not viewer.reason.text().startswith("Follow")


# -- inside the explorer window -------------------------------------------------------------


@pytest.mark.slow
def test_window_trains_and_opens_the_result(qtbot, make_window, image_folder, tmp_path):
    """From the Training tab: a real run, stopped; its checkpoint opens in the explorer."""
    window = make_window()
    panel = window.training_panel
    assert panel.window() is window
    panel.open_when_done.setChecked(True)
    out = tmp_path / "run"
    start_when_ready(qtbot, panel, tiny_run(image_folder, out))
    qtbot.waitUntil(lambda: panel.sample_step is not None, timeout=WAIT_MS)

    # Closing the window while training asks first; "cancel" keeps both open.
    panel.close_prompt = lambda parent, run_dir: "cancel"
    assert not window.close()
    assert panel.running

    with qtbot.waitSignal(window.model_opened, timeout=WAIT_MS) as opened:
        panel.stop_button.click()
    info = opened.args[0]
    assert info.source == str(out / "latest.pt")
    assert (info.image_size, info.channels) == (8, 1)
    assert window.close()  # nothing running any more: no question


def test_preview_shows_paths_from_the_run_folder_and_a_run_fills_the_form(
    tmp_path: Path, monkeypatch
):
    from explorer.training.command_line import preview_command
    from explorer.training.workspace import settings_of_run

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out, data = tmp_path / "home" / "runs" / "r1", tmp_path / "home" / "data dir" / "mnist"
    settings = RunSettings().with_values(dataset="mnist", data_dir=str(data), out=str(out))
    preview = preview_command(settings, "/opt/venv/bin/python")
    assert preview.startswith("cd ~/runs/r1 && python -m core train --dataset mnist ")
    assert " --data-dir ~/'data dir/mnist' " in preview and " --out . " in preview
    assert preview.endswith(" --progress json --out . >> events.jsonl 2>> trainer.log")
    assert str(tmp_path) not in preview and "/opt/venv" not in preview
    assert str(data) in settings.shell_command() and str(out) in settings.shell_command()

    model = {"in_channels": 1, "image_size": 28, "num_scales": 3, "mid_channels": 16}
    train = {"dataset": "mnist", "data_dir": str(data), "batch_size": 32, "max_steps": 240}
    start = {"event": "start", "model_config": {**model, "num_blocks": 2}, "train_config": train}
    shown = settings_of_run(start, out, RunSettings().with_values(batch_size=64, out="elsewhere"))
    assert (shown.train.data_dir, shown.train.out) == ("~/data dir/mnist", "~/runs/r1")
    assert (shown.preset, shown.train.batch_size, shown.train.max_steps) == ("mnist-small", 32, 240)


@pytest.mark.slow
def test_a_data_folder_typed_with_a_tilde_is_checked(qtbot, make_panel, image_folder, monkeypatch):
    monkeypatch.setenv("HOME", str(image_folder.parent))
    panel = make_panel()
    panel.form.dataset.setCurrentIndex(panel.form.dataset.findData("folder"))
    panel.form.data_dir.setText(f"~/{image_folder.name}")
    panel.form.start_scan()
    qtbot.waitUntil(lambda: not panel.form.checking, timeout=WAIT_MS)
    assert panel.form.data_status.text() == "40 readable images"


def test_after_stop_the_command_box_shows_the_stopped_run_until_a_setting_changes(
    qtbot, make_panel, image_folder, screenshot_dir
):
    panel = make_panel()
    panel.form.apply(tiny_run(image_folder, Path("unused")))
    qtbot.mouseClick(panel.form.out_new, Qt.MouseButton.LeftButton)  # a suggested folder
    run_dir = Path(panel.form.out.text())
    panel.form.start_scan()
    qtbot.waitUntil(panel.start_button.isEnabled, timeout=WAIT_MS)
    qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: panel.last_step > 0, timeout=WAIT_MS)
    with qtbot.waitSignal(panel.training_stopped, timeout=WAIT_MS):
        qtbot.mouseClick(panel.stop_button, Qt.MouseButton.LeftButton)
    assert run_dir.name in panel.message.text()  # the message names the stopped run
    assert Path(panel.form.out.text()) != run_dir  # the form suggests the next run's folder
    # The box shows the command of the run the message is about, and says so.
    assert f"/{run_dir.name} &&" in panel.command.text()
    assert run_dir.name in panel.full_command
    assert "just ended" in panel.command.toolTip()
    qtbot.wait(10)
    assert panel.grab().save(str(screenshot_dir / "item9_after_stop.png"))
    # A setting changed by the person: the box shows the next run's command.
    spin = panel.form.batch_size
    spin.setFocus()
    qtbot.keyClick(spin, Qt.Key.Key_Up)
    next_dir = Path(panel.form.out.text())
    assert (
        f"/{next_dir.name} &&" in panel.command.text() and run_dir.name not in panel.command.text()
    )
    assert "just ended" not in panel.command.toolTip()

"""Shared fixtures. Qt runs offscreen: the platform must be chosen before Qt is imported."""

from __future__ import annotations

import os
import struct
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from core.files.checkpoint import save_checkpoint
from core.flow.model import FlowConfig, RealNVP

ROOT = Path(__file__).resolve().parents[1]
# The one place the tests look for MNIST: the folder in REALNVP_MNIST_DIR, by default the
# shared data folder beside the repository (../shared/data/mnist). Test modules import
# these two names with ``from conftest import MNIST_DIR, needs_mnist``.
MNIST_DIR = Path(os.environ.get("REALNVP_MNIST_DIR") or ROOT.parent / "shared" / "data" / "mnist")
needs_mnist = pytest.mark.skipif(
    not MNIST_DIR.is_dir(), reason=f"MNIST files not found in {MNIST_DIR} (set REALNVP_MNIST_DIR)"
)


def wait_for(predicate, timeout: float = 120.0, what="condition"):
    """``predicate()``'s first true value, polled; past ``timeout`` the test fails saying
    ``what`` (a callable: called then, for the state to show)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


def assert_frame_shows(frame, expected: np.ndarray, images: np.ndarray | None = None) -> None:
    """A frame (or ``images``, the part of it a view shows) shows ``expected`` (uint8,
    computed in float32) as the render plan promises:
    exactly when it was decoded in float32; where the plan chose bf16 frames (measured
    faster, and the same picture), within the same-picture test, one grey level apart on
    at least 99.9% of the pixels. A threaded engine may finish that measurement before any
    frame, and bf16 is faster on some CPUs (a CI run's view was 1 level off on 6 pixels
    of 784)."""
    from core.training.precision import same_picture

    images = np.asarray(frame.images if images is None else images)
    if frame.precision == "float32":
        np.testing.assert_array_equal(images, expected)
        return
    assert frame.precision == "bf16", f"a {frame.precision} frame is not a finished one"
    same, share = same_picture(np.asarray(expected), images)
    assert same, f"a bf16 frame is not the float32 picture: {100 * share:.2f}% within one level"


def force_bf16_faster(monkeypatch, engine) -> None:
    """What a CPU with fast bf16 units (AMX) would measure: the render plan's convolution
    probe and every bf16 decode faster than float32. Each decode still runs, in its
    precision (so the bf16 copy exists when the plan chooses it)."""
    real = engine._timed_decode
    monkeypatch.setattr(engine, "_precision_probe", lambda model_id: {"float32": 4.0, "bf16": 1.0})

    def timed(model_id, batch, threads, model=None, precision="float32"):
        real(model_id, batch, threads, model, precision=precision)
        return (1.0 if precision == "bf16" else 10.0) * batch

    monkeypatch.setattr(engine, "_timed_decode", timed)


@pytest.fixture
def small_mnist(tmp_path: Path) -> Path:
    """A folder in MNIST's format (its four uncompressed IDX files) with 64 training and 24
    test images of random pixels: for tests of the plumbing, not of the model."""
    folder = tmp_path / "small-mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for part, n in (("train", 64), ("t10k", 24)):
        pixels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        header = struct.pack(">IIII", 2051, n, 28, 28)
        (folder / f"{part}-images-idx3-ubyte").write_bytes(header + pixels.tobytes())
        (folder / f"{part}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, n) + labels.tobytes()
        )
    return folder


TINY_CONFIG = FlowConfig(in_channels=1, image_size=8, num_scales=2, mid_channels=4, num_blocks=1)


def perturbed_model(config: FlowConfig = TINY_CONFIG, seed: int = 0, scale: float = 0.05):
    """A model in eval mode whose weights are moved off the identity initialization, so a
    test cannot pass merely because every coupling does nothing."""
    generator = torch.Generator().manual_seed(seed)
    # The initialization draws from the global generator: seed it too (without disturbing
    # it for the caller), or the model, and what a test measures on it, hangs on test order.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RealNVP(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    return model.eval()


@pytest.fixture
def make_perturbed_model():
    """The function :func:`perturbed_model`, for tests that need other configurations."""
    return perturbed_model


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A tiny real model (8x8 pixels, 1 channel, 2 levels) saved as a checkpoint."""
    return save_checkpoint(
        tmp_path / "tiny.pt",
        perturbed_model(),
        meta={"dataset": "tiny-test", "test_bpd": 5.25, "step": 7},
    )


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real single-node Slurm cluster on this machine (tests/slurm.py), one for the whole
    session, its daemons stopped by pid at the end; skips without slurm-wlm and munge."""
    from slurm import running_slurm

    yield from running_slurm(tmp_path_factory)


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> Path:
    """Where tests save the screenshots of the states they check: $REALNVP_SCREENSHOT_DIR,
    to look at them, or a temporary folder."""
    folder = os.environ.get("REALNVP_SCREENSHOT_DIR")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------
# Qt-only fixtures (the explorer). Qt modules are imported inside the fixtures, so the
# core tests never load Qt.
# ---------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _config_outside_home(monkeypatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test's own config folder (core.runs.hosts: the remembered hosts), never the
    user's real one, and nothing remembered from another test."""
    folder = tmp_path_factory.getbasetemp() / "config" / uuid.uuid4().hex
    monkeypatch.setenv("REALNVP_CONFIG_DIR", str(folder))
    return folder


@pytest.fixture(scope="session", autouse=True)
def _qsettings_outside_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Safety net: whatever a test does, QSettings never writes the user's real settings.
    Where Qt is not installed (a GPU machine running only the core tests) there is nothing
    to protect."""
    try:
        from PySide6.QtCore import QSettings
    except ImportError:
        return

    root = str(tmp_path_factory.mktemp("qsettings-session"))
    for fmt in (QSettings.Format.IniFormat, QSettings.Format.NativeFormat):
        for scope in (QSettings.Scope.UserScope, QSettings.Scope.SystemScope):
            QSettings.setPath(fmt, scope, root)


@pytest.fixture
def explorer_settings(tmp_path: Path):
    """Fresh, empty explorer settings in this test's own folder."""
    from PySide6.QtCore import QSettings

    from explorer.settings import ExplorerSettings

    root = tmp_path / "qsettings"
    root.mkdir()
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(root))
    return ExplorerSettings()


@pytest.fixture
def one_torch_thread():
    """Render on one thread (no oversubscription on small CI machines); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_window(qtbot, explorer_settings, one_torch_thread):
    """``make_window(checkpoint=None, threaded=False)``: a shown main window on the CPU.

    Synchronous engine by default, so a frame is on screen as soon as an edit returns.
    """
    from explorer.engine.render import RenderEngine
    from explorer.main_window import MainWindow

    def make(checkpoint: Path | None = None, threaded: bool = False) -> MainWindow:
        window = MainWindow(
            RenderEngine(device="cpu", threaded=threaded), explorer_settings, probe_devices=False
        )
        qtbot.addWidget(window)  # closed (and its engine stopped) after the test
        if checkpoint is not None:
            assert window.open_checkpoint(checkpoint), window.last_error
        window.resize(1000, 700)
        window.show()
        return window

    return make


@pytest.fixture
def dark_theme(qapp):
    """The app's own look (Fusion, dark palette); the test style and palette come back after."""
    from explorer.theme import apply_dark_theme

    style, palette = qapp.style().name(), qapp.palette()
    apply_dark_theme(qapp)
    yield
    qapp.setStyle(style)
    qapp.setPalette(palette)

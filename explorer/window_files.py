"""The main window's files: the File menu's dialogs (open a checkpoint, save the grid, the
selected image or the latent state, load a state), the saving itself with its message in
the status bar or its error for the user, and the drawings added to the gallery (saved as
PNG, then imported as a dropped file is)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtWidgets import QFileDialog

from core.files.images import make_grid, save_png
from explorer.state.state import StateFileError
from explorer.widgets.images import grid_columns

if TYPE_CHECKING:
    from explorer.main_window import MainWindow

CHECKPOINT_FILTER = "Checkpoints (*.pt *.pth *.ckpt);;All files (*)"
STATE_FILTER = "Latent state (*.npz)"
PNG_FILTER = "PNG image (*.png)"


class WindowFiles:
    """Saves and loads what ``window`` shows; a failure is reported through the window."""

    def __init__(self, window: MainWindow) -> None:
        self.window = window
        self._drawings_dir: Path | None = None  # drawings added to the gallery, as PNG
        self._drawing_count = 0

    def save_grid(self, path: str | os.PathLike) -> Path | None:
        """The whole grid at the model's resolution, as PNG."""
        frame = self.window.last_frame
        if frame is None:
            return None
        return self._save_png(make_grid(frame.images, nrow=grid_columns(len(frame.images))), path)

    def save_image(self, path: str | os.PathLike) -> Path | None:
        """The selected image at the model's resolution, as PNG."""
        pixels = self.window.selected_sample()
        return None if pixels is None else self._save_png(pixels.transpose(1, 2, 0), path)

    def _save_png(self, array, path: str | os.PathLike) -> Path | None:
        try:
            saved = save_png(array, path)
        except (OSError, ValueError) as exc:
            self.window.report_error("Cannot save image", f"{path}: {exc}")
            return None
        self.window.statusBar().showMessage(f"Saved {saved}", 5000)
        return saved

    def save_state(self, path: str | os.PathLike) -> Path | None:
        try:
            saved = self.window.state.save_npz(path)
        except OSError as exc:
            self.window.report_error("Cannot save latent state", f"{path}: {exc}")
            return None
        self.window.statusBar().showMessage(f"Saved {saved}", 5000)
        return saved

    def load_state(self, path: str | os.PathLike) -> bool:
        try:
            self.window.state.load_npz(path)
        except StateFileError as exc:
            self.window.report_error("Cannot load latent state", str(exc))
            return False
        self.window.settings.last_dir = str(Path(path).resolve().parent)
        return True

    def add_drawing_to_gallery(self, pixels: np.ndarray) -> Path | None:
        """The drawing becomes a gallery image as a dropped file does: saved as a PNG in
        this session's drawings folder and imported (so a model change re-encodes it)."""
        if self._drawings_dir is None:
            self._drawings_dir = Path(tempfile.mkdtemp(prefix="realnvp-drawings-"))
        self._drawing_count += 1
        path = self._drawings_dir / f"drawing-{self._drawing_count}.png"
        saved = self._save_png(np.asarray(pixels).transpose(1, 2, 0), path)
        if saved is not None:
            self.window.images.import_paths([str(saved)])
        return saved

    # -- the File menu's dialogs ---------------------------------------------------------------

    def _save_path(self, title: str, name: str, filter_: str, suffix: str) -> str | None:
        return self.window.dialogs.save_path(title, name, filter_, suffix)

    def _open_path(self, title: str, filter_: str) -> str:
        path, _ = QFileDialog.getOpenFileName(
            self.window, title, self.window.settings.last_dir, filter_
        )
        return path

    def open_checkpoint_dialog(self) -> None:
        if path := self._open_path("Open checkpoint", CHECKPOINT_FILTER):
            self.window.open_checkpoint(path)

    def save_grid_dialog(self) -> None:
        if path := self._save_path("Save grid", "samples.png", PNG_FILTER, ".png"):
            self.save_grid(path)

    def save_image_dialog(self) -> None:
        if path := self._save_path("Save image", "sample.png", PNG_FILTER, ".png"):
            self.save_image(path)

    def save_state_dialog(self) -> None:
        if path := self._save_path("Save latent state", "view.npz", STATE_FILTER, ".npz"):
            self.save_state(path)

    def load_state_dialog(self) -> None:
        if path := self._open_path("Load latent state", STATE_FILTER):
            self.load_state(path)

"""The main window: menus, panels, status bar, and the wiring between state and engine.

Data flow: a widget edits the :class:`ExplorerState`; the state's ``changed`` event makes
the window build an immutable :class:`RenderRequest` and hand it to the
:class:`RenderEngine`; the engine's ``frame_rendered`` signal brings the pixels back to the
samples panel. The window owns the engine and the task runner (long jobs: imports,
exports) and shuts both down when it closes; the user's own images are wired by the
:class:`~explorer.image_controller.ImageController`.

Layout: model and gallery on the left, the samples in the middle, and tabs on the right:
latent levels, images (the current image, interpolation, mixing), directions, training.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QFileDialog,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from core.checkpoint import CheckpointError
from core.images import make_grid, save_png
from explorer.engine.render import SAMPLES_TARGET, Frame, RenderEngine, RenderRequest
from explorer.models.directions import is_direction_file
from explorer.models.jobs import Progress, Task
from explorer.models.state import ExplorerState, ModelInfo, StateChange, StateFileError
from explorer.panels.image_controller import ImageController
from explorer.panels.importer import classify_drop
from explorer.panels.levels import LatentLevelsPanel
from explorer.panels.model import ModelPanel
from explorer.panels.samples import SamplesPanel, frame_text
from explorer.settings import DEFAULT_CHECKPOINT, ExplorerSettings
from explorer.training.workspace import TrainingPanel
from explorer.widgets.controls import TaskProgress
from explorer.widgets.images import grid_columns
from explorer.widgets.task_runner import TaskRunner

CHECKPOINT_FILTER = "Checkpoints (*.pt *.pth *.ckpt);;All files (*)"
STATE_FILTER = "Latent state (*.npz)"
PNG_FILTER = "PNG image (*.png)"
DEFAULT_GRID = 16
DEFAULT_TEMPERATURE = 0.8  # a little below 1: cleaner strokes, still varied


class MainWindow(QMainWindow):
    """The explorer window. ``engine`` defaults to a threaded engine on the best device."""

    model_opened = Signal(object)  # ModelInfo
    frame_shown = Signal(int)  # request id of the frame now in the samples view

    def __init__(
        self,
        engine: RenderEngine | None = None,
        settings: ExplorerSettings | None = None,
        parent: QWidget | None = None,
        probe_devices: bool = True,
    ) -> None:
        super().__init__(parent)
        self.engine = engine if engine is not None else RenderEngine()
        self.settings = settings if settings is not None else ExplorerSettings()
        self.state = ExplorerState(n_images=DEFAULT_GRID)
        self.last_frame: Frame | None = None
        self.last_error: str | None = None
        self.error_box: QMessageBox | None = None
        self.last_request_id = 0

        self.setWindowTitle("Real NVP Explorer")
        self.setAcceptDrops(True)
        self.tasks = TaskRunner(threaded=self.engine.threaded, parent=self)
        self.samples_panel = SamplesPanel(self.state)
        self.levels_panel = LatentLevelsPanel(self.state)
        self.model_panel = ModelPanel()
        self.images = ImageController(self)
        # probe_devices=False skips the child process that lists CUDA devices (tests).
        self.training_panel = TrainingPanel(probe_devices=probe_devices)
        self.training_panel.open_checkpoint_requested.connect(self._open_trained_checkpoint)
        self.notice = QLabel()
        self.notice.setWordWrap(True)
        self.notice.setStyleSheet(
            "QLabel { background: #5a4510; color: #ffe7a8; padding: 6px 10px; border-radius: 4px; }"
        )
        self.notice.hide()

        left = QSplitter(Qt.Orientation.Vertical)
        left.addWidget(self.model_panel)
        left.addWidget(self.images.gallery_panel)
        left.setStretchFactor(0, 0)
        left.setStretchFactor(1, 1)
        left.setSizes([262, 438])
        self.tabs = QTabWidget()
        self.tabs.addTab(self.levels_panel, "Levels")
        self.tabs.addTab(self.images.images_panel, "Images")
        self.tabs.addTab(self.images.directions_panel, "Directions")
        # In a scroll area: the form's minimum size must not squeeze the other panels.
        training_scroll = QScrollArea()
        training_scroll.setWidgetResizable(True)
        training_scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        training_scroll.setWidget(self.training_panel)
        self.tabs.addTab(training_scroll, "Training")
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(self.samples_panel)
        splitter.addWidget(self.tabs)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setStretchFactor(2, 0)
        splitter.setSizes([230, 600, 490])
        left.setMinimumWidth(190)
        self.tabs.setMinimumWidth(420)
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(8, 8, 8, 4)
        layout.addWidget(self.notice)
        layout.addWidget(splitter, 1)
        self.setCentralWidget(central)

        self.device_label = QLabel(self.engine.device_label)
        self.frame_label = QLabel("no frame yet")
        self.task_progress = TaskProgress()
        status = self.statusBar()
        status.addPermanentWidget(self.task_progress)
        for label in (self.frame_label, self.device_label):
            label.setContentsMargins(8, 0, 8, 0)
            status.addPermanentWidget(label)
        self._build_menus()
        self.task_progress.cancel_requested.connect(self.tasks.cancel_current)
        self.tasks.started.connect(self._on_task_started)
        self.tasks.progressed.connect(self._on_task_progress)
        self.tasks.finished.connect(self._on_task_finished)

        self.state.changed.connect(self._on_state_changed)
        self.engine.frame_rendered.connect(self._on_frame)
        self.engine.render_failed.connect(self._on_render_failed)
        self.engine.plan_changed.connect(self._on_plan_changed)
        self.samples_panel.view.image_selected.connect(self.levels_panel.set_image_index)
        self.samples_panel.view.setFocus()  # not the first spin box: keys act on the window

    # -- menus ------------------------------------------------------------------------------

    def _action(self, text: str, slot, shortcuts=(), tip: str = "") -> QAction:
        action = QAction(text, self)
        action.setShortcuts([QKeySequence(s) for s in shortcuts])
        action.setStatusTip(tip)
        action.triggered.connect(lambda _checked=False: slot())
        self.addAction(action)  # shortcuts work even while the menu bar is hidden
        return action

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        self.open_action = self._action(
            "&Open Checkpoint…", self.open_checkpoint_dialog, [QKeySequence.StandardKey.Open]
        )
        file_menu.addAction(self.open_action)
        self.recent_menu = QMenu("Open &Recent", self)
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        file_menu.addMenu(self.recent_menu)
        file_menu.addSeparator()
        self.save_grid_action = self._action(
            "&Save Grid as PNG…", self.save_grid_dialog, [QKeySequence.StandardKey.Save]
        )
        self.save_image_action = self._action(
            "Save Selected &Image as PNG…", self.save_image_dialog, ["Ctrl+Shift+S"]
        )
        file_menu.addActions([self.save_grid_action, self.save_image_action])
        file_menu.addSeparator()
        self.save_state_action = self._action(
            "Save Latent S&tate…", self.save_state_dialog, ["Ctrl+Alt+S"]
        )
        self.load_state_action = self._action(
            "&Load Latent State…", self.load_state_dialog, ["Ctrl+Alt+O"]
        )
        file_menu.addActions([self.save_state_action, self.load_state_action])
        file_menu.addSeparator()
        self.quit_action = self._action("&Quit", self.close, ["Ctrl+Q"])
        file_menu.addAction(self.quit_action)

        edit_menu = bar.addMenu("&Edit")
        self.undo_action = self._action("&Undo", self.state.undo, ["Ctrl+Z"])
        self.redo_action = self._action("&Redo", self.state.redo, ["Ctrl+Shift+Z", "Ctrl+Y"])
        edit_menu.addActions([self.undo_action, self.redo_action])

        sample_menu = bar.addMenu("&Sample")
        self.resample_action = self._action(
            "&Resample", self.state.resample, ["R"], "New noise for every unlocked level"
        )
        sample_menu.addAction(self.resample_action)

        images = self.images
        images_menu = bar.addMenu("&Images")
        self.import_action = self._action(
            "&Import Images…", images.import_dialog, ["Ctrl+I"], "Encode image files"
        )
        self.import_folder_action = self._action(
            "Import &Folder…", images.import_folder_dialog, ["Ctrl+Shift+I"]
        )
        images_menu.addActions([self.import_action, self.import_folder_action])
        images_menu.addSeparator()
        self.set_a_action = self._action(
            "Use Selected Image as &A",
            lambda: images.gallery_panel.a_button.click(),
            ["Ctrl+1"],
        )
        self.set_b_action = self._action(
            "Use Selected Image as &B",
            lambda: images.gallery_panel.b_button.click(),
            ["Ctrl+2"],
        )
        self.swap_action = self._action("S&wap A and B", images.gallery.swap_ab)
        self.vary_action = self._action(
            "&Keep Coarse, Resample Fine",
            images.keep_coarse_resample_fine,
            ["K"],
            "Variations of the selected image: its coarse levels, new fine levels",
        )
        images_menu.addActions([self.set_a_action, self.set_b_action, self.swap_action])
        images_menu.addAction(self.vary_action)
        images_menu.addSeparator()
        self.export_strip_action = self._action(
            "Export Interpolation &Strip as PNG…", lambda: images.export_dialog("png"), ["Ctrl+E"]
        )
        self.export_gif_action = self._action(
            "Export Interpolation as &GIF…", lambda: images.export_dialog("gif"), ["Ctrl+Shift+E"]
        )
        self.export_mp4_action = self._action(
            "Export Interpolation as &MP4…", lambda: images.export_dialog("mp4"), ["Ctrl+Alt+E"]
        )
        images_menu.addActions(
            [self.export_strip_action, self.export_gif_action, self.export_mp4_action]
        )
        images_menu.addSeparator()
        self.load_direction_action = self._action(
            "Load &Direction…", images.load_direction_dialog, ["Ctrl+Alt+D"]
        )
        self.cancel_action = self._action(
            "&Cancel Import or Export", self.tasks.cancel_all, ["Esc"]
        )
        images_menu.addActions([self.load_direction_action, self.cancel_action])
        self._update_undo_actions()

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        files = self.settings.recent_files()
        for path in files:
            action = self.recent_menu.addAction(Path(path).name)
            action.setToolTip(path)
            action.setStatusTip(path)
            action.triggered.connect(lambda _checked=False, p=path: self.open_checkpoint(p))
        if not files:
            self.recent_menu.addAction("No recent files").setEnabled(False)
        else:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear List", self.settings.clear_recent_files)

    # -- opening models -----------------------------------------------------------------------

    def open_checkpoint(self, path: str | os.PathLike) -> bool:
        """Open ``path``; on failure show why and keep the current model."""
        try:
            info = self.engine.open_checkpoint(path)
        except CheckpointError as exc:
            self.report_error("Cannot open checkpoint", str(exc))
            if str(Path(path).resolve()) in self.settings.recent_files():
                self.settings.remove_recent_file(str(Path(path).resolve()))
            return False
        except (OSError, RuntimeError, ValueError) as exc:  # e.g. out of device memory
            self.report_error("Cannot open checkpoint", f"{path}: {exc}")
            return False
        self.settings.add_recent_file(path)
        self._model_changed(info)
        return True

    def open_default(self, path: str | os.PathLike | None = None) -> bool:
        """The bundled model, or an untrained random one (with a notice) when it is missing
        or unreadable. Returns whether the bundled model was opened."""
        path = Path(path) if path is not None else DEFAULT_CHECKPOINT
        reason = f"The bundled model {path} was not found."
        if path.is_file():
            try:
                self._model_changed(self.engine.open_checkpoint(path))
                return True
            except CheckpointError as exc:
                reason = f"The bundled model could not be read: {exc}"
        self.last_error = reason
        self.open_random(reason)
        return False

    def open_random(self, reason: str = "") -> None:
        info = self.engine.open_random()
        self._model_changed(info)
        self.notice.setText(
            f"<b>Untrained model.</b> {reason} These samples come from random weights; open "
            "a trained checkpoint with File › Open (Ctrl+O) or drop one on the window."
        )
        self.notice.show()

    def open_checkpoint_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open checkpoint", self.settings.last_dir, CHECKPOINT_FILTER
        )
        if path:
            self.open_checkpoint(path)

    def _model_changed(self, info: ModelInfo) -> None:
        self.notice.setVisible(info.untrained)
        self.model_panel.show_info(info)
        self.device_label.setText(info.device)
        name = Path(info.source).name if info.source else "random model"
        self.setWindowTitle(f"{name} — Real NVP Explorer")
        keep_view = self.state.shapes == info.latent_shapes and self.last_frame is not None
        self.state.reset(
            info.latent_shapes,
            temperature=self.state.temperature if keep_view else DEFAULT_TEMPERATURE,
        )
        self.images.model_changed(info)
        self.model_opened.emit(info)

    # -- rendering ---------------------------------------------------------------------------

    def request_render(self) -> int:
        """Send the state's latents to the engine; returns the request id."""
        self.last_request_id += 1
        self.engine.submit(
            RenderRequest(
                self.last_request_id,
                self.engine.model_id,
                tuple(self.state.latents()),
                focus=self.samples_panel.view.selected,
            )
        )
        return self.last_request_id

    def _on_state_changed(self, change: StateChange) -> None:
        self._update_undo_actions()
        if change.levels or change.reset:
            self.request_render()

    def _on_frame(self, frame: Frame) -> None:
        if frame.model_id != self.engine.model_id or frame.target != SAMPLES_TARGET:
            return  # from the model before the one just opened, or for another view
        self.samples_panel.show_frame(frame.images, frame.request_id, frame.stale)
        self.frame_label.setText(frame_text(frame, len(self.state.shapes)))
        self.frame_label.setToolTip(self.engine.render_status)
        if frame.complete:
            self.last_frame = frame
            self.frame_shown.emit(frame.request_id)

    def _on_plan_changed(self, _plan: object) -> None:
        self.frame_label.setToolTip(self.engine.render_status)

    def _on_render_failed(self, message: str) -> None:
        self.statusBar().showMessage(f"Render failed: {message}", 10_000)

    def _update_undo_actions(self) -> None:
        self.undo_action.setEnabled(self.state.can_undo)
        self.redo_action.setEnabled(self.state.can_redo)

    # -- saving -------------------------------------------------------------------------------

    def save_grid(self, path: str | os.PathLike) -> Path | None:
        """The whole grid at the model's resolution, as PNG."""
        if self.last_frame is None:
            return None
        images = self.last_frame.images
        return self._save_png(make_grid(images, nrow=grid_columns(len(images))), path)

    def save_image(self, path: str | os.PathLike) -> Path | None:
        """The selected image at the model's resolution, as PNG."""
        if self.last_frame is None:
            return None
        index = min(self.samples_panel.view.selected, len(self.last_frame.images) - 1)
        return self._save_png(self.last_frame.images[index].transpose(1, 2, 0), path)

    def _save_png(self, array, path: str | os.PathLike) -> Path | None:
        try:
            saved = save_png(array, path)
        except (OSError, ValueError) as exc:
            self.report_error("Cannot save image", f"{path}: {exc}")
            return None
        self.statusBar().showMessage(f"Saved {saved}", 5000)
        return saved

    def save_state(self, path: str | os.PathLike) -> Path | None:
        try:
            saved = self.state.save_npz(path)
        except OSError as exc:
            self.report_error("Cannot save latent state", f"{path}: {exc}")
            return None
        self.statusBar().showMessage(f"Saved {saved}", 5000)
        return saved

    def load_state(self, path: str | os.PathLike) -> bool:
        try:
            self.state.load_npz(path)
        except StateFileError as exc:
            self.report_error("Cannot load latent state", str(exc))
            return False
        self.settings.last_dir = str(Path(path).resolve().parent)
        return True

    def ask_save_path(self, title: str, name: str, filter_: str, suffix: str) -> str | None:
        path, _ = QFileDialog.getSaveFileName(
            self, title, str(Path(self.settings.last_dir) / name), filter_
        )
        if not path:
            return None
        if not path.lower().endswith(suffix):
            path += suffix
        self.settings.last_dir = str(Path(path).parent)
        return path

    def save_grid_dialog(self) -> None:
        if path := self.ask_save_path("Save grid", "samples.png", PNG_FILTER, ".png"):
            self.save_grid(path)

    def save_image_dialog(self) -> None:
        if path := self.ask_save_path("Save image", "sample.png", PNG_FILTER, ".png"):
            self.save_image(path)

    def save_state_dialog(self) -> None:
        if path := self.ask_save_path("Save latent state", "view.npz", STATE_FILTER, ".npz"):
            self.save_state(path)

    def load_state_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Load latent state", self.settings.last_dir, STATE_FILTER
        )
        if path:
            self.load_state(path)

    # -- errors, drops, closing --------------------------------------------------------------

    def report_error(self, title: str, message: str) -> None:
        """Tell the user without blocking: a window-modal box opened with ``open()``; the
        text is also kept in ``last_error`` and shown in the status bar."""
        self.last_error = message
        self.statusBar().showMessage(message, 10_000)
        if self.error_box is not None:
            self.error_box.close()
        self.error_box = QMessageBox(QMessageBox.Icon.Warning, title, message, parent=self)
        self.error_box.open()

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if not paths:
            event.ignore()
            return
        event.acceptProposedAction()
        self.open_paths(paths)

    def open_paths(self, paths: list[str]) -> None:
        """Open what was dropped: a checkpoint (.pt, .pth, .ckpt), state or direction files
        (.npz), and images or folders of images, which are imported."""
        checkpoints, npz_files, images = classify_drop(paths)
        if checkpoints:
            self.open_checkpoint(checkpoints[-1])
        for path in npz_files:
            if is_direction_file(path):
                self.images.load_direction_file(path)
            else:
                self.load_state(path)
        if images:
            self.images.import_paths(images)

    def show_tab(self, widget: QWidget) -> None:
        self.tabs.setCurrentWidget(widget)

    def show_images_tab(self) -> None:
        self.show_tab(self.images.images_panel)

    # -- long jobs ------------------------------------------------------------------------------

    def _on_task_started(self, task: Task) -> None:
        self.task_progress.show_progress(task.name, 0, 0)

    def _on_task_progress(self, task: Task, progress: Progress) -> None:
        self.task_progress.show_progress(task.name, progress.done, progress.total, progress.text)

    def _on_task_finished(self, task: Task) -> None:
        if not self.tasks.busy:
            self.task_progress.hide()

    def restore_geometry(self) -> None:
        """The size and place the window had when it was last closed."""
        geometry = self.settings.geometry
        if geometry is not None:
            self.restoreGeometry(geometry)

    def _open_trained_checkpoint(self, path: str) -> None:
        if self.open_checkpoint(path):
            self.statusBar().showMessage(f"Opened the trained model {path}", 5000)

    def closeEvent(self, event: QCloseEvent) -> None:
        # A running trainer first: the user may cancel, or stop it (the panel closes the
        # window again once the checkpoint is saved), or leave it running.
        if not self.training_panel.confirm_close(self):
            event.ignore()
            return
        self.training_panel.form.shutdown()
        self.tasks.shutdown()  # first: a job may be waiting on the engine
        self.engine.shutdown()
        if self.isVisible():
            self.settings.geometry = self.saveGeometry()
        self.settings.sync()
        super().closeEvent(event)

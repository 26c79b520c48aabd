"""The main window: panels, status bar, and the wiring between state and engine (the
menus are :mod:`explorer.menus`).

Data flow: a widget edits the :class:`ExplorerState`; the state's ``changed`` event makes
the window build an immutable :class:`RenderRequest` and hand it to the
:class:`RenderEngine`; the engine's ``frame_rendered`` signal brings the pixels back to the
samples panel. The window owns the engine and the task runner (long jobs: imports,
exports) and shuts both down when it closes; the user's own images are wired by the
:class:`~explorer.panels.image_controller.ImageController`. Panels get what they use
(engine, state, task runner, file choosers) and speak back through signals; none knows
the window.

Layout: two pages in a stack, switched from the mode bar at the top, the View menu or
Alt+1 / Alt+2 (Ctrl+1 / Ctrl+2 already choose A and B). The explorer page has the model and
gallery on the left, the samples in the middle and tabs on the right (latent levels,
images, directions); the training page gives the training workspace the whole window
(form, curves and previews side by side). A running run stays visible in the status bar
from either page. Splitters, page and tab come back from the settings on the next start.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import (
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
)
from PySide6.QtWidgets import (
    QLabel,
    QMainWindow,
    QMessageBox,
    QSplitter,
    QStackedWidget,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from core.files.checkpoint import CheckpointError
from core.runs.host import RemoteRun
from core.runs.transport import stop_started_masters
from explorer.engine.render import SAMPLES_TARGET, Frame, RenderEngine, RenderRequest
from explorer.menus import EXPLORER_PAGE, PAGES, TABS, TRAINING_PAGE, WindowMenus
from explorer.panels.classes import ClassesPanel
from explorer.panels.draw import DrawPanel
from explorer.panels.image_controller import ImageController
from explorer.panels.importer import classify_drop
from explorer.panels.latent_map import LatentMapPanel
from explorer.panels.levels import LatentLevelsPanel
from explorer.panels.likelihood import SampleLikelihood
from explorer.panels.model import ModelPanel
from explorer.panels.samples import SamplesPanel, frame_text, shown_frame
from explorer.settings import DEFAULT_CHECKPOINT, ExplorerSettings
from explorer.state.directions import is_direction_file
from explorer.state.jobs import ErrorLog
from explorer.state.state import ExplorerState, ModelInfo, StateChange
from explorer.training.status import TrainingStatus
from explorer.training.workspace import TrainingPanel
from explorer.widgets.controls import TaskProgress
from explorer.widgets.dialogs import FileDialogs, ShortcutsDialog
from explorer.widgets.task_runner import TaskRunner
from explorer.window_files import WindowFiles
from explorer.window_layout import COLUMN_STRETCH, TABS_MIN_WIDTH, WindowLayout

DEFAULT_GRID = 16
DEFAULT_TEMPERATURE = 0.8  # a little below 1: cleaner strokes, still varied
DEFAULT_SIZE = (1366, 768)


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
        self.last_frame: Frame | None = None  # the last whole exact frame
        self.shown_frame: Frame | None = None  # the last frame shown, a draft or a part
        self.last_error: str | None = None
        self.error_box: QMessageBox | None = None
        self.last_request_id = 0
        self.grid_size = DEFAULT_GRID  # the samples grid the user chose (not an image view)
        self.shortcuts_dialog: ShortcutsDialog | None = None

        self.setWindowTitle("Real NVP Explorer")
        self.setAcceptDrops(True)
        self.tasks = TaskRunner(
            threaded=self.engine.threaded, parent=self, error_log=ErrorLog(self.settings.error_log)
        )
        self.samples_panel = SamplesPanel(self.state)
        self.levels_panel = LatentLevelsPanel(self.state)
        self.model_panel = ModelPanel()
        self.dialogs = FileDialogs(self, self.settings)
        self.files = WindowFiles(self)
        self.images = ImageController(
            self.engine, self.state, self.tasks, self.samples_panel.view, self.dialogs, self
        )
        self.images.error_reported.connect(self.report_error)
        self.images.status_message.connect(self.statusBar().showMessage)
        self.images.tab_requested.connect(self.show_explorer_tab)
        self.classes_panel = ClassesPanel(self.state)
        self.map_panel = LatentMapPanel(self.state, self.engine, self.tasks, self.images.gallery)
        # probe_devices=False skips the child process that lists CUDA devices (tests).
        self.training_panel = TrainingPanel(probe_devices=probe_devices, settings=self.settings)
        self.training_panel.open_checkpoint_requested.connect(self._open_trained_checkpoint)
        self.notice = QLabel()
        self.notice.setWordWrap(True)
        self.notice.setStyleSheet(
            "QLabel { background: #5a4510; color: #ffe7a8; padding: 6px 10px; border-radius: 4px; }"
        )
        self.notice.hide()

        self.left_splitter = QSplitter(Qt.Orientation.Vertical)
        self.left_splitter.addWidget(self.model_panel)
        self.left_splitter.addWidget(self.images.gallery_panel)
        self.left_splitter.setStretchFactor(0, 0)
        self.left_splitter.setStretchFactor(1, 1)
        self.left_splitter.setChildrenCollapsible(False)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.levels_panel, "Levels")
        self.tabs.addTab(self.images.images_panel, "Images")
        self.tabs.addTab(self.images.directions_panel, "Directions")
        self.sample_likelihood = SampleLikelihood(self.engine, self.samples_panel.view, self)
        self.model_opened.connect(lambda _info: self.sample_likelihood.forget())
        self.tabs.addTab(self.sample_likelihood.panel, "Likelihood")
        self.tabs.currentChanged.connect(lambda _i: self.sample_likelihood.refresh_soon())
        # The class controls above the latent map: both act on the data's labels, and a
        # tab of their own each would overflow the tab bar.
        self.classes_tab = QSplitter(Qt.Orientation.Vertical)
        self.classes_tab.addWidget(self.classes_panel)
        self.classes_tab.addWidget(self.map_panel)
        self.classes_tab.setChildrenCollapsible(False)
        self.tabs.addTab(self.classes_tab, "Classes")
        self.draw_panel = DrawPanel(self.engine, self.tasks, self.selected_sample, self)
        self.draw_panel.add_to_gallery_requested.connect(self.files.add_drawing_to_gallery)
        self.draw_panel.status_message.connect(self.statusBar().showMessage)
        self.draw_panel.canvas_edited.connect(self._update_undo_actions)
        self.tabs.currentChanged.connect(lambda _i: self._update_undo_actions())
        self.tabs.addTab(self.draw_panel, "Draw")
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.left_splitter)
        self.splitter.addWidget(self.samples_panel)
        self.splitter.addWidget(self.tabs)
        # A growing window grows every column (the samples most), so a maximized 4K
        # window does not leave the side columns at their laptop widths.
        for index, stretch in enumerate(COLUMN_STRETCH):
            self.splitter.setStretchFactor(index, stretch)
        self.splitter.setChildrenCollapsible(False)
        # The gallery's sort box and buttons whole (at least 210 px).
        self.left_splitter.setMinimumWidth(max(210, self.left_splitter.minimumSizeHint().width()))
        self.samples_panel.setMinimumWidth(300)
        # Six tabs: the bar needs about 430 px; past that the labels elide rather than
        # hide tabs behind scroll arrows (a larger system font).
        self.tabs.setMinimumWidth(TABS_MIN_WIDTH)
        self.tabs.tabBar().setUsesScrollButtons(False)
        self.tabs.setElideMode(Qt.TextElideMode.ElideRight)
        self.explorer_page = QWidget()
        layout = QVBoxLayout(self.explorer_page)
        layout.setContentsMargins(8, 6, 8, 4)
        layout.addWidget(self.notice)
        layout.addWidget(self.splitter, 1)
        self.training_page = QWidget()
        layout = QVBoxLayout(self.training_page)
        layout.setContentsMargins(8, 6, 8, 4)
        layout.addWidget(self.training_panel)
        self.pages = QStackedWidget()
        self.pages.addWidget(self.explorer_page)
        self.pages.addWidget(self.training_page)
        self.setCentralWidget(self.pages)
        self.window_layout = WindowLayout(self)

        self.device_label = QLabel(self.engine.device_label)
        self.frame_label = QLabel("no frame yet")
        self.task_progress = TaskProgress()
        self.training_status = TrainingStatus()
        status = self.statusBar()
        status.addPermanentWidget(self.task_progress)
        status.addPermanentWidget(self.training_status)
        for label in (self.frame_label, self.device_label):
            label.setContentsMargins(8, 0, 8, 0)
            status.addPermanentWidget(label)
        status.messageChanged.connect(lambda text: text or status.setToolTip(""))
        self.menus = WindowMenus(self)
        self._update_undo_actions()
        self.training_status.open_requested.connect(lambda: self.show_page(TRAINING_PAGE))
        self.training_panel.training_started.connect(self.training_status.started)
        self.training_panel.progress_changed.connect(self.training_status.progressed)
        self.training_panel.training_stopped.connect(self.training_status.stopped)
        self.training_panel.host_changed.connect(self.training_status.set_host)
        self.training_panel.connection_changed.connect(self.training_status.set_connection)
        self.training_panel.queue_changed.connect(self.training_status.queued)
        self.samples_panel.count.valueChanged.connect(self._grid_size_chosen)
        self.task_progress.follow(self.tasks)

        self.state.changed.connect(self._on_state_changed)
        self.engine.frame_rendered.connect(self._on_frame)
        self.engine.render_failed.connect(self._on_render_failed)
        self.engine.plan_changed.connect(self._on_plan_changed)
        self.engine.render_notice.connect(self._on_render_notice)
        self.samples_panel.view.image_selected.connect(self.levels_panel.set_image_index)
        self.samples_panel.view.image_selected.connect(self.classes_panel.set_image_index)
        self.samples_panel.view.image_selected.connect(self.map_panel.set_image_index)
        self.samples_panel.view.setFocus()  # not the first spin box: keys act on the window

    # -- pages and layout ----------------------------------------------------------------------

    @property
    def current_page(self) -> str:
        return PAGES[self.pages.currentIndex()]

    def show_page(self, page: str) -> None:
        """``explorer`` or ``training``."""
        index = PAGES.index(page)
        self.pages.setCurrentIndex(index)
        self.menus.page_actions[page].setChecked(True)
        if page == EXPLORER_PAGE:
            self.samples_panel.view.setFocus()

    def show_explorer_tab(self, widget: QWidget) -> None:
        """Show the tab that is or holds ``widget``."""
        self.show_page(EXPLORER_PAGE)
        while widget is not None and self.tabs.indexOf(widget) < 0:
            widget = widget.parentWidget()
        if widget is not None:
            self.tabs.setCurrentWidget(widget)

    @property
    def current_tab(self) -> str:
        return TABS[self.tabs.currentIndex()] if self.tabs.currentIndex() < len(TABS) else ""

    def reset_layout(self) -> None:
        self.window_layout.reset()

    def restore_layout(self) -> None:
        """The layout kept at the last close (nothing on a first start)."""
        self.window_layout.restore()

    def showEvent(self, event) -> None:
        # The first show knows the window's size: the splitters are set for it, unless
        # restore_layout brought back the user's own.
        if not self.window_layout.is_set:
            self.window_layout.reset()
        super().showEvent(event)

    def toggle_full_screen(self) -> None:
        if self.isFullScreen():
            self.showNormal()
        else:
            self.showFullScreen()
        self.menus.full_screen_action.setChecked(self.isFullScreen())

    def tab_widgets(self) -> tuple[QWidget, ...]:
        """The explorer page's tabs, in the order of :data:`TABS`."""
        return (
            self.levels_panel,
            self.images.images_panel,
            self.images.directions_panel,
            self.sample_likelihood.panel,
            self.classes_tab,
            self.draw_panel,
        )

    def show_shortcuts(self) -> ShortcutsDialog:
        if self.shortcuts_dialog is None:
            self.shortcuts_dialog = ShortcutsDialog(self.menuBar(), self)
        self.shortcuts_dialog.show()
        self.shortcuts_dialog.raise_()
        return self.shortcuts_dialog

    def sizeHint(self) -> QSize:
        return QSize(*DEFAULT_SIZE)

    def open_run(self, record: dict) -> bool:
        """Show a remembered run on the training page; one that goes on is followed."""
        if self.training_panel.running:
            self.report_error(
                "A run is in progress",
                "Stop the run in progress, or leave it running, before opening another.",
            )
            return False
        self.show_page(TRAINING_PAGE)
        if record.get("host"):
            return self.training_panel.attach_remote(RemoteRun.from_dict(record))
        return self.training_panel.open_run(record["out"])

    def open_bundled(self) -> bool:
        """The bundled model, from the menus (a missing file gets the usual message)."""
        if not self.open_checkpoint(DEFAULT_CHECKPOINT):
            return False
        self.show_page(EXPLORER_PAGE)
        return True

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
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown reason"
            self.report_error(
                "Cannot open checkpoint",
                f"{path}: the model could not be loaded on {self.engine.device_label}: {first}",
            )
            return False
        self.settings.add_recent_file(path)
        self._model_changed(info)
        # In place of an earlier failure's message, which no longer holds.
        self.show_status(f"Opened {Path(path).name}", 5000)
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

    def _model_changed(self, info: ModelInfo) -> None:
        self.notice.setVisible(info.untrained)
        origin = self.settings.checkpoint_origin(info.source) if info.source else None
        self.model_panel.show_info(info, origin)
        self.device_label.setText(info.device)
        name = Path(info.source).name if info.source else "random model"
        if origin:
            name = f"{name} from {origin.split(':', 1)[0]}"
        self.setWindowTitle(f"{name} — Real NVP Explorer")
        keep_view = self.state.shapes == info.latent_shapes and self.last_frame is not None
        # Back to the samples grid the user chose: an image shown before (a 1-image view)
        # belonged to the other model.
        self.state.reset(
            info.latent_shapes,
            temperature=self.state.temperature if keep_view else DEFAULT_TEMPERATURE,
            n_images=self.grid_size,
        )
        self.images.model_changed(info)
        self.classes_panel.model_changed(info)
        self.map_panel.model_changed(info)
        self.draw_panel.model_changed(info)
        self.model_opened.emit(info)

    # -- rendering ---------------------------------------------------------------------------

    def request_render(self, draft: bool = False) -> int:
        """Send the state's latents to the engine; returns the request id. ``draft``: part
        of a drag, so the frame may be a draft that the exact one replaces."""
        self.last_request_id += 1
        self.engine.submit(
            RenderRequest(
                self.last_request_id,
                self.engine.model_id,
                tuple(self.state.latents()),
                focus=self.samples_panel.view.selected,
                draft=draft,
            )
        )
        return self.last_request_id

    def _on_state_changed(self, change: StateChange) -> None:
        self._update_undo_actions()
        if change.levels or change.reset:
            # A drag's second and later moves (a slider, the latent map, the temperature)
            # may be drafts; its first move, a key, a typed value or a click are exact.
            self.request_render(draft=change.continued and not change.reset)

    def _on_frame(self, frame: Frame) -> None:
        if frame.model_id != self.engine.model_id or frame.target != SAMPLES_TARGET:
            return  # from the model before the one just opened, or for another view
        self.samples_panel.show_frame(frame.images, frame.request_id, frame.stale)
        self.shown_frame = frame
        self.frame_label.setText(frame_text(frame, len(self.state.shapes)))
        self.frame_label.setToolTip(f"{shown_frame(frame)}\n{self.engine.render_status}")
        # A draft is only ever looked at: exports, the likelihood figures and whatever
        # waits for a shown frame take the exact one that follows it.
        if frame.complete and not frame.draft:
            self.last_frame = frame
            self.sample_likelihood.show_frame(frame)
            self.frame_shown.emit(frame.request_id)

    def _on_plan_changed(self, _plan: object) -> None:
        shown = f"{shown_frame(self.shown_frame)}\n" if self.shown_frame is not None else ""
        self.frame_label.setToolTip(shown + self.engine.render_status)
        self.device_label.setText(self.engine.device_label)  # --device auto may switch
        self.device_label.setToolTip(self.engine.device_choice)
        if self.engine.model_info is not None:  # the model panel says the same
            self.model_panel.show_device(self.engine.device_label)

    def _on_render_notice(self, message: str) -> None:
        self.statusBar().showMessage(message, 10_000)

    def _on_render_failed(self, message: str) -> None:
        # Not a dialog: a failing render may repeat with every slider move.
        self.last_error = message
        self.show_status(f"Render failed: {message}", 10_000, tip=message)

    def show_status(self, text: str, timeout_ms: int = 5000, tip: str = "") -> None:
        """A one-line message in the status bar (a longer text's first line; the whole of it
        in the tooltip)."""
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        first = lines[0] if lines else ""
        if len(lines) > 1:
            first += " …"
        self.statusBar().setToolTip(tip or (text if len(lines) > 1 else ""))
        self.statusBar().showMessage(first, timeout_ms)

    def resample(self) -> bool:
        """Resample (R); with every level locked there is nothing to draw, and it says so."""
        if self.state.resample():
            return True
        self.show_status("Every level is locked: unlock one to resample", 5000)
        return False

    def _grid_size_chosen(self, n: int) -> None:
        self.grid_size = n

    def _drawing(self) -> bool:
        """Whether Undo and Redo act on the drawing (the Draw tab is shown) rather than on
        the latent state."""
        return self.current_page == EXPLORER_PAGE and self.current_tab == "draw"

    def undo(self) -> None:
        if self._drawing():
            self.draw_panel.undo()
        else:
            self.state.undo()

    def redo(self) -> None:
        if self._drawing():
            self.draw_panel.redo()
        else:
            self.state.redo()

    def _update_undo_actions(self) -> None:
        if self._drawing():
            self.menus.undo_action.setEnabled(self.draw_panel.canvas.can_undo)
            self.menus.redo_action.setEnabled(self.draw_panel.canvas.can_redo)
        else:
            self.menus.undo_action.setEnabled(self.state.can_undo)
            self.menus.redo_action.setEnabled(self.state.can_redo)

    def selected_sample(self) -> np.ndarray | None:
        """The selected image of the samples view, ``uint8 (C, H, W)`` (None before the
        first frame)."""
        frame = self.last_frame
        if frame is None or len(frame.images) == 0:
            return None
        index = min(self.samples_panel.view.selected, len(frame.images) - 1)
        return np.array(frame.images[index])

    # -- saving (tests and scripts call these; the File menu calls :attr:`files`) ----------

    def save_grid(self, path: str | os.PathLike) -> Path | None:
        return self.files.save_grid(path)

    def save_image(self, path: str | os.PathLike) -> Path | None:
        return self.files.save_image(path)

    def save_state(self, path: str | os.PathLike) -> Path | None:
        return self.files.save_state(path)

    # -- errors, drops, closing --------------------------------------------------------------

    def report_error(self, title: str, message: str) -> None:
        """Tell the user without blocking: a window-modal box opened with ``open()`` holds
        the whole text; the status bar a one-line summary. Kept in ``last_error``."""
        self.last_error = message
        lines = message.strip().splitlines()
        summary = lines[0] if len(lines) == 1 else f"{title} (details in the message box)"
        self.show_status(summary, 10_000, tip=message)
        if self.error_box is not None:
            self.error_box.close()
        self.error_box = QMessageBox(QMessageBox.Icon.Warning, title, message, parent=self)
        self.error_box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
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

    def open_paths(self, paths: list[str], reveal: bool = True) -> None:
        """Open what was dropped: a checkpoint (.pt, .pth, .ckpt), state or direction files
        (.npz), and images or folders of images, which are imported. ``reveal``: show the
        tab of what arrived (not when the user chose a tab, as ``--tab`` does)."""
        checkpoints, npz_files, images = classify_drop(paths)
        if checkpoints:
            self.open_checkpoint(checkpoints[-1])
        for path in npz_files:
            if is_direction_file(path):
                self.images.load_direction_file(path, reveal=reveal)
            else:
                self.files.load_state(path)
        if images:
            self.images.import_paths(images, reveal=reveal)

    def show_tab(self, widget: QWidget) -> None:
        self.show_explorer_tab(widget)

    def show_images_tab(self) -> None:
        self.show_explorer_tab(self.images.images_panel)

    def _open_trained_checkpoint(self, path: str) -> None:
        if self.open_checkpoint(path):
            self.show_page(EXPLORER_PAGE)
            self.statusBar().showMessage(f"Opened the trained model {path}", 5000)

    def closeEvent(self, event: QCloseEvent) -> None:
        # A running trainer first: the user may cancel, or stop it (the panel closes the
        # window again once the checkpoint is saved), or leave it running.
        if not self.training_panel.confirm_close(self):
            event.ignore()
            return
        self.training_panel.form.shutdown()
        stop_started_masters()  # the ssh connections the training page opened
        self.tasks.shutdown()  # first: a job may be waiting on the engine
        self.sample_likelihood.shutdown()
        self.draw_panel.shutdown()
        self.engine.shutdown()
        self.window_layout.save()
        self.settings.sync()
        super().closeEvent(event)

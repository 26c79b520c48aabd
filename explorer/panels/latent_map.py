"""The latent map: encoded test images on the plane of two principal components, with the
gallery images and the current image; click a point to make it the current image, or
click and drag anywhere else to move the current image's latent there, decoded live.

The math is Qt-free (:mod:`explorer.state.latent_map`); this panel computes a map as a
job on the window's task runner (progress and cancel in the status bar), keeps one per
model, level and image source, and turns mouse events into state edits: a drag is one
render request per pointer move and one undo step.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, QPoint, QPointF, Qt, Signal
from PySide6.QtGui import QImage, QMouseEvent, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from explorer.engine.datasets import load_map_images
from explorer.engine.render import RenderEngine
from explorer.state.advice import in_app_words
from explorer.state.gallery import Gallery, group_latents
from explorer.state.jobs import Task
from explorer.state.latent_map import (
    ALL_LEVELS,
    DEFAULT_MAP_IMAGES,
    LatentMap,
    latent_map_job,
    level_job,
    nearest_point,
)
from explorer.state.state import ExplorerState, ModelInfo, StateChange
from explorer.widgets.controls import FittedLabel
from explorer.widgets.task_runner import TaskRunner

PICK_RADIUS_PX = 6.0
DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "folder": ""}
THUMBNAIL_SCALE = 3
# Ten well-separated colours (matplotlib's tab10), one per class; grey for no class.
CLASS_COLOURS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
NO_CLASS = (150, 150, 150)


def suggested_data_dir(recorded: str | None) -> str:
    """Where the model's data set most likely is, as an absolute path (the app may start in
    any folder): the folder the model was trained from when it is there, else
    ``$REALNVP_DATA_DIR``, else ``./data`` (where ``realnvp train --download`` puts it)."""
    candidates = [recorded, os.environ.get("REALNVP_DATA_DIR"), "data"]
    paths = [Path(c).expanduser().absolute() for c in candidates if c]
    return str(next((p for p in paths if p.is_dir()), paths[0]))


def class_colour(label: int) -> tuple[int, int, int]:
    return CLASS_COLOURS[label % len(CLASS_COLOURS)] if label >= 0 else NO_CLASS


def to_pixmap(pixels: np.ndarray, scale: int = THUMBNAIL_SCALE) -> QPixmap:
    """``uint8 (C, H, W)`` as a pixmap ``scale`` times larger."""
    img = np.ascontiguousarray(pixels.transpose(1, 2, 0))
    h, w, c = img.shape
    fmt = QImage.Format.Format_Grayscale8 if c == 1 else QImage.Format.Format_RGB888
    qimage = QImage(img.data, w, h, w * c, fmt).copy()
    return QPixmap.fromImage(qimage).scaled(w * scale, h * scale)


class MapView(pg.PlotWidget):
    """The plot: points, the current image's marker, a hover thumbnail. Mouse presses
    become ``point_clicked(index)`` (near a point) or ``dragged(x, y)`` (anywhere else,
    and every move while the button is held), then ``drag_finished``."""

    point_clicked = Signal(int)
    dragged = Signal(float, float)
    drag_finished = Signal()
    hovered = Signal(int)  # index of the point under the pointer, -1 for none

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent, background="#1e1e1e")
        self.setMinimumHeight(240)
        item = self.getPlotItem()
        item.setMenuEnabled(False)
        item.hideButtons()
        item.showGrid(x=True, y=True, alpha=0.15)
        self.box = item.getViewBox()
        self.box.setMouseEnabled(False, False)  # the mouse moves latents, not the view
        self.scatter = pg.ScatterPlotItem(size=5, pen=None, pxMode=True)
        self.extras = pg.ScatterPlotItem(size=11, symbol="s", pxMode=True)
        self.marker = pg.ScatterPlotItem(
            size=18, symbol="o", pen=pg.mkPen("w", width=2), brush=None, pxMode=True
        )
        for it in (self.scatter, self.extras, self.marker):
            self.addItem(it)
        self.thumbnail = QLabel(self)
        self.thumbnail.setStyleSheet("border: 1px solid #ccc; background: black;")
        self.thumbnail.hide()
        self.points = np.zeros((0, 2))
        self.pickable = np.zeros((0, 2))  # points then extras, in the order of indices
        self._dragging = False
        self.viewport().installEventFilter(self)
        self.viewport().setMouseTracking(True)

    def set_points(self, points: np.ndarray, colours: list[tuple[int, int, int]]) -> None:
        self.points = np.asarray(points, dtype=np.float64)
        brushes = [pg.mkBrush(*c, 200) for c in colours]
        self.scatter.setData(pos=self.points, brush=brushes)
        self.pickable = self.points
        if len(self.points):
            self.box.autoRange(padding=0.05)

    def set_extras(self, points: np.ndarray) -> None:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        self.extras.setData(pos=points, brush=pg.mkBrush(255, 255, 255, 60), pen=pg.mkPen("w"))
        self.pickable = np.concatenate([self.points, points]) if len(points) else self.points

    def set_marker(self, points: np.ndarray | None, selected: int = 0) -> None:
        """Rings for the images the view shows; the selected one (the current image) large."""
        if points is None or not len(points):
            self.marker.setData(pos=[])
            return
        sizes = [18 if i == selected else 9 for i in range(len(points))]
        self.marker.setData(pos=np.asarray(points), size=sizes)

    def view_point(self, pos: QPointF) -> tuple[float, float]:
        """Plane coordinates of a viewport position."""
        p = self.box.mapSceneToView(self.mapToScene(pos.toPoint()))
        return float(p.x()), float(p.y())

    def viewport_point(self, x: float, y: float) -> QPointF:
        """The viewport position of plane coordinates (the inverse of :meth:`view_point`)."""
        return QPointF(self.mapFromScene(self.box.mapViewToScene(QPointF(x, y))))

    def pick(self, pos: QPointF) -> int | None:
        scale = self.box.viewPixelSize()
        return nearest_point(self.pickable, self.view_point(pos), scale, PICK_RADIUS_PX)

    def _place_thumbnail(self, pointer: QPoint) -> None:
        """Beside the pointer, inside the view."""
        size = self.thumbnail.sizeHint()
        x, y = pointer.x() + 14, pointer.y() + 14
        if x + size.width() > self.width():
            x = pointer.x() - 14 - size.width()
        if y + size.height() > self.height():
            y = pointer.y() - 14 - size.height()
        self.thumbnail.move(max(0, x), max(0, y))

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        kind = event.type()
        if kind == QEvent.Type.MouseButtonPress and event.button() == Qt.MouseButton.LeftButton:
            assert isinstance(event, QMouseEvent)
            index = self.pick(event.position())
            if index is not None:
                self.point_clicked.emit(index)
            else:
                self._dragging = True
                self.dragged.emit(*self.view_point(event.position()))
            return True
        if kind == QEvent.Type.MouseMove:
            assert isinstance(event, QMouseEvent)
            if self._dragging and event.buttons() & Qt.MouseButton.LeftButton:
                self.dragged.emit(*self.view_point(event.position()))
            else:
                index = self.pick(event.position())
                self.hovered.emit(-1 if index is None else index)
                if index is not None:
                    self._place_thumbnail(event.position().toPoint())
            return self._dragging
        if kind == QEvent.Type.MouseButtonRelease and self._dragging:
            self._dragging = False
            self.drag_finished.emit()
            return True
        if kind == QEvent.Type.Leave:
            self.hovered.emit(-1)
        return False


class LatentMapPanel(QWidget):
    """Controls, the map view, and the wiring between map, state and engine."""

    map_ready = Signal(object)  # LatentMap
    map_shown = Signal(bool)  # whether the plot is shown (it is hidden until a map exists)

    def __init__(
        self,
        state: ExplorerState,
        engine: RenderEngine,
        tasks: TaskRunner,
        gallery: Gallery,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.state = state
        self.engine = engine
        self.tasks = tasks
        self.gallery = gallery
        self.info: ModelInfo | None = None
        self.map: LatentMap | None = None
        self.image_index = 0
        self.task: Task | None = None
        self._refit: tuple[tuple, int, Task] | None = None  # source, level, its job
        # Per model and image source, the maps made so far, by level (refits share latents).
        self._cache: dict[tuple, dict[int, LatentMap]] = {}
        self._extra_points: dict[int, np.ndarray] = {}  # gallery id -> place on self.map
        self._drags = itertools.count(1)
        self._drag_key: object = None
        self._extra_ids: list[int] = []

        self.level_combo = QComboBox()
        self.level_combo.setToolTip("The latent level the map shows (or all, concatenated)")
        self.data_dir = QLineEdit(suggested_data_dir(None))
        self.data_dir.setToolTip("Folder with the model's data set; its test images are mapped")
        self._data_dir_chosen = False  # typed or browsed by the user: kept across models
        self.data_dir.textEdited.connect(lambda _t: setattr(self, "_data_dir_chosen", True))
        self.data_label = QLabel("Data")
        self.browse_button = QPushButton("…")
        self.browse_button.setToolTip("Choose the data folder")
        self.count = QSpinBox()
        self.count.setRange(10, 10000)
        self.count.setSingleStep(500)
        self.count.setValue(DEFAULT_MAP_IMAGES)
        self.count.setToolTip("How many test images to encode")
        self.compute_button = QPushButton("Compute map")
        # As tall as its text: an error wraps over several lines.
        self.status = FittedLabel("Compute a map of the test images to begin.")
        self.status.setStyleSheet("color: palette(placeholder-text);")
        self.view = MapView()
        self.legend = QLabel()
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.legend.setWordWrap(True)

        row1 = QHBoxLayout()
        row1.addWidget(QLabel("Level"))
        row1.addWidget(self.level_combo)
        row1.addWidget(QLabel("Images"))
        row1.addWidget(self.count)
        row1.addStretch(1)
        row1.addWidget(self.compute_button)
        row2 = QHBoxLayout()
        row2.addWidget(self.data_label)
        row2.addWidget(self.data_dir, 1)
        row2.addWidget(self.browse_button)
        layout = QVBoxLayout(self)
        layout.addLayout(row1)
        layout.addLayout(row2)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.legend)
        layout.addWidget(self.status)
        # No map, no plot: an empty plot would take the room the class controls above need.
        self.view.hide()

        self.compute_button.clicked.connect(lambda _c=False: self.compute())
        self.browse_button.clicked.connect(self._browse)
        self.level_combo.currentIndexChanged.connect(self._level_chosen)
        self.view.point_clicked.connect(self.show_point)
        self.view.dragged.connect(self.move_to)
        self.view.drag_finished.connect(self._end_drag)
        self.view.hovered.connect(self._show_thumbnail)
        self.state.changed.connect(self._on_state_changed)
        self.gallery.changed.connect(lambda *_: self._update_extras())

    # -- the model and the map ----------------------------------------------------------------

    @property
    def level(self) -> int:
        data = self.level_combo.currentData()
        return ALL_LEVELS if data is None else int(data)

    def model_changed(self, info: ModelInfo) -> None:
        self.info = info
        for task in (self.task, self.level_task):
            if task is not None:
                task.cancel()
        blocked = self.level_combo.blockSignals(True)
        self.level_combo.clear()
        for i, shape in enumerate(info.latent_shapes):
            self.level_combo.addItem(f"{i} ({'×'.join(map(str, shape))})", i)
        self.level_combo.addItem("all", ALL_LEVELS)
        self.level_combo.setCurrentIndex(len(info.latent_shapes) - 1)  # the coarsest
        self.level_combo.blockSignals(blocked)
        self._set_map(None)
        name = DATASET_NAMES.get(info.dataset or "", info.dataset)
        self.data_label.setText(f"{name} folder" if name else "Data")
        if not self._data_dir_chosen:
            self.data_dir.setText(suggested_data_dir(info.data_dir))
        self.data_dir.setToolTip(
            f"Folder holding the {name} files; its test images are mapped"
            if name
            else "Folder of images; they are mapped"
        )
        self.status.setText(
            f"Compute a map of the {name} test images to begin."
            if name
            else "This model does not name its data set: set Data to a folder of images."
        )

    def set_data_dir(self, path: str | os.PathLike) -> None:
        """The user's folder: kept when another model opens."""
        self.data_dir.setText(str(path))
        self._data_dir_chosen = True

    def compute(self) -> Task | None:
        """Start computing the map (a job); a cached one is shown at once."""
        info = self.info
        if info is None:
            return None
        level = self.level
        source = (info.dataset or "folder", self.data_dir.text().strip(), self.count.value())
        key = (info.model_id, *source)
        if key in self._cache:
            self._show_level(key)
            return self.level_task if level not in self._cache[key] else None
        if self.task is not None and not self.task.finished:
            self.task.cancel()
        dataset, data_dir, limit = source

        def load():
            return load_map_images(dataset, data_dir, info.channels, info.image_size, limit)

        def encode(pixels):
            return self.engine.encode_batch(pixels, info.model_id)

        self.status.setText("Computing the map…")
        self.task = self.tasks.start(
            "Latent map",
            lambda: latent_map_job(info.model_id, level, load, encode),
            on_result=lambda m, key=(info.model_id, *source): self._on_map(key, m),
            on_done=self._on_done,
        )
        return self.task

    def _on_map(self, key: tuple, latent_map: object) -> None:
        assert isinstance(latent_map, LatentMap)
        if self.info is None or latent_map.model_id != self.info.model_id:
            return  # made for a model that has since been replaced
        self._cache = {k: v for k, v in self._cache.items() if k[0] == latent_map.model_id}
        self._cache.setdefault(key, {})[latent_map.level] = latent_map
        self._show_level(key)

    def _show_level(self, key: tuple) -> None:
        """Show the map of source ``key`` on the chosen level: at once when it was made
        before, else refitted by a job on the task runner (the whole data set's principal
        components: seconds on a busy machine) while the map shown now stays."""
        maps, level = self._cache[key], self.level
        refit = self._refit
        if refit is not None and not refit[2].finished:
            if refit[:2] == (key, level):
                return  # on its way
            refit[2].cancel()
        if level in maps:
            self._set_map(maps[level])
            return
        base = next(iter(maps.values()))
        task = self.tasks.start(
            "Latent map",
            lambda: level_job(base, level),
            on_result=lambda m: self._on_level_map(key, m),
            on_done=self._on_done,
        )
        self._refit = (key, level, task)

    @property
    def level_task(self) -> Task | None:
        """The job refitting the map on the chosen level, if one was started."""
        return self._refit[2] if self._refit is not None else None

    def _on_level_map(self, key: tuple, latent_map: object) -> None:
        assert isinstance(latent_map, LatentMap)
        if self.info is None or latent_map.model_id != self.info.model_id:
            return  # made for a model that has since been replaced
        self._cache[key][latent_map.level] = latent_map
        if latent_map.level == self.level:
            self._set_map(latent_map)

    def _on_done(self, task: Task) -> None:
        if task.error:
            self.status.setText(f"No map: {in_app_words(task.error)}")
        elif task.cancelled and self.map is None:
            self.status.setText("Cancelled.")

    def _set_map(self, latent_map: LatentMap | None) -> None:
        if latent_map is not self.map:
            self._extra_points.clear()
        self.map = latent_map
        if self.view.isHidden() == (latent_map is not None):
            self.view.setVisible(latent_map is not None)
            self.map_shown.emit(latent_map is not None)
        self.legend.setVisible(latent_map is not None)  # no empty line above the status
        if latent_map is None:
            self.view.set_points(np.zeros((0, 2)), [])
            self.legend.setText("")
        else:
            colours = [class_colour(int(v)) for v in latent_map.labels]
            self.view.set_points(latent_map.points, colours)
            ex = latent_map.projection.explained
            self.status.setText(
                f"{len(latent_map)} images from the {latent_map.source}; the axes hold "
                f"{100 * ex[0]:.0f}% and {100 * ex[1]:.0f}% of the variance. Click a point to "
                "show it; click or drag elsewhere to move the current image there."
            )
            names = latent_map.class_names
            self.legend.setText(
                " ".join(
                    f"<span style='color: rgb{class_colour(k)}'>●</span> {name}"
                    for k, name in enumerate(names)
                )
                + ("&nbsp;&nbsp;□ gallery&nbsp;&nbsp;○ current image" if names else "")
            )
            self.map_ready.emit(latent_map)
        self._update_extras()
        self._update_marker()

    def _level_chosen(self) -> None:
        if self.map is None:
            return
        key = next((k for k, maps in self._cache.items() if self.map in maps.values()), None)
        if key is not None:
            self._show_level(key)

    # -- the current image, the gallery --------------------------------------------------------

    def set_image_index(self, index: int) -> None:
        self.image_index = max(0, int(index))
        self._update_marker()

    def _current_latents(self) -> list[np.ndarray]:
        i = min(self.image_index, self.state.n_images - 1)
        return [z[i : i + 1] for z in self.state.latents()]

    def _update_marker(self) -> None:
        if self.map is None:
            self.view.set_marker(None)
            return
        points = self.map.coordinates(self.state.latents())
        selected = min(self.image_index, len(points) - 1)
        self.view.set_marker(points, selected)

    def _update_extras(self) -> None:
        """The gallery images of this model, as squares."""
        items = []
        if self.map is not None and self.info is not None:
            items = [g for g in self.gallery.items if g.model_id == self.info.model_id]
        self._extra_ids = [g.item_id for g in items]
        # Each gallery image is placed once per map: an import adds a batch at a time, and
        # placing every image again at each one grew with the gallery (thousands of images).
        new = [g for g in items if g.item_id not in self._extra_points]
        if new and self.map is not None:
            for g, point in zip(new, self.map.coordinates(group_latents(new))):
                self._extra_points[g.item_id] = point
        points = [self._extra_points[i] for i in self._extra_ids]
        self.view.set_extras(np.array(points) if points else np.zeros((0, 2)))

    def _on_state_changed(self, change: StateChange) -> None:
        self._update_marker()

    # -- the mouse ------------------------------------------------------------------------------

    def show_point(self, index: int) -> None:
        """Point ``index`` (test images first, then gallery images) becomes the view."""
        if self.map is None:
            return
        if index < len(self.map):
            self.state.set_image([z[index] for z in self.map.latents])
        else:
            item = self.gallery.get(self._extra_ids[index - len(self.map)])
            if item is not None:
                self.state.set_image(list(item.latents))
        self.image_index = 0

    def move_to(self, x: float, y: float) -> None:
        """Move the current image's latent at the map's level to ``(x, y)``, the other
        components kept: one state edit (and one render request) per pointer move."""
        if self.map is None:
            return
        state = self.state
        if self._drag_key is None:
            self._drag_key = ("map", next(self._drags))
            if not state.is_baked or state.n_images != 1:
                # The rendered latents of the current image become the view's own, so that
                # a move can set them exactly (one undo step of its own).
                state.set_latents(self._current_latents(), "latents taken for a move on the map")
                self.image_index = 0
        moved = self.map.moved(self._current_latents(), (x, y))
        shown = "latents moved on the latent map"
        if self.map.level == ALL_LEVELS:
            state.set_noise(moved, merge_key=self._drag_key, shown=shown)
        else:
            state.set_level_latent(self.map.level, moved[0], merge_key=self._drag_key, shown=shown)

    def _end_drag(self) -> None:
        self._drag_key = None
        self.state.end_edit()

    def _show_thumbnail(self, index: int) -> None:
        label = self.view.thumbnail
        if self.map is None or index < 0:
            label.hide()
            return
        if index < len(self.map):
            pixels = self.map.thumbnails[index]
            k = int(self.map.labels[index])
            tip = self.map.class_names[k] if 0 <= k < len(self.map.class_names) else ""
        else:
            item = self.gallery.get(self._extra_ids[index - len(self.map)])
            if item is None:
                label.hide()
                return
            pixels, tip = item.pixels, Path(item.path).name
        label.setPixmap(to_pixmap(pixels))
        label.setToolTip(tip)
        label.adjustSize()
        label.show()
        label.raise_()

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Data folder", self.data_dir.text())
        if path:
            self.set_data_dir(path)

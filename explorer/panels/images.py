"""The images panel: the dropped image next to its reconstruction, and A → B interpolation.

Top: the current image as the model sees it: a preview of the crop, then original |
reconstruction | amplified absolute error, with its bits/dim beside the model's test figure
and how exact the reconstruction is; "Keep coarse, resample fine" makes a grid of variations
that keep the image's coarse levels.

Below: the two chosen images A and B, an interpolation slider (linear or spherical) that
renders live in the samples view, level mixing (each level from A, from B, or following
the slider), a strip of frames, and exports.

The panel holds only view settings (t, mode, level sources, frame counts); what they do is
done by :class:`~explorer.panels.image_controller.ImageController`, through the signals.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from explorer.panels.levels import level_title
from explorer.panels.likelihood import LikelihoodPanel
from explorer.state.blend import LINEAR, SPHERICAL, LevelSource
from explorer.state.gallery import GalleryImage
from explorer.state.state import MAX_IMAGES
from explorer.theme import CHECKED_TOOL_STYLE
from explorer.widgets.controls import FloatSlider
from explorer.widgets.images import CaptionedImage, CropPreview, ImageGridView

DEFAULT_STRIP_FRAMES = 8
DEFAULT_ANIMATION_FRAMES = 48
DEFAULT_FPS = 24
DEFAULT_VARIATIONS = 16
TILE = 76  # four tiles in a row fit the tab column of a 1024 px window
STRIP_HEIGHT = 64
# A blend has no file and no encoding of its own: its pixels are the samples grid's frame,
# which the Likelihood tab measures.
BLEND_BITS_NOTE = (
    "A blend is not a file of its own, so nothing was measured here. Its pixels are in the "
    "samples grid: select it there and open the Likelihood tab to see where its bits go."
)


def error_image(error: np.ndarray) -> tuple[np.ndarray, float]:
    """``|error|`` (``(C, H, W)`` floats) as a grey ``uint8 (1, H, W)`` picture scaled so its
    largest value is white; returns the picture and the gain used (0 for no error)."""
    worst = error.max(axis=0)  # (H, W): the largest channel error per pixel
    peak = float(worst.max(initial=0.0))
    if peak <= 0.0:
        return np.zeros((1, *worst.shape), np.uint8), 0.0
    gain = 1.0 / peak
    return (np.clip(worst * gain, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)[None], gain


def describe_figures(item: GalleryImage, test_bpd: float | None) -> tuple[str, str]:
    """Two lines of text: the likelihood, and how exact the reconstruction is."""
    bpd = item.bits_per_dim
    likelihood = f"<b style='font-size:15px'>{bpd:.3f}</b> bits/dim"
    if test_bpd is not None:
        # No verdict from the ratio: fewer bits/dim than the test set is no sign of a
        # typical image (a blank one has far fewer); the likelihood panel judges two-sidedly.
        likelihood += f" &nbsp;·&nbsp; test set mean {test_bpd:.3f}"
    encoded = item.encoded
    same = bool(np.array_equal(encoded.reconstruction, item.pixels))
    pixels = item.pixels.size
    exact = f"all {pixels} values identical" if same else "some 8-bit values differ"
    reconstruction = f"max |x − decode(encode(x))| = {encoded.max_abs_error:.1e} · {exact}"
    return likelihood, reconstruction


def describe_file(item: GalleryImage) -> str:
    _, h, w = item.pixels.shape
    if item.preview is None:
        return f"{item.name} → {w}×{h}"
    fw, fh = item.preview.file_size
    side = min(fw, fh)
    crop = "" if fw == fh else f" → centre {side}×{side}"
    return f"{item.name} · {fw}×{fh}{crop} → {w}×{h}"


class LevelSourceRow(QWidget):
    """A level's source during interpolation: A, the slider (t) or B."""

    changed = Signal()

    def __init__(self, index: int, count: int, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.index = index
        title = level_title(index, count, shape).split(" (")[0]
        self.label = QLabel(title)
        self.group = QButtonGroup(self)
        self.buttons: dict[LevelSource, QToolButton] = {}
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.label, 1)
        tips = {
            LevelSource.A: "Take this level from A",
            LevelSource.SLIDER: "Interpolate this level with the slider",
            LevelSource.B: "Take this level from B",
        }
        for source in LevelSource:
            button = QToolButton()
            button.setText(source.value)
            button.setCheckable(True)
            button.setToolTip(tips[source])
            button.setFixedWidth(30)
            button.setStyleSheet(CHECKED_TOOL_STYLE)
            self.group.addButton(button)
            self.buttons[source] = button
            layout.addWidget(button)
        self.buttons[LevelSource.SLIDER].setChecked(True)
        self.group.buttonToggled.connect(lambda _button, on: on and self.changed.emit())

    @property
    def source(self) -> LevelSource:
        for source, button in self.buttons.items():
            if button.isChecked():
                return source
        return LevelSource.SLIDER

    def set_source(self, source: LevelSource | str) -> None:
        self.buttons[LevelSource(source)].setChecked(True)


class ImagesPanel(QScrollArea):
    """The current image and the interpolation between A and B."""

    show_image_requested = Signal()
    vary_requested = Signal(int, int)  # coarse levels kept, number of variations
    blend_changed = Signal()  # t, mode or a level source changed: apply to the view
    blend_finished = Signal()  # the slider was let go
    strip_changed = Signal()  # the strip needs rendering again
    swap_requested = Signal()
    export_requested = Signal(str)  # "png", "gif" or "mp4"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.level_rows: list[LevelSourceRow] = []
        self._shapes: tuple = ()
        self.mp4_available = True

        # -- the current image ----------------------------------------------------------
        self.image_box = QGroupBox("Image")
        self.file_label = QLabel("Drop images or a folder on the window, or use Images › Import.")
        self.file_label.setWordWrap(True)
        self.crop = CropPreview(TILE)
        self.crop.setToolTip("The file, with the centre square the model sees")
        crop_tile = QWidget()
        crop_layout = QVBoxLayout(crop_tile)
        crop_layout.setContentsMargins(0, 0, 0, 0)
        crop_layout.setSpacing(3)
        crop_layout.addWidget(self.crop, 0, Qt.AlignmentFlag.AlignHCenter)
        crop_caption = QLabel("file · crop")
        crop_caption.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        crop_caption.setStyleSheet("color: palette(placeholder-text);")
        crop_layout.addWidget(crop_caption)
        self.original = CaptionedImage("original", TILE)
        self.reconstruction = CaptionedImage("reconstruction", TILE)
        self.error = CaptionedImage("|error|", TILE)
        self.error.setToolTip(
            "Absolute reconstruction error, scaled so the largest is white (the gain is in "
            "the caption): where the float32 round trip is least exact"
        )
        tiles = QHBoxLayout()
        tiles.setSpacing(4)
        for tile in (crop_tile, self.original, self.reconstruction, self.error):
            tiles.addWidget(tile)
        tiles.addStretch(1)
        self.likelihood_label = QLabel()
        self.likelihood_label.setWordWrap(True)
        self.likelihood_label.setTextFormat(Qt.TextFormat.RichText)
        self.likelihood_label.setToolTip(
            "bits/dim of this image under the model (uniform dequantization with a fixed "
            "seed, as `realnvp encode` prints it); lower is more typical"
        )
        self.exact_label = QLabel()
        self.exact_label.setWordWrap(True)
        self.exact_label.setStyleSheet("color: palette(placeholder-text);")
        self.show_button = QPushButton("Show image")
        self.show_button.setToolTip(
            "Make this image's latents the view again (temperatures 1, offsets 0)"
        )
        self.keep_levels = QSpinBox()
        self.keep_levels.setPrefix("keep ")
        self.keep_levels.setSuffix(" coarse")
        self.keep_levels.setToolTip("How many of the coarsest levels keep the image's latents")
        self.variations = QSpinBox()
        self.variations.setRange(2, MAX_IMAGES)
        self.variations.setValue(DEFAULT_VARIATIONS)
        self.variations.setSuffix(" images")
        self.variations.setToolTip("Size of the grid of variations (the first is the image)")
        self.vary_button = QPushButton("Keep coarse, resample fine")
        self.vary_button.setToolTip(
            "A grid of variations: the image's coarse levels with new noise in the fine "
            "ones (K). What does each scale hold?"
        )
        buttons = QHBoxLayout()
        buttons.addWidget(self.show_button)
        buttons.addWidget(self.vary_button)
        buttons.addStretch(1)
        vary = QHBoxLayout()
        vary.addWidget(QLabel("Variations:"))
        vary.addWidget(self.keep_levels)
        vary.addWidget(self.variations)
        vary.addStretch(1)
        image_layout = QVBoxLayout(self.image_box)
        image_layout.setSpacing(6)
        image_layout.addWidget(self.file_label)
        image_layout.addLayout(tiles)
        image_layout.addWidget(self.likelihood_label)
        image_layout.addWidget(self.exact_label)
        self.likelihood_panel = LikelihoodPanel()
        image_layout.addWidget(self.likelihood_panel)
        image_layout.addLayout(buttons)
        image_layout.addLayout(vary)

        # -- A and B ---------------------------------------------------------------------------
        self.blend_box = QGroupBox("Interpolate A → B")
        self.a_tile = CaptionedImage("A: —", 64)
        self.b_tile = CaptionedImage("B: —", 64)
        for tile in (self.a_tile, self.b_tile):
            tile.caption.setMaximumWidth(150)
        self.swap_button = QPushButton("⇄")
        self.swap_button.setToolTip("Swap A and B")
        self.swap_button.setFixedWidth(36)
        self.mode = QComboBox()
        self.mode.addItem("Linear", LINEAR)
        self.mode.addItem("Spherical", SPHERICAL)
        self.mode.setToolTip(
            "Linear: a straight line between the latents. Spherical: along the sphere where "
            "Gaussian latents live, so the middle frames stay as sharp as the ends"
        )
        self.t = FloatSlider(0.0, 1.0, step=0.01, value=0.0)
        self.t.setToolTip("0 is A, 1 is B; rendered live in the samples view")
        ab = QHBoxLayout()
        ab.addWidget(self.a_tile)
        ab.addWidget(self.swap_button)
        ab.addWidget(self.b_tile)
        ab.addStretch(1)
        controls = QGridLayout()
        controls.setHorizontalSpacing(8)
        controls.addWidget(QLabel("Mode"), 0, 0)
        controls.addWidget(self.mode, 0, 1, Qt.AlignmentFlag.AlignLeft)
        controls.addWidget(QLabel("t"), 1, 0)
        controls.addWidget(self.t, 1, 1)
        self.levels_layout = QVBoxLayout()
        self.levels_layout.setSpacing(2)
        levels_title = QLabel("Level mixing: each level from A, B or the slider")
        levels_title.setWordWrap(True)
        levels_title.setStyleSheet("color: palette(placeholder-text);")
        self.strip_frames = QSpinBox()
        self.strip_frames.setRange(2, 16)
        self.strip_frames.setValue(DEFAULT_STRIP_FRAMES)
        self.strip_frames.setSuffix(" frames")
        self.strip = ImageGridView(selectable=False, gap=3, integer_scale=False)
        self.strip.columns = DEFAULT_STRIP_FRAMES
        self.strip.setFixedHeight(STRIP_HEIGHT)
        self.strip.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        strip_row = QHBoxLayout()
        strip_title = QLabel("Strip")
        strip_row.addWidget(strip_title)
        strip_row.addStretch(1)
        strip_row.addWidget(self.strip_frames)

        self.export_png = QPushButton("Strip PNG…")
        self.export_gif = QPushButton("GIF…")
        self.export_mp4 = QPushButton("MP4…")
        self.animation_frames = QSpinBox()
        self.animation_frames.setRange(2, 600)
        self.animation_frames.setValue(DEFAULT_ANIMATION_FRAMES)
        self.animation_frames.setSuffix(" frames")
        self.animation_frames.setToolTip("Frames from A to B in the GIF or MP4")
        self.fps = QSpinBox()
        self.fps.setRange(1, 60)
        self.fps.setValue(DEFAULT_FPS)
        self.fps.setSuffix(" fps")
        self.bounce = QCheckBox("and back")
        self.bounce.setChecked(True)
        self.bounce.setToolTip("A → B → A, so the animation loops smoothly")
        export = QHBoxLayout()
        export.addWidget(self.export_png)
        export.addWidget(self.export_gif)
        export.addWidget(self.export_mp4)
        export.addStretch(1)
        animation = QHBoxLayout()
        animation.addWidget(QLabel("Animation"))
        animation.addWidget(self.animation_frames)
        animation.addWidget(self.fps)
        animation.addWidget(self.bounce)
        animation.addStretch(1)

        blend_layout = QVBoxLayout(self.blend_box)
        blend_layout.setSpacing(6)
        blend_layout.addLayout(ab)
        blend_layout.addLayout(controls)
        blend_layout.addWidget(levels_title)
        blend_layout.addLayout(self.levels_layout)
        blend_layout.addLayout(strip_row)
        blend_layout.addWidget(self.strip)
        blend_layout.addLayout(export)
        blend_layout.addLayout(animation)

        container = QWidget()
        layout = QVBoxLayout(container)
        layout.setContentsMargins(0, 0, 4, 0)
        layout.setSpacing(6)
        layout.addWidget(self.image_box)
        layout.addWidget(self.blend_box)
        layout.addStretch(1)
        self.setWidget(container)

        self.show_button.clicked.connect(self.show_image_requested)
        self.vary_button.clicked.connect(
            lambda: self.vary_requested.emit(self.keep_levels.value(), self.variations.value())
        )
        self.swap_button.clicked.connect(self.swap_requested)
        self.t.value_changed.connect(lambda _v: self.blend_changed.emit())
        self.t.edit_finished.connect(self.blend_finished)
        self.mode.currentIndexChanged.connect(self._on_mode_changed)
        self.strip_frames.valueChanged.connect(self._on_strip_frames_changed)
        self.export_png.clicked.connect(lambda: self.export_requested.emit("png"))
        self.export_gif.clicked.connect(lambda: self.export_requested.emit("gif"))
        self.export_mp4.clicked.connect(lambda: self.export_requested.emit("mp4"))
        self.show_item(None)
        self.show_ab(None, None)

    # -- reading the settings ------------------------------------------------------------

    @property
    def mode_name(self) -> str:
        return str(self.mode.currentData())

    @property
    def sources(self) -> list[LevelSource]:
        """One source per level, finest first."""
        return [row.source for row in self.level_rows]

    # -- showing -------------------------------------------------------------------------

    def set_levels(self, shapes: tuple[tuple[int, int, int], ...]) -> None:
        """One mixing row per level (coarse at the top), after a model was opened."""
        if shapes == self._shapes:
            return
        self._shapes = shapes
        for row in self.level_rows:
            row.setParent(None)
            row.deleteLater()
        self.level_rows = [LevelSourceRow(i, len(shapes), s) for i, s in enumerate(shapes)]
        for row in reversed(self.level_rows):
            row.changed.connect(self._on_source_changed)
            self.levels_layout.addWidget(row)
        self.keep_levels.setRange(0, len(shapes))
        self.keep_levels.setValue(max(1, len(shapes) - 1))

    def show_item(self, item: GalleryImage | None, test_bpd: float | None = None) -> None:
        """The current image and its figures (``None``: an empty section with a hint)."""
        for widget in (self.show_button, self.vary_button, self.keep_levels, self.variations):
            widget.setEnabled(item is not None)
        if item is None:
            self.file_label.setText(
                "Drop images or a folder on the window, or use Images › Import (Ctrl+I)."
            )
            self.crop.set_preview(None, None)
            for tile in (self.original, self.reconstruction, self.error):
                tile.set_image(None)
            self.error.caption.setText("|error|")
            self.likelihood_label.setText("")
            self.exact_label.setText("")
            self.likelihood_panel.show_view(None, None)
            return
        self.file_label.setText(describe_file(item))
        self.file_label.setToolTip(item.path)
        preview = item.preview
        self.crop.set_preview(
            preview.image if preview else None, preview.crop_box if preview else None
        )
        self.original.set_image(item.pixels)
        self.reconstruction.set_image(item.encoded.reconstruction)
        picture, gain = error_image(item.encoded.error)
        self.error.set_image(picture)
        self.error.caption.setText(f"|error| ×{gain:.0e}" if gain else "|error| = 0")
        likelihood, exact = describe_figures(item, test_bpd)
        self.likelihood_label.setText(likelihood)
        self.exact_label.setText(exact)
        self.likelihood_panel.show_view(item.encoded.likelihood, item.pixels)

    def show_blend(self, t: float, a: GalleryImage, b: GalleryImage) -> None:
        """The view is a blend of A and B, no single image: say so, show no stale image."""
        self.show_item(None)
        self.vary_button.setEnabled(True)
        self.keep_levels.setEnabled(True)
        self.variations.setEnabled(True)
        self.file_label.setText(f"Blend of A ({a.name}) and B ({b.name}) at t = {t:.2f}")
        self.file_label.setToolTip(f"A: {a.path}\nB: {b.path}")
        self.likelihood_panel.show_view(None, None, BLEND_BITS_NOTE)

    def show_ab(self, a: GalleryImage | None, b: GalleryImage | None) -> None:
        for tile, item, name in ((self.a_tile, a, "A"), (self.b_tile, b, "B")):
            tile.set_image(item.pixels if item is not None else None)
            tile.caption.setText(f"{name}: {item.name}" if item is not None else f"{name}: —")
            tile.setToolTip(item.path if item is not None else "")
        ready = a is not None and b is not None
        for widget in (
            self.t,
            self.mode,
            self.swap_button,
            self.strip_frames,
            self.export_png,
            self.export_gif,
            *self.level_rows,
        ):
            widget.setEnabled(ready)
        self.export_mp4.setEnabled(ready and self.mp4_available)
        if not ready:
            self.strip.set_images(None)

    def show_strip(self, images: np.ndarray | None) -> None:
        self.strip.columns = len(images) if images is not None else None
        self.strip.set_images(images)

    def set_mp4_available(self, available: bool) -> None:
        self.mp4_available = available
        self.export_mp4.setToolTip(
            "Save the interpolation as an MP4 video"
            if available
            else "MP4 needs the imageio and imageio-ffmpeg packages "
            "(pip install imageio imageio-ffmpeg); GIF works without them"
        )

    # -- internals -------------------------------------------------------------------------

    def _on_mode_changed(self, _index: int) -> None:
        self.blend_changed.emit()
        self.strip_changed.emit()

    def _on_source_changed(self) -> None:
        self.blend_changed.emit()
        self.strip_changed.emit()

    def _on_strip_frames_changed(self, _value: int) -> None:
        self.strip_changed.emit()

"""What the window does with the user's own images.

The controller owns the :class:`~explorer.state.gallery.Gallery` and the three panels that show
it (gallery, images, directions) and wires them to the state and the engine:

- **Import.** Files and folders become a generator job on the task runner (file decode and
  encode off the GUI thread, progress, cancel); each encoded image joins the gallery. The
  first image of a drop becomes the view (``ExplorerState.set_image``); the image shown
  before it (or the drop's second image) becomes A, the new one B.
- **Interpolation and mixing.** The slider, mode and level sources blend A and B per level
  (:mod:`explorer.state.blend`) into the view's unit noise (``set_noise``), so the samples view
  renders them live through the engine's level cache. The strip is a separate engine
  target, rendered only when A, B or the blend settings change.
- **Directions** from two groups of gallery images become named sliders in the state.
- **Export** of the strip (PNG) and of the animation (GIF, MP4) runs as a job too.

A failed import, load or export reports why and leaves the view as it was.

The controller does not know the window that holds it: it gets the engine, the state, the
task runner, the samples grid (whose selection K varies) and the file choosers, and says
what the user should read through signals (``error_reported``, ``status_message``,
``tab_requested``) that the window shows.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QWidget

from core.files.images import IMAGE_SUFFIXES, save_png
from core.flow.collector import collect
from explorer.engine.render import Frame, RenderEngine, RenderRequest
from explorer.panels.directions import DirectionsPanel
from explorer.panels.gallery import GalleryPanel
from explorer.panels.images import ImagesPanel
from explorer.panels.importer import (
    AlreadyImported,
    ImportedBatch,
    ImportedImage,
    ImportFailure,
    import_images,
)
from explorer.state import blend
from explorer.state.directions import (
    DirectionFileError,
    direction_from_groups,
    load_direction,
    save_direction,
)
from explorer.state.export import GIF, MP4, animation_job, mp4_available, strip_png, there_and_back
from explorer.state.gallery import Gallery, group_latents
from explorer.state.jobs import Task
from explorer.state.state import IMAGE_SHOWN, ExplorerState, ModelInfo
from explorer.widgets.dialogs import FileDialogs
from explorer.widgets.images import ImageGridView
from explorer.widgets.task_runner import TaskRunner

STRIP_TARGET = "strip"
MAX_LISTED_FAILURES = 8
IMAGE_FILTER = "Images ({});;All files (*)".format(
    " ".join(f"*{s}" for s in sorted(IMAGE_SUFFIXES))
)
DIRECTION_FILTER = "Direction (*.npz)"


def import_summary(count: int, existing: int) -> str:
    """The status line after an import of ``count`` files, ``existing`` of which were in
    the gallery already."""
    new = count - existing

    def images(n: int) -> str:
        return f"{n} image{'s' if n != 1 else ''}"

    if not existing:
        return f"Imported {images(new)}"
    there = f"{existing} already in the gallery"
    if not new:
        return f"No new images: {there}"
    return f"Imported {new} new image{'s' if new != 1 else ''}; {there}"


@dataclass(eq=False)
class ImportReport:
    """What one import did: the gallery ids it added (in order) and the files it could not
    use. ``show``: the first image becomes the view; ``group``: the images become a
    direction group; ``roles``: paths whose images get A, B or current back (a re-import
    after a model change); ``reveal``: the Images tab comes to the front with the first
    image shown."""

    paths: list[str]
    show: bool = True
    group: str | None = None
    roles: dict[str, list[str]] = field(default_factory=dict)
    reveal: bool = True
    ids: list[int] = field(default_factory=list)
    existing: int = 0  # files whose image was in the gallery already (shown, not added)
    again: list[str] = field(default_factory=list)  # known at the start, removed since
    failures: list[ImportFailure] = field(default_factory=list)
    previous_id: int | None = None
    cancelled: bool = False
    error: str | None = None


class ImageController(QObject):
    """Import, gallery, interpolation, mixing, directions and export for one window."""

    image_shown = Signal(int)  # gallery id of the image that became the view
    import_finished = Signal(object)  # ImportReport
    strip_shown = Signal(int)  # request id of the strip now shown
    export_finished = Signal(object)  # Path, or None when cancelled or failed
    error_reported = Signal(str, str)  # title, message: something the user must read
    status_message = Signal(str, int)  # a passing one-line message, its timeout in ms
    tab_requested = Signal(QWidget)  # a panel of this controller the user should now see

    def __init__(
        self,
        engine: RenderEngine,
        state: ExplorerState,
        tasks: TaskRunner,
        samples_view: ImageGridView,
        dialogs: FileDialogs,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.engine = engine
        self.state = state
        self.tasks = tasks
        self.samples_view = samples_view
        self.dialogs = dialogs
        self.gallery = Gallery()
        self.gallery_panel = GalleryPanel(self.gallery)
        self.images_panel = ImagesPanel()
        self.directions_panel = DirectionsPanel(self.state)
        self.images_panel.set_mp4_available(mp4_available())
        self.strip_request_id = 0
        self.strip_shown_id = 0
        self.last_strip: np.ndarray | None = None
        self.last_report: ImportReport | None = None
        self._strip_key: tuple | None = None
        self._view_is_blend = False  # the view is A and B blended, not one gallery image

        self.gallery.changed.connect(self._on_gallery_changed)
        self.engine.frame_rendered.connect(self._on_frame)
        gp = self.gallery_panel
        gp.show_requested.connect(self.show)
        gp.a_requested.connect(lambda i: self.gallery.set_roles(a_id=i))
        gp.b_requested.connect(lambda i: self.gallery.set_roles(b_id=i))
        gp.remove_requested.connect(self.gallery.remove)
        gp.import_requested.connect(self.import_dialog)
        ip = self.images_panel
        ip.show_image_requested.connect(lambda: self.show(self.gallery.current_id))
        ip.vary_requested.connect(self.keep_coarse_resample_fine)
        ip.blend_changed.connect(self.apply_blend)
        ip.blend_finished.connect(self.state.end_edit)
        ip.strip_changed.connect(self.request_strip)
        ip.swap_requested.connect(self.gallery.swap_ab)
        ip.export_requested.connect(self.export_dialog)
        dp = self.directions_panel
        dp.group_from_selection.connect(self.group_from_selection)
        dp.group_from_folder.connect(self.group_from_folder_dialog)
        dp.create_requested.connect(self.create_direction)
        dp.load_requested.connect(self.load_direction_dialog)
        dp.save_requested.connect(self.save_direction_dialog)

    # -- the model -------------------------------------------------------------------------

    def model_changed(self, info: ModelInfo) -> None:
        """Latents belong to a model: re-encode the gallery's files with the new one,
        keeping A, B and the current image; directions groups start empty."""
        self.tasks.cancel_all()
        self.images_panel.set_levels(info.latent_shapes)
        for group in self.directions_panel.groups:
            self.directions_panel.set_group(group, [])
        roles: dict[str, list[str]] = {}
        for role, item in (("a", self.gallery.a), ("b", self.gallery.b)):
            if item is not None:
                roles.setdefault(item.path, []).append(role)
        paths = list(dict.fromkeys(item.path for item in self.gallery.items))
        self._view_is_blend = False
        self.gallery.clear()
        self._strip_key = None
        if paths:
            self.import_paths(paths, show=False, roles=roles)

    # -- importing ---------------------------------------------------------------------------

    def import_paths(
        self,
        paths: list[str | os.PathLike],
        show: bool = True,
        group: str | None = None,
        roles: dict[str, list[str]] | None = None,
        reveal: bool = True,
    ) -> Task | None:
        """Import files and folders as a job; returns its task (``None`` without a model)."""
        info = self.engine.model_info
        if info is None or not paths:
            return None
        report = ImportReport([str(p) for p in paths], show, group, roles or {}, reveal)
        report.previous_id = self.gallery.current_id
        channels, size, encode = info.channels, info.image_size, self.engine.encode
        encode_many, gallery = self.engine.encode_images, self.gallery
        count = len(report.paths)
        name = f"Importing {Path(report.paths[0]).name}" if count == 1 else "Importing images"
        # Called when the job's turn comes, on the GUI thread: the images known then include
        # those of the imports queued before it.
        return self.tasks.start(
            name,
            lambda: import_images(
                report.paths,
                encode,
                channels,
                size,
                encode_many=encode_many,
                known=gallery.known(info.model_id),
            ),
            on_result=lambda result: self._on_imported(report, result),
            on_done=lambda task: self._on_import_done(report, task),
        )

    def _on_imported(self, report: ImportReport, result: object) -> None:
        if isinstance(result, ImportedBatch):
            with self.gallery.changes():
                for image in result.images:
                    self._on_imported(report, image)
            # The gallery's images live for the session. Moved out of the collector's
            # sight, the full collections that a growing heap triggers stay short: with
            # 5,000 imported images each held every thread for 100-155 ms. Young cycles
            # are collected first, so only live objects are frozen; gallery images hold
            # no cycles, so removing one still frees it. While a model copy runs on the
            # render thread nothing is collected (see core.flow.collector.collect): the
            # young cycles are frozen with the rest.
            collect(1)
            gc.freeze()
            return
        if isinstance(result, ImportFailure):
            report.failures.append(result)
            return
        if isinstance(result, AlreadyImported):
            item = self.gallery.get(result.item_id)
            if item is None:  # removed while the import ran: encoded again after it
                report.again.append(result.path)
                return
            report.existing += 1
        elif isinstance(result, ImportedImage) and result.encoded.model_id == self.engine.model_id:
            item = self.gallery.add(result.path, result.pixels, result.encoded, result.preview)
        else:
            return  # encoded by a model that has since been replaced
        report.ids.append(item.item_id)
        for role in report.roles.get(item.path, ()):
            self.gallery.set_roles(**{f"{role}_id": item.item_id})
        if not report.show:
            return
        if len(report.ids) == 1:
            previous = report.previous_id
            if previous is not None and previous != item.item_id and previous in self.gallery:
                self.show(item.item_id, a_id=previous, b_id=item.item_id)
            else:
                self.show(item.item_id, a_id=item.item_id)
            if report.reveal:
                self.tab_requested.emit(self.images_panel)
        elif len(report.ids) == 2:
            self.gallery.set_roles(a_id=report.ids[0], b_id=item.item_id)
            # The view shows the first image, now A: the slider goes to A's end.
            if self.gallery.current_id is not None:
                self._sync_slider_to(self.gallery.current_id)

    def _on_import_done(self, report: ImportReport, task: Task) -> None:
        report.cancelled = task.cancelled
        report.error = None if task.cancelled else task.error
        self.last_report = report
        if report.again and not task.cancelled:
            self.import_paths(report.again, show=False)
        if report.group is not None:
            self.directions_panel.set_group(report.group, report.ids)
        added = len(report.ids)
        if report.error:
            self.error_reported.emit("Import failed", report.error)
        elif report.failures and (report.show or report.group):
            total = added + len(report.failures)
            lines = [f.message for f in report.failures[:MAX_LISTED_FAILURES]]
            more = len(report.failures) - len(lines)
            if more > 0:
                lines.append(f"… and {more} more")
            if total == 1:
                title, head = "Cannot use this file", ""
            else:
                title = "Some files could not be used"
                head = f"{len(report.failures)} of {total} could not be used; {added} imported.\n\n"
            self.error_reported.emit(title, head + "\n".join(lines))
        if report.cancelled:
            self.status_message.emit(
                f"Import cancelled: {added} image{'s' if added != 1 else ''} imported", 10_000
            )
        elif added and not report.failures:
            self.status_message.emit(import_summary(added, report.existing), 5000)
        self.import_finished.emit(report)

    def import_dialog(self) -> None:
        paths = self.dialogs.open_files("Import images", IMAGE_FILTER)
        if paths:
            self.import_paths(paths)

    def import_folder_dialog(self) -> None:
        folder = self.dialogs.folder("Import a folder of images")
        if folder:
            self.import_paths([folder])

    # -- showing -------------------------------------------------------------------------------

    def show(self, item_id: int | None, **roles: int | None) -> bool:
        """Make a gallery image the view: its latents with temperature 1 (undoable).
        ``roles``: A and B to choose at the same time (``a_id=``, ``b_id=``)."""
        item = self.gallery.get(item_id)
        if item is None or item.model_id != self.engine.model_id:
            return False
        # The view first: its frame goes to the engine before the strip's.
        self._view_is_blend = False
        self.state.set_image(item.latents)
        self.gallery.set_roles(current_id=item.item_id, **roles)
        self._sync_slider_to(item.item_id)
        self.image_shown.emit(item.item_id)
        return True

    def keep_coarse_resample_fine(self, keep: int | None = None, n: int | None = None) -> None:
        """A grid of variations of the selected image: its ``keep`` coarsest levels with new
        noise in the finer ones (K)."""
        panel = self.images_panel
        keep = panel.keep_levels.value() if keep is None else keep
        n = panel.variations.value() if n is None else n
        self.state.vary_fine(keep, n, image_index=self.samples_view.selected)
        self.samples_view.select(0)

    def _on_gallery_changed(self) -> None:
        panel = self.images_panel
        self._show_current()
        panel.show_ab(self.gallery.a, self.gallery.b)
        self.request_strip()

    def _show_current(self) -> None:
        """The image box: the image the view shows, or what the blend is made of."""
        info = self.engine.model_info
        gallery, panel = self.gallery, self.images_panel
        if gallery.current is None and self._view_is_blend and gallery.a and gallery.b:
            panel.show_blend(panel.t.value(), gallery.a, gallery.b)
        else:
            panel.show_item(gallery.current, info.test_bpd if info else None)

    def _sync_slider_to(self, item_id: int) -> None:
        """Put the t slider at the end that the shown image is (without an edit)."""
        if item_id == self.gallery.a_id:
            self.images_panel.t.set_value(0.0)
        elif item_id == self.gallery.b_id:
            self.images_panel.t.set_value(1.0)

    # -- interpolation and mixing ------------------------------------------------------------

    def blend_weights(self, t: float | None = None) -> list[float]:
        panel = self.images_panel
        return blend.level_weights(panel.t.value() if t is None else t, panel.sources)

    def apply_blend(self) -> bool:
        """Put the blend of A and B at the panel's t, mode and level sources into the view."""
        a, b = self.gallery.a, self.gallery.b
        if a is None or b is None or {a.model_id, b.model_id} != {self.engine.model_id}:
            return False
        weights = self.blend_weights()
        latents = blend.blend(a.latents, b.latents, weights, self.images_panel.mode_name)
        # At either end the view is that image (the image box shows it), else a blend.
        end = a.item_id if not any(weights) else b.item_id if all(w == 1 for w in weights) else None
        shown = IMAGE_SHOWN if end is not None else "a blend of images A and B"
        self.state.set_noise(latents, merge_key=("blend",), shown=shown)
        self._view_is_blend = end is None
        if end != self.gallery.current_id:
            self.gallery.set_roles(current_id=end)  # the image box follows
        else:
            self._show_current()
        return True

    def strip_latents(self, frames: int) -> list[np.ndarray] | None:
        a, b = self.gallery.a, self.gallery.b
        if a is None or b is None or a.model_id != b.model_id:
            return None
        panel = self.images_panel
        return blend.strip(a.latents, b.latents, frames, panel.sources, panel.mode_name)

    def request_strip(self) -> int | None:
        """Render the strip when A, B or the blend settings changed; returns the request id."""
        panel = self.images_panel
        a, b = self.gallery.a, self.gallery.b
        if a is None or b is None or a.model_id != self.engine.model_id:
            self._strip_key = None
            self.last_strip = None
            panel.show_strip(None)
            return None
        frames = panel.strip_frames.value()
        key = (a.item_id, b.item_id, frames, panel.mode_name, tuple(panel.sources))
        if key == self._strip_key:
            return None
        self._strip_key = key
        latents = self.strip_latents(frames)
        if latents is None:
            return None
        self.strip_request_id += 1
        self.engine.submit(
            RenderRequest(self.strip_request_id, a.model_id, tuple(latents), STRIP_TARGET)
        )
        return self.strip_request_id

    def _on_frame(self, frame: Frame) -> None:
        if frame.target != STRIP_TARGET or frame.request_id != self.strip_request_id:
            return
        if frame.model_id != self.engine.model_id:
            return
        self.last_strip = frame.images
        self.strip_shown_id = frame.request_id
        self.images_panel.show_strip(frame.images)
        self.strip_shown.emit(frame.request_id)

    # -- directions ------------------------------------------------------------------------------

    def group_from_selection(self, group: str) -> None:
        ids = self.gallery_panel.selected_ids()
        if not ids:
            self.status_message.emit(
                f"Select the images of group {group} in the gallery first", 8000
            )
            return
        self.directions_panel.set_group(group, ids)

    def group_from_folder_dialog(self, group: str) -> None:
        folder = self.dialogs.folder(f"Images of group {group}")
        if folder:
            self.import_paths([folder], show=False, group=group)

    def create_direction(self, name: str) -> bool:
        """The mean latent difference of the two groups becomes a named direction."""
        groups = []
        for group in ("A", "B"):
            items = [self.gallery.get(i) for i in self.directions_panel.groups[group]]
            items = [it for it in items if it is not None and it.model_id == self.engine.model_id]
            if not items:
                self.error_reported.emit(
                    "Cannot make a direction", f"Group {group} has no images of this model."
                )
                return False
            groups.append(group_latents(items))
        default = f"direction {len(self.state.directions) + 1}"
        direction = direction_from_groups(name.strip() or default, groups[0], groups[1])
        self.state.add_direction(direction)
        self.directions_panel.name.clear()
        self.status_message.emit(
            f"Direction “{direction.name}”: {direction.count_a} → {direction.count_b} images",
            8000,
        )
        return True

    def load_direction_file(self, path: str | os.PathLike, reveal: bool = True) -> bool:
        try:
            direction = load_direction(path)
            self.state.add_direction(direction)
        except (DirectionFileError, ValueError) as exc:
            self.error_reported.emit("Cannot load direction", f"{exc}")
            return False
        if reveal:
            self.tab_requested.emit(self.directions_panel)
        return True

    def save_direction_file(self, index: int, path: str | os.PathLike) -> Path | None:
        direction = self.state.directions[index].direction
        try:
            saved = save_direction(direction, path)
        except OSError as exc:
            self.error_reported.emit("Cannot save direction", f"{path}: {exc}")
            return None
        self.status_message.emit(f"Saved {saved}", 5000)
        return saved

    def load_direction_dialog(self) -> None:
        path = self.dialogs.open_file("Load direction", DIRECTION_FILTER)
        if path:
            self.load_direction_file(path)

    def save_direction_dialog(self, index: int) -> None:
        name = self.state.directions[index].direction.name.replace(" ", "_")
        path = self.dialogs.save_path("Save direction", f"{name}.npz", DIRECTION_FILTER, ".npz")
        if path:
            self.save_direction_file(index, path)

    # -- export ------------------------------------------------------------------------------

    def export_strip(self, path: str | os.PathLike) -> Path | None:
        """The strip at the model's resolution, frames side by side, as PNG."""
        frames = self.images_panel.strip_frames.value()
        latents = self.strip_latents(frames)
        if latents is None:
            self.error_reported.emit("Cannot export", "Choose two images, A and B, first.")
            return None
        images = self.engine.decode(latents)
        try:
            saved = save_png(strip_png(images), path)
        except (OSError, ValueError) as exc:
            self.error_reported.emit("Cannot save image", f"{path}: {exc}")
            return None
        self.status_message.emit(f"Saved {saved}", 5000)
        return saved

    def export_animation(self, path: str | os.PathLike, fmt: str) -> Task | None:
        """The interpolation as GIF or MP4, rendered and written as a job."""
        if fmt == MP4 and not mp4_available():
            self.error_reported.emit(
                "MP4 is not available",
                "Writing MP4 needs the imageio and imageio-ffmpeg packages "
                "(pip install imageio imageio-ffmpeg). GIF works without them.",
            )
            return None
        panel = self.images_panel
        latents = self.strip_latents(panel.animation_frames.value())
        a = self.gallery.a
        if latents is None or a is None:
            self.error_reported.emit("Cannot export", "Choose two images, A and B, first.")
            return None
        if panel.bounce.isChecked():
            latents = there_and_back(latents)
        model_id, fps, engine = a.model_id, panel.fps.value(), self.engine

        def decode(chunk: list[np.ndarray]) -> np.ndarray:
            return engine.decode(chunk, model_id)

        return self.tasks.start(
            f"Exporting {fmt.upper()}",
            lambda: animation_job(path, latents, decode, fmt, fps),
            on_done=lambda task: self._on_export_done(path, task),
        )

    def _on_export_done(self, path: str | os.PathLike, task: Task) -> None:
        if task.error and not task.cancelled:
            self.error_reported.emit("Export failed", f"{path}: {task.error}")
        elif task.cancelled:
            self.status_message.emit("Export cancelled; nothing was written", 8000)
        else:
            self.status_message.emit(f"Saved {path}", 5000)
        ok = not task.cancelled and not task.error
        self.export_finished.emit(Path(path) if ok else None)

    def export_dialog(self, kind: str) -> None:
        if kind == "png":
            path = self.dialogs.save_path(
                "Save interpolation strip", "interpolation.png", "PNG image (*.png)", ".png"
            )
            if path:
                self.export_strip(path)
            return
        fmt = GIF if kind == GIF else MP4
        filters = {GIF: "GIF animation (*.gif)", MP4: "MP4 video (*.mp4)"}
        path = self.dialogs.save_path(
            f"Save interpolation as {fmt.upper()}", f"interpolation.{fmt}", filters[fmt], f".{fmt}"
        )
        if path:
            self.export_animation(path, fmt)

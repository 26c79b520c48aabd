"""The gallery of the user's own images: each file's pixels, latents and figures.

No Qt, no torch: the engine makes :class:`EncodedImage` objects (plain numpy), the importer
wraps them into :class:`GalleryImage`, and :class:`Gallery` keeps them for the session with
the two images chosen for interpolation (A and B) and the one shown now. Panels bind to it
through its ``changed`` event.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from explorer.state.likelihood import LikelihoodView, sort_by_p_value
from explorer.state.state import Event

SORT_KEYS = ("bpd_desc", "bpd_asc", "p_value", "added", "name")


@dataclass(frozen=True, eq=False)
class EncodedImage:
    """One image through the model: what the engine hands back from ``encode``."""

    model_id: int
    latents: tuple[np.ndarray, ...]  # finest first, each (C, H, W) float32
    reconstruction: np.ndarray  # uint8 (C, H, W): decode(encode(x)) quantized
    error: np.ndarray  # float32 (C, H, W): |decode(encode(x)) - x| in [0, 1] units
    bits_per_dim: float
    likelihood: LikelihoodView | None = None  # per level and pixel, and the verdict

    def __post_init__(self) -> None:
        for array in (*self.latents, self.reconstruction, self.error):
            array.setflags(write=False)

    @property
    def max_abs_error(self) -> float:
        return float(self.error.max(initial=0.0))


@dataclass(frozen=True, eq=False)
class Preview:
    """A small picture of the whole file and the centre square the model sees."""

    image: np.ndarray  # uint8 (H, W, 3)
    crop_box: tuple[int, int, int, int]  # (left, top, right, bottom) in preview pixels
    file_size: tuple[int, int]  # (width, height) of the file's image, orientation applied


def pixel_digest(pixels: np.ndarray) -> str:
    """A content hash of ``uint8 (C, H, W)`` pixels (their shape included): the same
    image read again from the same file has the same digest."""
    pixels = np.ascontiguousarray(pixels)
    h = hashlib.blake2b(repr((pixels.shape, pixels.dtype.str)).encode(), digest_size=16)
    h.update(pixels.data)
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class GalleryImage:
    """A dropped image: the file, the pixels the model saw, and its encoding."""

    item_id: int
    path: str
    pixels: np.ndarray  # uint8 (C, H, W): core.files.images.load_image at the model's size
    encoded: EncodedImage
    preview: Preview | None = None

    @property
    def name(self) -> str:
        return Path(self.path).name

    @functools.cached_property
    def digest(self) -> str:
        """:func:`pixel_digest` of the pixels (computed once)."""
        return pixel_digest(self.pixels)

    @property
    def latents(self) -> tuple[np.ndarray, ...]:
        return self.encoded.latents

    @property
    def bits_per_dim(self) -> float:
        return self.encoded.bits_per_dim

    @property
    def model_id(self) -> int:
        return self.encoded.model_id

    @property
    def p_value(self) -> float | None:
        """The smaller two-sided typicality p-value; None without the model's test data."""
        likelihood = self.encoded.likelihood
        return likelihood.p_min if likelihood is not None else None


class Gallery:
    """The images of this session, in the order they were added, plus A, B and current.

    ``changed`` is emitted (without arguments) after every edit.
    """

    def __init__(self) -> None:
        self.changed = Event()
        self._held = 0  # inside changes(): edits wait to be announced together
        self._dirty = False
        self._items: dict[int, GalleryImage] = {}
        self._by_path: dict[str, list[int]] = {}  # a folder import asks for each file
        self._next_id = 1
        self.a_id: int | None = None
        self.b_id: int | None = None
        self.current_id: int | None = None

    def __len__(self) -> int:
        return len(self._items)

    @contextlib.contextmanager
    def changes(self) -> Iterator[None]:
        """Edits inside are announced by one ``changed`` at the end (a batch of imported
        images: each listener then does its work once, not once per image)."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            if not self._held and self._dirty:
                self._dirty = False
                self.changed.emit()

    def _announce(self) -> None:
        if self._held:
            self._dirty = True
        else:
            self.changed.emit()

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def __getitem__(self, item_id: int) -> GalleryImage:
        return self._items[item_id]

    def get(self, item_id: int | None) -> GalleryImage | None:
        return self._items.get(item_id) if item_id is not None else None

    @property
    def items(self) -> list[GalleryImage]:
        """In the order added."""
        return list(self._items.values())

    @property
    def a(self) -> GalleryImage | None:
        return self.get(self.a_id)

    @property
    def b(self) -> GalleryImage | None:
        return self.get(self.b_id)

    @property
    def current(self) -> GalleryImage | None:
        return self.get(self.current_id)

    def add(
        self,
        path: str,
        pixels: np.ndarray,
        encoded: EncodedImage,
        preview: Preview | None = None,
    ) -> GalleryImage:
        item = GalleryImage(self._next_id, str(path), pixels, encoded, preview)
        self._next_id += 1
        self._items[item.item_id] = item
        self._by_path.setdefault(item.path, []).append(item.item_id)
        self._announce()
        return item

    def with_path(self, path: str) -> list[GalleryImage]:
        """The images of the file ``path`` (the same file may be in several versions)."""
        return [self._items[i] for i in self._by_path.get(str(path), ()) if i in self._items]

    def known(self, model_id: int) -> dict[tuple[str, str], int]:
        """``(path, pixel digest) -> id`` of the images encoded by ``model_id``: what an
        import skips encoding (a snapshot, for a worker thread)."""
        return {
            (item.path, item.digest): item.item_id
            for item in self._items.values()
            if item.model_id == model_id
        }

    def remove(self, item_ids: Iterable[int]) -> None:
        removed = False
        for item_id in list(item_ids):
            if (item := self._items.pop(item_id, None)) is not None:
                removed = True
                self._by_path[item.path].remove(item_id)
                self.a_id = None if self.a_id == item_id else self.a_id
                self.b_id = None if self.b_id == item_id else self.b_id
                self.current_id = None if self.current_id == item_id else self.current_id
        if removed:
            self._announce()

    def clear(self) -> None:
        self._items.clear()
        self._by_path.clear()
        self.a_id = self.b_id = self.current_id = None
        self._announce()

    def set_roles(
        self,
        a_id: int | None = ...,  # type: ignore[assignment]
        b_id: int | None = ...,  # type: ignore[assignment]
        current_id: int | None = ...,  # type: ignore[assignment]
    ) -> None:
        """Choose A, B and/or the current image (``...`` leaves a role as it is)."""
        for name, value in (("a_id", a_id), ("b_id", b_id), ("current_id", current_id)):
            if value is ...:
                continue
            if value is not None and value not in self._items:
                raise KeyError(f"no gallery image {value}")
            setattr(self, name, value)
        self._announce()

    def swap_ab(self) -> None:
        self.a_id, self.b_id = self.b_id, self.a_id
        self._announce()

    def sorted(self, key: str = "bpd_desc") -> list[GalleryImage]:
        """``bpd_desc``: most bits/dim first; ``bpd_asc``; ``p_value``: least typical first
        (smallest two-sided p-value against the model's test set); ``added``; ``name``."""
        items = self.items
        if key == "p_value":
            return sorted(items, key=lambda it: sort_by_p_value(it.p_value))
        if key == "bpd_desc":
            return sorted(items, key=lambda it: -_finite(it.bits_per_dim))
        if key == "bpd_asc":
            return sorted(items, key=lambda it: _finite(it.bits_per_dim))
        if key == "name":
            return sorted(items, key=lambda it: (it.name.lower(), it.item_id))
        if key == "added":
            return items
        raise ValueError(f"unknown sort key {key!r}; choose one of {SORT_KEYS}")


def _finite(value: float) -> float:
    # A NaN figure sorts as the worst outlier rather than scrambling the order.
    return value if math.isfinite(value) else math.inf


def group_latents(items: Iterable[GalleryImage]) -> list[np.ndarray]:
    """The latents of several images stacked per level: each ``(N, C, H, W)``."""
    items = list(items)
    if not items:
        raise ValueError("no images")
    return [np.stack(level) for level in zip(*(it.latents for it in items))]

"""The explorer's observable state: what is on screen, as plain Python and numpy.

No Qt, no torch: the state can be built, edited, saved and compared in a unit test, and
the widgets bind to it (napari's model/view split).

**Why latents are stored as unit-temperature noise.** Each level keeps ``eps``, a draw from
N(0, I), and the latent that is rendered is derived from it::

    z = eps * (global_temperature * level_temperature) + offset * sqrt(D) * direction

with ``direction`` a unit vector in the level's ``D = C*H*W`` dimensional space. Editing a
temperature or moving the direction slider never touches ``eps``, so every edit is exact
and reversible: sliding back to where you started gives the bit-identical latent, and one
level's latent depends only on that level's own settings (and the global temperature).
The ``offset`` is measured in units of ``sqrt(D)``, the typical norm of a unit-temperature
latent, so the slider's reach looks alike on every level whatever its size.

**An image's latents are stored the same way.** When a dropped image becomes the view, its
latents ``z`` become ``eps`` and every temperature is set to 1 (offsets and named directions
to 0), so the rendered latent is ``z * 1.0 = z`` bit for bit and the view is the image's
exact reconstruction. The temperature sliders then scale the image's latent towards the
mode (a more typical version of the image), and "Resample level" replaces one level of the
image with fresh noise: the explorer acts on an image as on a sample.

**Class sliders** (see :mod:`explorer.state.classes`) then move the levels in their mask
towards class means, ``z_l += sum_k a_k (mean_k,l - z_l)``, and **named directions**
(directions from examples, see :mod:`explorer.state.directions`) are added on top:
``z_l += amount * d_l`` for each direction with a non-zero amount.

Every state is an immutable :class:`ViewState`; an edit builds a new one. That makes undo
a stack of earlier states and saving a view a matter of writing one of them to ``.npz``.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.stats.class_stats import ClassStats
from explorer.state.classes import ClassMove
from explorer.state.directions import Direction
from explorer.state.history import EditHistory
from explorer.state.npz_files import read_npz, write_npz

Shape = tuple[int, int, int]
SeedKey = tuple[int, ...]

STATE_FORMAT = "realnvp-explorer-state"
STATE_VERSION = 1
MAX_SEED = 2**31 - 1
MAX_IMAGES = 64
TEMPERATURE_RANGE = (0.0, 1.5)
OFFSET_RANGE = (-1.0, 1.0)
_EPS_STREAM, _DIRECTION_STREAM = 0, 1


class StateFileError(ValueError):
    """A latent state file that cannot be used; the message is meant for the user."""


def draw_noise(key: SeedKey, n: int, shape: Shape) -> np.ndarray:
    """``(n, *shape)`` float32 standard normal noise, a pure function of ``key``.

    numpy fills the array in C order from one stream, so the first ``k`` images are the
    same for any ``n >= k``: growing the grid keeps the images already shown.
    """
    eps = np.random.default_rng(list(key)).standard_normal((n, *shape), dtype=np.float32)
    eps.setflags(write=False)
    return eps


def draw_direction(key: SeedKey, shape: Shape) -> np.ndarray:
    """A random unit vector of shape ``shape`` (uniform on the sphere), float32."""
    d = np.random.default_rng(list(key)).standard_normal(shape).astype(np.float64)
    d /= np.linalg.norm(d)
    d = d.astype(np.float32)
    d.setflags(write=False)
    return d


@dataclass(frozen=True, eq=False)
class LevelState:
    """One latent level. Arrays are read-only and never changed in place."""

    shape: Shape
    eps: np.ndarray  # (n, C, H, W) float32, unit-temperature noise
    direction: np.ndarray  # (C, H, W) float32, unit norm
    temperature: float = 1.0
    locked: bool = False
    offset: float = 0.0
    # Where eps and direction came from, so a grid resize can redraw the same images.
    # None for noise that came from elsewhere (a loaded file without keys, an encoding).
    eps_key: SeedKey | None = None
    direction_key: SeedKey | None = None

    @property
    def dims(self) -> int:
        return math.prod(self.shape)

    def latent(self, global_temperature: float) -> np.ndarray:
        """The latent that is rendered: ``eps * T + offset * sqrt(D) * direction``, float32."""
        z = self.eps * np.float32(global_temperature * self.temperature)
        if self.offset:
            z = z + np.float32(self.offset * math.sqrt(self.dims)) * self.direction
        z.setflags(write=False)
        return z

    def with_images(self, n: int, seed: int, level: int, draw: int) -> LevelState:
        """The same level with ``n`` images; existing images are kept where possible."""
        if n == self.eps.shape[0]:
            return self
        if self.eps_key is not None:
            return replace(self, eps=draw_noise(self.eps_key, n, self.shape))
        if n < self.eps.shape[0]:
            eps = self.eps[:n].copy()
        else:
            extra = draw_noise((seed, level, draw, _EPS_STREAM), n - self.eps.shape[0], self.shape)
            eps = np.concatenate([self.eps, extra])
        eps.setflags(write=False)
        return replace(self, eps=eps)


@dataclass(frozen=True, eq=False)
class AppliedDirection:
    """A named direction and how far along it the view is moved."""

    direction: Direction
    amount: float = 0.0


IMAGE_SHOWN = "the image's own latents, exactly"


@dataclass(frozen=True, eq=False)
class ViewState:
    """Everything needed to redraw the samples exactly: the unit of undo and of saving."""

    levels: tuple[LevelState, ...]  # finest first, like the model's latents
    n_images: int
    seed: int
    temperature: float
    directions: tuple[AppliedDirection, ...] = ()
    classes: ClassMove | None = None  # the class sliders, when the model has class statistics
    # The global temperature the user sampled at before an image's latents took the view
    # to 1.00 (exact reconstruction); Resample comes back to it. None: nothing to restore.
    sampling_temperature: float | None = None
    # What the latents shown at 1.00 are, in words ("the image's own latents, exactly",
    # "class 3 samples drawn at 0.70", ...), for the note beside the temperature.
    shown: str = IMAGE_SHOWN

    @property
    def shapes(self) -> tuple[Shape, ...]:
        return tuple(level.shape for level in self.levels)

    def latent(self, index: int) -> np.ndarray:
        """Rendered latent of level ``index``: ``(n, C, H, W)`` float32."""
        z = self.levels[index].latent(self.temperature)
        if self.classes is not None:
            z = self.classes.apply(index, z)
        moved = False
        for applied in self.directions:
            if applied.amount:
                z = z + np.float32(applied.amount) * applied.direction.vectors[index]
                moved = True
        if moved:
            z.setflags(write=False)
        return z

    def latents(self) -> list[np.ndarray]:
        """Rendered latents, finest first, each ``(n, C, H, W)`` float32."""
        return [self.latent(i) for i in range(len(self.levels))]


@dataclass(frozen=True)
class StateChange:
    """What an edit touched. ``levels``: levels whose rendered latent changed;
    ``reset``: the shapes or the number of images changed (views rebuild); ``continued``:
    the edit went on an open continuous one (a drag's second and later moves, wheel notches
    in a row), so its frame may be a draft."""

    levels: frozenset[int] = frozenset()
    reset: bool = False
    continued: bool = False


class Event:
    """A minimal observer list, so the state needs no Qt (``connect`` / ``emit``)."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[..., object]] = []

    def connect(self, callback: Callable[..., object]) -> None:
        self._callbacks.append(callback)

    def disconnect(self, callback: Callable[..., object]) -> None:
        self._callbacks.remove(callback)

    def emit(self, *args: object) -> None:
        for callback in list(self._callbacks):
            callback(*args)


@dataclass(frozen=True)
class ModelInfo:
    """Facts about the open model: made by the engine, shown by the model panel. Plain
    values, so widgets never see torch."""

    model_id: int
    source: str | None  # checkpoint path, or None for a random model
    untrained: bool
    dataset: str | None
    image_size: int
    channels: int
    num_parameters: int
    latent_shapes: tuple[tuple[int, int, int], ...]  # finest first
    test_bpd: float | None
    step: int | None
    device: str
    config: dict[str, Any] = field(default_factory=dict)
    # Per-class latent statistics (labelled training data), or None with the reason why.
    class_stats: ClassStats | None = None
    class_note: str = ""
    data_dir: str | None = None  # the folder the model was trained from, as recorded


def _check_temperature(value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"temperature must be finite and non-negative, got {value}")
    return value


def fresh_view(
    shapes: Sequence[Sequence[int]], n_images: int, seed: int, temperature: float
) -> ViewState:
    """A new view for a model with latent levels ``shapes``: every level's noise and
    direction drawn from ``seed``, at ``temperature``, nothing locked or moved."""
    checked: list[Shape] = []
    for shape in shapes:
        dims = tuple(int(s) for s in shape)
        if len(dims) != 3 or min(dims) < 1:
            raise ValueError(f"a latent level shape is (C, H, W) of positive sizes: {shape}")
        checked.append(dims)  # type: ignore[arg-type]
    if not checked:
        raise ValueError("a model has at least one latent level")
    if not 1 <= n_images <= MAX_IMAGES:
        raise ValueError(f"the grid holds 1 to {MAX_IMAGES} images, got {n_images}")
    levels = []
    for i, shape in enumerate(checked):
        eps_key = (seed, i, 0, _EPS_STREAM)
        dir_key = (seed, i, 0, _DIRECTION_STREAM)
        levels.append(
            LevelState(
                shape=shape,
                eps=draw_noise(eps_key, n_images, shape),
                direction=draw_direction(dir_key, shape),
                eps_key=eps_key,
                direction_key=dir_key,
            )
        )
    return ViewState(tuple(levels), n_images, seed, _check_temperature(temperature))


def checked_noise(eps: Sequence[np.ndarray], shapes: Sequence[Shape]) -> list[np.ndarray]:
    """Per-level noise for levels ``shapes`` as read-only float32 ``(N, C, H, W)`` copies,
    checked (a ``(C, H, W)`` array is one image)."""
    if len(eps) != len(shapes):
        raise ValueError(f"expected {len(shapes)} latent levels, got {len(eps)}")
    arrays = []
    for i, (e, shape) in enumerate(zip(eps, shapes)):
        e = np.array(e, dtype=np.float32, copy=True)
        if e.shape == shape:
            e = e[None]
        n = len(arrays[0]) if arrays else len(e)
        if e.ndim != 4 or e.shape[1:] != shape or len(e) != n:
            raise ValueError(f"latent level {i} has shape {e.shape}, expected ({n}, {shape})")
        if not 1 <= len(e) <= MAX_IMAGES or not np.isfinite(e).all():
            raise ValueError(f"latent level {i}: 1 to {MAX_IMAGES} finite latents needed")
        e.setflags(write=False)
        arrays.append(e)
    return arrays


def variations(
    view: ViewState, keep_levels: int, n_images: int, image_index: int, draw: int
) -> ViewState:
    """``n_images`` variations of image ``image_index`` of ``view``, the first the image
    itself: its ``keep_levels`` coarsest levels kept (and locked), the finer ones drawn
    anew (draw ``draw`` of the view's seed)."""
    first_kept = len(view.levels) - keep_levels
    levels = []
    for i, level in enumerate(view.levels):
        row = level.eps[image_index][None]  # (1, C, H, W)
        if i >= first_kept:
            eps, locked = np.repeat(row, n_images, axis=0), True
        else:
            fresh = draw_noise((view.seed, i, draw, _EPS_STREAM), n_images - 1, level.shape)
            eps, locked = np.concatenate([row, fresh]), False
        eps.setflags(write=False)
        levels.append(replace(level, eps=eps, locked=locked, eps_key=None))
    kept = f"its {keep_levels} coarsest levels" if keep_levels != 1 else "its coarsest level"
    return replace(
        view,
        levels=tuple(levels),
        n_images=n_images,
        shown=f"variations of one image, {kept} kept and the rest drawn anew",
    )


class ExplorerState:
    """The observable state. Edits are methods; every edit emits ``changed(StateChange)``.

    Continuous edits (slider drags) pass through a merge key, so a whole drag is one undo
    step; a view calls :meth:`end_edit` when the drag ends.
    """

    def __init__(
        self, shapes: Sequence[Sequence[int]] = ((1, 2, 2),), n_images: int = 16, seed: int = 0
    ) -> None:
        self.changed = Event()
        self._history: EditHistory[ViewState] = EditHistory()
        self._draws: Iterator[int] = itertools.count(1)
        self._view = fresh_view(shapes, n_images, seed, temperature=1.0)

    # -- reading ----------------------------------------------------------------------

    @property
    def view(self) -> ViewState:
        return self._view

    @property
    def num_levels(self) -> int:
        return len(self._view.levels)

    @property
    def shapes(self) -> tuple[Shape, ...]:
        return self._view.shapes

    @property
    def n_images(self) -> int:
        return self._view.n_images

    @property
    def seed(self) -> int:
        return self._view.seed

    @property
    def temperature(self) -> float:
        return self._view.temperature

    def level(self, index: int) -> LevelState:
        return self._view.levels[index]

    def latent(self, index: int) -> np.ndarray:
        return self._view.latent(index)

    @property
    def directions(self) -> tuple[AppliedDirection, ...]:
        return self._view.directions

    def latents_for(self, eps: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The latents this view's temperatures, offsets and directions make of other
        unit noise ``eps`` (one ``(N, C, H, W)`` array per level)."""
        arrays = checked_noise(eps, self.shapes)
        levels = tuple(replace(lv, eps=e) for lv, e in zip(self._view.levels, arrays))
        return replace(self._view, levels=levels, n_images=len(arrays[0])).latents()

    def latents(self) -> list[np.ndarray]:
        return self._view.latents()

    @property
    def can_undo(self) -> bool:
        return self._history.can_undo

    @property
    def can_redo(self) -> bool:
        return self._history.can_redo

    # -- whole-state edits --------------------------------------------------------------

    def reset(
        self,
        shapes: Sequence[Sequence[int]],
        n_images: int | None = None,
        seed: int | None = None,
        temperature: float | None = None,
    ) -> None:
        """Start over for a (new) model; clears the undo history."""
        self._history = EditHistory()
        self._view = fresh_view(
            shapes,
            self.n_images if n_images is None else n_images,
            self.seed if seed is None else seed,
            self.temperature if temperature is None else temperature,
        )
        self.changed.emit(StateChange(frozenset(range(self.num_levels)), reset=True))

    def set_view(self, view: ViewState) -> None:
        """Replace the whole view (a loaded file); undoable."""
        if view.shapes != self.shapes:
            raise ValueError(f"view has levels {view.shapes}; the state has {self.shapes}")
        self._commit(view, StateChange(frozenset(range(self.num_levels)), reset=True))

    def set_temperature(self, value: float, merge: bool = True) -> None:
        value = _check_temperature(value)
        if value == self.temperature:
            return
        self._commit(
            # The user's own choice: Resample keeps it (nothing to come back to).
            replace(self._view, temperature=value, sampling_temperature=None),
            StateChange(frozenset(range(self.num_levels))),
            ("temperature",) if merge else None,
        )

    def set_seed(self, seed: int) -> None:
        """Draw every unlocked level from ``seed``: the same seed gives the same images."""
        seed = int(seed)
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must lie in [0, {MAX_SEED}], got {seed}")
        view = self._view
        levels = list(view.levels)
        changed = set()
        for i, level in enumerate(levels):
            if not level.locked:
                key = (seed, i, 0, _EPS_STREAM)
                levels[i] = replace(
                    level, eps=draw_noise(key, view.n_images, level.shape), eps_key=key
                )
                changed.add(i)
        temperature, sampled_at = view.temperature, view.sampling_temperature
        # New samples: the user's temperature again, unless a level is locked (it would
        # change that level too; keep-coarse variations of an image stay at 1.00).
        if sampled_at is not None and not any(level.locked for level in levels):
            temperature, sampled_at = sampled_at, None
            changed = set(range(len(levels)))
        self._commit(
            replace(
                view,
                seed=seed,
                levels=tuple(levels),
                temperature=temperature,
                sampling_temperature=sampled_at,
            ),
            StateChange(frozenset(changed)),
        )

    @property
    def all_locked(self) -> bool:
        """Whether every level is locked, so Resample has nothing to draw."""
        return all(level.locked for level in self._view.levels)

    @property
    def any_locked(self) -> bool:
        """Whether a level is locked (Resample then keeps the global temperature)."""
        return any(level.locked for level in self._view.levels)

    @property
    def sampling_temperature(self) -> float | None:
        """The temperature Resample returns to after an image was shown at 1.00 (``None``
        when the view is at the user's own temperature)."""
        return self._view.sampling_temperature

    def resample(self) -> bool:
        """New noise for every unlocked level (the next seed); with no level locked, at the
        temperature the user sampled at before an image was shown. With every level locked
        nothing would change,
        so nothing does (not even the seed); returns whether it resampled."""
        if self.all_locked:
            return False
        self.set_seed((self.seed + 1) % (MAX_SEED + 1))
        return True

    def set_n_images(self, n: int) -> None:
        n = int(n)
        if not 1 <= n <= MAX_IMAGES:
            raise ValueError(f"the grid holds 1 to {MAX_IMAGES} images, got {n}")
        if n == self.n_images:
            return
        view = self._view
        draw = next(self._draws)
        levels = tuple(
            level.with_images(n, view.seed, i, draw) for i, level in enumerate(view.levels)
        )
        self._commit(
            replace(view, n_images=n, levels=levels),
            StateChange(frozenset(range(self.num_levels)), reset=True),
        )

    # -- images -------------------------------------------------------------------------

    def set_image(self, latents: Sequence[np.ndarray]) -> None:
        """An image's latents (one ``(C, H, W)`` or ``(1, C, H, W)`` array per level) become
        the view: ``eps = z`` with every temperature 1, offsets, class and direction amounts
        0 and nothing locked, so the rendered latent is exactly ``z``. Undoable."""
        eps = checked_noise(latents, self.shapes)
        if len(eps[0]) != 1:
            raise ValueError("set_image takes the latents of one image")
        self.set_latents(eps, IMAGE_SHOWN)

    def set_latents(self, latents: Sequence[np.ndarray], shown: str) -> None:
        """Like :meth:`set_image` for ``N`` images (one ``(N, C, H, W)`` array per level):
        a class sample, or the baked view a map drag starts from. ``shown`` says what they
        are, in words (:attr:`shown`). Undoable."""
        eps = checked_noise(latents, self.shapes)
        view = self._view
        levels = tuple(
            replace(level, eps=e, temperature=1.0, offset=0.0, locked=False, eps_key=None)
            for level, e in zip(view.levels, eps)
        )
        directions = tuple(replace(d, amount=0.0) for d in view.directions)
        classes = view.classes.cleared() if view.classes is not None else None
        sampled_at = (
            view.sampling_temperature if view.sampling_temperature is not None else view.temperature
        )
        self._commit(
            replace(
                view,
                levels=levels,
                n_images=len(eps[0]),
                temperature=1.0,
                directions=directions,
                classes=classes,
                sampling_temperature=sampled_at if sampled_at != 1.0 else None,
                shown=shown,
            ),
            StateChange(frozenset(range(self.num_levels)), reset=True),
        )

    @property
    def shown(self) -> str:
        """What the view's latents are, in words, while an image, a class sample, a map move
        or a blend took the temperature to 1.00 (see :attr:`sampling_temperature`)."""
        return self._view.shown

    def set_level_latent(
        self, index: int, latent: np.ndarray, merge_key: object = None, shown: str | None = None
    ) -> None:
        """Level ``index`` of a baked view (see :attr:`is_baked`) becomes ``latent`` exactly
        (``(N, C, H, W)`` or ``(C, H, W)``): a drag on the latent map. ``shown``: what the
        view then is, in words (default: unchanged)."""
        if not self.is_baked:
            raise ValueError("set_level_latent needs a baked view (see set_latents)")
        z = np.array(latent, dtype=np.float32, copy=True)
        level = self.level(index)
        if z.shape == level.shape:
            z = z[None]
        if z.shape != level.eps.shape or not np.isfinite(z).all():
            raise ValueError(f"latent of shape {z.shape}, expected {level.eps.shape}")
        z.setflags(write=False)
        levels = list(self._view.levels)
        levels[index] = replace(levels[index], eps=z, eps_key=None)
        self._commit(
            replace(self._view, levels=tuple(levels), shown=shown or self._view.shown),
            StateChange(frozenset({index})),
            merge_key,
        )

    @property
    def is_baked(self) -> bool:
        """Whether every rendered latent is its level's ``eps`` exactly: temperatures 1, no
        offsets, class or direction amounts (what :meth:`set_latents` makes)."""
        view = self._view
        return (
            view.temperature == 1.0
            and all(lv.temperature == 1.0 and not lv.offset for lv in view.levels)
            and not any(d.amount for d in view.directions)
            and (view.classes is None or not view.classes.active)
        )

    # -- class sliders ----------------------------------------------------------------------

    @property
    def classes(self) -> ClassMove | None:
        return self._view.classes

    def set_classes(self, classes: ClassMove | None) -> None:
        """Install the open model's class sliders (``None``: the model has none). Part of
        opening a model, not an edit: the undo history is kept as it is."""
        if classes is not None and tuple(m.shape[1:] for m in classes.means) != self.shapes:
            raise ValueError("class means do not fit the model's latent levels")
        before = self._view
        self._view = replace(before, classes=classes)
        moved = before.classes is not None and before.classes.active
        self.changed.emit(StateChange(frozenset(range(self.num_levels)) if moved else frozenset()))

    def set_class_amount(self, k: int, value: float, merge: bool = True) -> None:
        """Move the masked levels towards class ``k``'s mean by ``value`` (0: not at all,
        1: onto the mean)."""
        classes = self._require_classes()
        value = _check_amount(value)
        if value == classes.amounts[k]:
            return
        self._commit(
            replace(self._view, classes=classes.with_amount(k, value)),
            StateChange(frozenset(classes.levels)),
            ("class_amount", k) if merge else None,
        )

    def set_class_mask(self, mask: str) -> None:
        """Which levels the class sliders move: ``coarse``, ``fine`` or ``all``."""
        classes = self._require_classes()
        if mask == classes.mask:
            return
        moved = replace(classes, mask=mask)
        changed = frozenset(classes.levels) | frozenset(moved.levels) if classes.active else ()
        self._commit(replace(self._view, classes=moved), StateChange(frozenset(changed)))

    def _require_classes(self) -> ClassMove:
        if self._view.classes is None:
            raise ValueError("the open model has no class statistics")
        return self._view.classes

    def set_noise(
        self, eps: Sequence[np.ndarray], merge_key: object = None, shown: str | None = None
    ) -> None:
        """Replace every level's unit noise (one ``(N, C, H, W)`` or ``(C, H, W)`` array per
        level), keeping temperatures, offsets and directions: the interpolation slider.
        ``shown``: what the view then is, in words (default: unchanged)."""
        arrays = checked_noise(eps, self.shapes)
        view = self._view
        n = len(arrays[0])
        levels = tuple(replace(level, eps=e, eps_key=None) for level, e in zip(view.levels, arrays))
        self._commit(
            replace(view, levels=levels, n_images=n, shown=shown or view.shown),
            StateChange(frozenset(range(self.num_levels)), reset=n != view.n_images),
            merge_key,
        )

    def vary_fine(self, keep_levels: int, n_images: int, image_index: int = 0) -> None:
        """Keep the ``keep_levels`` coarsest levels of image ``image_index`` and draw new
        noise for the finer ones: a grid of ``n_images`` variations, the first of which is
        the image itself. Kept levels are locked, so Resample redraws only the fine ones.
        The paper's "what does each scale hold" experiment, in one step."""
        keep_levels, n_images = int(keep_levels), int(n_images)
        if not 0 <= keep_levels <= self.num_levels:
            raise ValueError(f"keep 0 to {self.num_levels} levels, got {keep_levels}")
        if not 1 <= n_images <= MAX_IMAGES:
            raise ValueError(f"the grid holds 1 to {MAX_IMAGES} images, got {n_images}")
        image_index = min(max(0, int(image_index)), self.n_images - 1)
        self._commit(
            variations(self._view, keep_levels, n_images, image_index, next(self._draws)),
            StateChange(frozenset(range(self.num_levels)), reset=True),
        )

    # -- named directions -------------------------------------------------------------------

    def add_direction(self, direction: Direction, amount: float = 0.0) -> int:
        """Add a named direction (its vectors must fit the levels); returns its index."""
        if tuple(direction.shapes) != self.shapes:
            raise ValueError(
                f"direction {direction.name!r} has levels {_format_shapes(direction.shapes)}; "
                f"the model has {_format_shapes(self.shapes)}"
            )
        amount = _check_amount(amount)
        view = self._view
        self._commit(
            replace(view, directions=(*view.directions, AppliedDirection(direction, amount))),
            StateChange(frozenset(range(self.num_levels)) if amount else frozenset()),
        )
        return len(view.directions)

    def remove_direction(self, index: int) -> None:
        view = self._view
        removed = view.directions[index]
        directions = view.directions[:index] + view.directions[index + 1 :]
        self._commit(
            replace(view, directions=directions),
            StateChange(frozenset(range(self.num_levels)) if removed.amount else frozenset()),
        )

    def set_direction_amount(self, index: int, value: float, merge: bool = True) -> None:
        """Move along named direction ``index``: ``z_l += value * d_l`` on every level."""
        value = _check_amount(value)
        view = self._view
        if value == view.directions[index].amount:
            return
        directions = list(view.directions)
        directions[index] = replace(directions[index], amount=value)
        self._commit(
            replace(view, directions=tuple(directions)),
            StateChange(frozenset(range(self.num_levels))),
            ("direction_amount", index) if merge else None,
        )

    # -- per-level edits ----------------------------------------------------------------

    def set_level_temperature(self, index: int, value: float, merge: bool = True) -> None:
        value = _check_temperature(value)
        if value == self.level(index).temperature:
            return
        self._replace_level(
            index, {"temperature": value}, ("level_temperature", index) if merge else None
        )

    def set_locked(self, index: int, locked: bool) -> None:
        if bool(locked) == self.level(index).locked:
            return
        self._replace_level(index, {"locked": bool(locked)}, None, latent_changed=False)

    def set_offset(self, index: int, value: float, merge: bool = True) -> None:
        """Move level ``index`` along its direction; no other level's latent changes."""
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"offset must be finite, got {value}")
        if value == self.level(index).offset:
            return
        self._replace_level(index, {"offset": value}, ("offset", index) if merge else None)

    def resample_level(self, index: int) -> None:
        """New noise for this level only, whether locked or not."""
        level = self.level(index)
        key = (self.seed, index, next(self._draws), _EPS_STREAM)
        self._replace_level(
            index, {"eps": draw_noise(key, self.n_images, level.shape), "eps_key": key}, None
        )

    def reroll_direction(self, index: int) -> None:
        level = self.level(index)
        key = (self.seed, index, next(self._draws), _DIRECTION_STREAM)
        self._replace_level(
            index,
            {"direction": draw_direction(key, level.shape), "direction_key": key},
            None,
            latent_changed=level.offset != 0,
        )

    # -- history --------------------------------------------------------------------------

    def end_edit(self) -> None:
        """Close a continuous edit: the next change starts a new undo step."""
        self._history.close()

    def undo(self) -> bool:
        return self._go_back_to(self._history.undo(self._view))

    def redo(self) -> bool:
        return self._go_back_to(self._history.redo(self._view))

    def _go_back_to(self, view: ViewState | None) -> bool:
        if view is None:
            return False
        before, self._view = self._view, view
        self.changed.emit(_difference(before, view))
        return True

    # -- saving -----------------------------------------------------------------------------

    def save_npz(self, path: str | os.PathLike) -> Path:
        """Write the whole view to ``.npz`` (atomically); :meth:`load_npz` restores it exactly."""
        return save_view(self._view, path)

    def load_npz(self, path: str | os.PathLike) -> None:
        """Restore a view saved by :meth:`save_npz`; undoable. Raises :class:`StateFileError`."""
        view = load_view(path)
        if view.classes is None and self._view.classes is not None:
            view = replace(view, classes=self._view.classes.cleared())  # an older file
        if view.shapes != self.shapes:
            raise StateFileError(
                f"{path}: this state was saved for a model with latent levels "
                f"{_format_shapes(view.shapes)}; the open model has {_format_shapes(self.shapes)}"
            )
        self.set_view(view)

    # -- internals ----------------------------------------------------------------------------

    def _replace_level(
        self, index: int, changes: dict, merge_key: object, latent_changed: bool = True
    ) -> None:
        levels = list(self._view.levels)
        levels[index] = replace(levels[index], **changes)
        self._commit(
            replace(self._view, levels=tuple(levels)),
            StateChange(frozenset({index}) if latent_changed else frozenset()),
            merge_key,
        )

    def _commit(self, view: ViewState, change: StateChange, merge_key: object = None) -> None:
        continued = self._history.record(self._view, merge_key)
        self._view = view
        self.changed.emit(replace(change, continued=True) if continued else change)


def _difference(before: ViewState, after: ViewState) -> StateChange:
    """Which levels' rendered latents differ between two views (for undo and redo)."""
    if before.n_images != after.n_images or before.shapes != after.shapes:
        return StateChange(frozenset(range(len(after.levels))), reset=True)
    moved = [d.amount for d in before.directions if d.amount] != [
        d.amount for d in after.directions if d.amount
    ] or any(
        x.direction is not y.direction
        for x, y in zip(before.directions, after.directions)
        if x.amount or y.amount
    )
    if before.classes is None:
        moved = moved or (after.classes is not None and after.classes.active)
    else:
        moved = moved or not before.classes.same_effect(after.classes)
    changed = frozenset(
        i
        for i, (a, b) in enumerate(zip(before.levels, after.levels))
        if moved
        or before.temperature != after.temperature
        or a.eps is not b.eps
        or a.temperature != b.temperature
        or a.offset != b.offset
        or (a.offset and a.direction is not b.direction)
    )
    return StateChange(changed)


def _check_amount(value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"a direction amount must be finite, got {value}")
    return value


def _format_shapes(shapes: Sequence[Shape]) -> str:
    return "[" + ", ".join("×".join(map(str, s)) for s in shapes) + "]"


# -- the .npz file ------------------------------------------------------------------------

_NO_KEY = -1


def _key_array(keys: Sequence[SeedKey | None]) -> np.ndarray:
    return np.array([k if k is not None else (_NO_KEY,) * 4 for k in keys], dtype=np.int64)


def _key_from(row: np.ndarray) -> SeedKey | None:
    return None if int(row[0]) == _NO_KEY else tuple(int(v) for v in row)


def save_view(view: ViewState, path: str | os.PathLike) -> Path:
    """Write ``view`` as ``.npz``: plain arrays only, so loading needs no pickle."""
    arrays: dict[str, np.ndarray] = {
        "format": np.array(STATE_FORMAT),
        "version": np.array(STATE_VERSION),
        "shapes": np.array(view.shapes, dtype=np.int64).reshape(-1, 3),
        "n_images": np.array(view.n_images),
        "seed": np.array(view.seed),
        "temperature": np.array(view.temperature, dtype=np.float64),
        "level_temperature": np.array([lv.temperature for lv in view.levels], dtype=np.float64),
        "level_locked": np.array([lv.locked for lv in view.levels], dtype=bool),
        "level_offset": np.array([lv.offset for lv in view.levels], dtype=np.float64),
        "eps_key": _key_array([lv.eps_key for lv in view.levels]),
        "direction_key": _key_array([lv.direction_key for lv in view.levels]),
    }
    for i, level in enumerate(view.levels):
        arrays[f"eps_{i}"] = level.eps
        arrays[f"direction_{i}"] = level.direction
    # Named directions: optional keys, so files without them (older ones) still load.
    arrays["named_names"] = np.array([d.direction.name for d in view.directions], dtype=str)
    arrays["named_amounts"] = np.array([d.amount for d in view.directions], dtype=np.float64)
    for k, applied in enumerate(view.directions):
        for i, v in enumerate(applied.direction.vectors):
            arrays[f"named_{k}_{i}"] = v
    # Class sliders: optional too; the means travel with them, so the file restores the
    # same latents whatever model statistics are open when it is loaded.
    if view.classes is not None:
        arrays["class_names"] = np.array(view.classes.names, dtype=str)
        arrays["class_amounts"] = np.array(view.classes.amounts, dtype=np.float64)
        arrays["class_mask"] = np.array(view.classes.mask)
        for i, m in enumerate(view.classes.means):
            arrays[f"class_means_{i}"] = m
    return write_npz(path, arrays)


def load_view(path: str | os.PathLike) -> ViewState:
    """Read a file written by :func:`save_view`; every field is checked."""
    arrays = read_npz(path, STATE_FORMAT, STATE_VERSION, StateFileError, "latent state")
    try:
        shapes = [tuple(int(v) for v in row) for row in arrays["shapes"]]
        n, seed = int(arrays["n_images"]), int(arrays["seed"])
        eps_keys, dir_keys = arrays["eps_key"], arrays["direction_key"]
        levels = []
        for i, shape in enumerate(shapes):
            eps = np.array(arrays[f"eps_{i}"], dtype=np.float32)
            direction = np.array(arrays[f"direction_{i}"], dtype=np.float32)
            if eps.shape != (n, *shape) or direction.shape != shape:
                raise StateFileError(f"{path}: level {i} arrays do not match shape {shape}")
            if not (np.isfinite(eps).all() and np.isfinite(direction).all()):
                raise StateFileError(f"{path}: level {i} contains NaN or infinite values")
            eps.setflags(write=False)
            direction.setflags(write=False)
            levels.append(
                LevelState(
                    shape=shape,  # type: ignore[arg-type]
                    eps=eps,
                    direction=direction,
                    temperature=_check_temperature(arrays["level_temperature"][i]),
                    locked=bool(arrays["level_locked"][i]),
                    offset=float(arrays["level_offset"][i]),
                    eps_key=_key_from(eps_keys[i]),
                    direction_key=_key_from(dir_keys[i]),
                )
            )
        directions = []
        names = arrays.get("named_names", np.array([], dtype=str))
        amounts = arrays.get("named_amounts", np.array([], dtype=np.float64))
        for k, (name, amount) in enumerate(zip(names, amounts)):
            vectors = []
            for i, shape in enumerate(shapes):
                v = np.asarray(arrays[f"named_{k}_{i}"], dtype=np.float32)
                if v.shape != shape or not np.isfinite(v).all():
                    raise StateFileError(f"{path}: named direction {k} is damaged")
                vectors.append(v)
            directions.append(
                AppliedDirection(Direction(str(name), tuple(vectors)), _check_amount(amount))
            )
        classes = None
        if "class_names" in arrays:
            names = tuple(str(v) for v in arrays["class_names"])
            means = []
            for i, shape in enumerate(shapes):
                m = np.asarray(arrays[f"class_means_{i}"], dtype=np.float32)
                if m.shape != (len(names), *shape) or not np.isfinite(m).all():
                    raise StateFileError(f"{path}: class means of level {i} are damaged")
                means.append(m)
            classes = ClassMove(
                names,
                tuple(means),
                tuple(_check_amount(a) for a in arrays["class_amounts"]),
                str(arrays["class_mask"]),
            )
        view = ViewState(
            tuple(levels),
            n,
            seed,
            _check_temperature(arrays["temperature"]),
            tuple(directions),
            classes,
        )
    except StateFileError:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise StateFileError(f"{path}: damaged latent state file ({exc})") from None
    if not levels or not 1 <= n <= MAX_IMAGES:
        raise StateFileError(f"{path}: damaged latent state file (levels or image count)")
    return view

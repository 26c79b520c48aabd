"""ExplorerState without Qt or torch: exact, reversible edits, undo, and the .npz file."""

from __future__ import annotations

import math

import numpy as np
import pytest

from explorer.state import ExplorerState, StateChange, StateFileError, draw_noise

SHAPES = ((2, 4, 4), (4, 2, 2), (4, 2, 2))


@pytest.fixture
def state() -> ExplorerState:
    return ExplorerState(SHAPES, n_images=4, seed=3)


def snapshot(state: ExplorerState) -> list[np.ndarray]:
    return [z.copy() for z in state.latents()]


def test_latent_is_noise_times_temperature_plus_offset(state):
    state.set_temperature(0.5)
    state.set_level_temperature(1, 0.8)
    state.set_offset(1, 0.25)
    level = state.level(1)
    assert np.linalg.norm(level.direction) == pytest.approx(1.0, rel=1e-6)
    expected = level.eps * np.float32(0.5 * 0.8) + np.float32(0.25 * math.sqrt(16)) * (
        level.direction
    )
    np.testing.assert_array_equal(state.latent(1), expected)
    assert state.latent(1).dtype == np.float32
    assert state.latent(1).shape == (4, 4, 2, 2)


def test_moving_one_level_leaves_the_others_bit_identical(state):
    before = snapshot(state)
    changes: list[StateChange] = []
    state.changed.connect(changes.append)
    state.set_offset(0, 0.4)
    after = state.latents()
    assert not np.array_equal(after[0], before[0])
    for level in (1, 2):
        assert after[level].tobytes() == before[level].tobytes()
    assert changes == [StateChange(frozenset({0}))]


def test_edits_are_exactly_reversible(state):
    before = snapshot(state)
    state.set_temperature(1.3)
    state.set_level_temperature(2, 0.1)
    state.set_offset(2, -0.7)
    state.set_offset(2, 0.0)
    state.set_level_temperature(2, 1.0)
    state.set_temperature(1.0)
    for a, b in zip(before, state.latents()):
        assert a.tobytes() == b.tobytes()


def test_resample_level_changes_only_that_level(state):
    before = snapshot(state)
    state.resample_level(1)
    after = state.latents()
    assert not np.array_equal(after[1], before[1])
    assert after[0].tobytes() == before[0].tobytes()
    assert after[2].tobytes() == before[2].tobytes()


def test_resample_keeps_locked_levels(state):
    before = snapshot(state)
    state.set_locked(2, True)
    state.resample()
    after = state.latents()
    assert state.seed == 4
    assert after[2].tobytes() == before[2].tobytes()
    assert not np.array_equal(after[0], before[0])
    assert not np.array_equal(after[1], before[1])


def test_a_seed_reproduces_the_samples(state):
    first = snapshot(state)
    state.resample()
    state.resample()
    state.set_seed(3)
    for a, b in zip(first, state.latents()):
        assert a.tobytes() == b.tobytes()


def test_growing_the_grid_keeps_the_images_shown(state):
    before = snapshot(state)
    state.set_n_images(9)
    assert all(z.shape[0] == 9 for z in state.latents())
    for a, b in zip(before, state.latents()):
        assert a.tobytes() == b[:4].tobytes()
    state.set_n_images(4)
    for a, b in zip(before, state.latents()):
        assert a.tobytes() == b.tobytes()


def test_noise_prefix_property_holds_for_numpy():
    key = (1, 2, 3, 0)
    np.testing.assert_array_equal(draw_noise(key, 3, (2, 2, 2)), draw_noise(key, 7, (2, 2, 2))[:3])


def test_undo_redo_and_drag_merging(state):
    original = snapshot(state)
    for value in (0.1, 0.2, 0.3):  # one drag
        state.set_offset(0, value)
    state.end_edit()
    dragged = snapshot(state)
    state.resample_level(1)
    assert state.can_undo and not state.can_redo

    assert state.undo()
    for a, b in zip(dragged, state.latents()):
        assert a.tobytes() == b.tobytes()
    assert state.undo()  # the whole drag is one step
    for a, b in zip(original, state.latents()):
        assert a.tobytes() == b.tobytes()
    assert not state.undo()

    assert state.redo()
    assert state.level(0).offset == pytest.approx(0.3)
    state.set_temperature(0.5)  # a new edit clears the redo stack
    assert not state.can_redo


def test_npz_round_trip_is_exact(state, tmp_path):
    state.set_temperature(0.7)
    state.set_level_temperature(1, 1.2)
    state.set_offset(2, -0.33)
    state.set_locked(0, True)
    state.reroll_direction(2)
    state.resample_level(1)
    expected = snapshot(state)
    path = state.save_npz(tmp_path / "view.npz")

    other = ExplorerState(SHAPES, n_images=1, seed=99)
    other.load_npz(path)
    assert (other.n_images, other.seed, other.temperature) == (4, 3, 0.7)
    assert [lv.locked for lv in other.view.levels] == [True, False, False]
    assert other.level(1).eps_key == state.level(1).eps_key
    for a, b in zip(expected, other.latents()):
        assert a.tobytes() == b.tobytes()
    assert other.undo()  # loading is an undoable edit
    assert other.n_images == 1


def test_npz_for_another_model_is_refused(state, tmp_path):
    path = state.save_npz(tmp_path / "view.npz")
    other = ExplorerState(((2, 4, 4), (2, 4, 4)), n_images=4)
    before = snapshot(other)
    with pytest.raises(StateFileError, match="saved for a model with latent levels"):
        other.load_npz(path)
    for a, b in zip(before, other.latents()):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize(
    "content",
    [b"", b"not a zip file at all", b"PK\x03\x04 truncated"],
    ids=["empty", "junk", "truncated-zip"],
)
def test_bad_npz_gives_a_clear_error(state, tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(StateFileError, match=r"bad\.npz"):
        state.load_npz(path)


def test_npz_with_pickled_objects_is_refused(state, tmp_path):
    path = tmp_path / "hostile.npz"
    np.savez(path, format=np.array([object()], dtype=object))
    with pytest.raises(StateFileError):
        state.load_npz(path)


def test_invalid_values_are_rejected(state):
    with pytest.raises(ValueError):
        state.set_temperature(-1.0)
    with pytest.raises(ValueError):
        state.set_n_images(65)
    with pytest.raises(ValueError):
        state.set_offset(0, float("nan"))

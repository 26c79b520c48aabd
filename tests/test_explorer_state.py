"""ExplorerState without Qt or torch: exact, reversible edits, undo, and the .npz file."""

from __future__ import annotations

import math

import numpy as np
import pytest

from explorer.state.history import EditHistory
from explorer.state.state import (
    IMAGE_SHOWN,
    ExplorerState,
    StateChange,
    StateFileError,
    draw_noise,
)

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


def test_undo_goes_back_200_edits_and_no_further():
    state = ExplorerState(n_images=1)
    for seed in range(1, 202):  # 201 edits, one undo step each
        state.set_seed(seed)
    undone = 0
    while state.undo():
        undone += 1
    assert undone == 200 and state.seed == 1  # the oldest step (seed 0) was let go


def test_edit_history_merges_one_drag_and_a_new_edit_clears_redo():
    history = EditHistory(limit=3)
    for view in "abcde":
        history.record(view)
    assert history.undo_views == ["c", "d", "e"]
    assert not history.record("f", merge_key="drag")  # the drag's first move: a new step
    assert history.record("g", merge_key="drag")  # its second: merged
    assert history.undo_views == ["d", "e", "f"]
    assert history.undo("h") == "f" and history.redo("f") == "h"
    history.close()
    assert not history.record("h", merge_key="drag")  # a drag after close: a new step
    assert history.undo("i") == "h" and history.can_redo
    history.record("j")
    assert not history.can_redo  # a new edit drops what undo had left


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


# -- images, variations and named directions ---------------------------------------------------


def image_latents(seed: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) * 2 for shape in SHAPES]


def test_an_image_becomes_the_view_exactly_and_undo_restores(state):
    before = snapshot(state)
    state.set_temperature(0.6)
    state.set_offset(1, 0.3)
    state.set_locked(2, True)
    z = image_latents()
    state.set_image(z)
    assert state.n_images == 1 and state.temperature == 1.0
    assert all(
        lv.temperature == 1.0 and lv.offset == 0.0 and not lv.locked for lv in state.view.levels
    )
    for rendered, level in zip(state.latents(), z):
        assert rendered[0].tobytes() == level.tobytes()  # eps * 1.0 is z, bit for bit
    state.set_temperature(0.5)
    np.testing.assert_array_equal(state.latent(0)[0], z[0] * np.float32(0.5))
    state.undo()
    state.undo()
    state.undo()
    state.undo()
    state.undo()
    for a, b in zip(before, state.latents()):
        assert a.tobytes() == b.tobytes()


def test_set_noise_keeps_the_edits(state):
    state.set_image(image_latents(1))
    state.set_level_temperature(0, 0.5)
    z = image_latents(2)
    state.set_noise(z, merge_key=("blend",))
    state.set_noise(image_latents(3), merge_key=("blend",))
    state.set_noise(z, merge_key=("blend",))
    np.testing.assert_array_equal(state.latent(0)[0], z[0] * np.float32(0.5))
    np.testing.assert_array_equal(state.latent(2)[0], z[2])
    state.undo()  # the whole slider drag is one step
    assert state.level(0).temperature == 0.5 and not np.array_equal(state.latent(2)[0], z[2])


def test_vary_fine_keeps_the_coarse_levels_of_the_chosen_image(state):
    chosen = [z[2].copy() for z in state.latents()]  # image 2 of the grid of 4
    state.vary_fine(keep_levels=2, n_images=6, image_index=2)
    z = state.latents()
    assert state.n_images == 6
    for level in (1, 2):
        assert all(np.array_equal(row, chosen[level]) for row in z[level])
        assert state.level(level).locked
    np.testing.assert_array_equal(z[0][0], chosen[0])
    assert len({row.tobytes() for row in z[0]}) == 6
    with pytest.raises(ValueError):
        state.vary_fine(keep_levels=4, n_images=6)


def make_direction(name: str = "d", scale: float = 1.0):
    from explorer.state.directions import Direction

    rng = np.random.default_rng(11)
    return Direction(name, tuple(rng.standard_normal(s).astype(np.float32) * scale for s in SHAPES))


def test_named_direction_moves_every_level_by_amount_times_vector(state):
    direction = make_direction()
    state.set_temperature(0.8)
    before = snapshot(state)
    assert state.add_direction(direction) == 0
    for a, b in zip(before, state.latents()):  # added at 0: nothing moves
        assert a.tobytes() == b.tobytes()
    state.set_direction_amount(0, 0.75)
    for z0, z1, v in zip(before, state.latents(), direction.vectors):
        np.testing.assert_array_equal(z1, z0 + np.float32(0.75) * v)
    state.set_direction_amount(0, 0.0)
    for a, b in zip(before, state.latents()):
        assert a.tobytes() == b.tobytes()
    with pytest.raises(ValueError, match="levels"):
        from explorer.state.directions import Direction

        state.add_direction(Direction("wrong", (np.zeros((1, 2, 2)),) * 3))


def test_npz_round_trip_keeps_named_directions(state, tmp_path):
    state.add_direction(make_direction("thick"), amount=0.4)
    expected = snapshot(state)
    other = ExplorerState(SHAPES, n_images=1)
    other.load_npz(state.save_npz(tmp_path / "view.npz"))
    assert [d.direction.name for d in other.directions] == ["thick"]
    assert other.directions[0].amount == 0.4
    for a, b in zip(expected, other.latents()):
        assert a.tobytes() == b.tobytes()


def test_npz_without_named_directions_still_loads(state, tmp_path):
    path = state.save_npz(tmp_path / "view.npz")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if not k.startswith("named_")}
    older = tmp_path / "older.npz"
    np.savez(older, **arrays)
    other = ExplorerState(SHAPES, n_images=1)
    other.load_npz(older)
    assert other.directions == ()
    for a, b in zip(state.latents(), other.latents()):
        assert a.tobytes() == b.tobytes()


def test_the_state_says_in_words_what_the_latents_at_one_are(state):
    state.set_temperature(0.7)
    state.set_latents([z[None].repeat(2, 0) for z in image_latents()], "samples of class 3")
    assert state.shown == "samples of class 3" and state.sampling_temperature == 0.7
    state.vary_fine(1, 4)
    assert "variations of one image" in state.shown
    state.set_image(image_latents())
    assert state.shown == IMAGE_SHOWN
    state.set_level_latent(0, image_latents(6)[0], shown="latents moved on the latent map")
    assert state.shown == "latents moved on the latent map"
    state.undo()
    assert state.shown == IMAGE_SHOWN  # the words travel with the view

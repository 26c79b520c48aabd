"""Class mixtures: the EM fit of a few diagonal Gaussians to one class's latents, their place
in the class statistics (checkpoint meta and .npz, version 2 beside version 1), and class
samples drawn from them through the core, the command line and the explorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.cli import main as cli_main
from core.files.checkpoint import read_checkpoint, save_checkpoint
from core.stats.class_stats import META_KEY, ClassStats, stats_from_meta
from core.stats.measure import class_samples, compute_class_stats
from core.stats.mixture import (
    MIN_IMAGES_IN_COMPONENT,
    MIN_IMAGES_PER_COMPONENT,
    VARIANCE_FLOOR,
    fit_diagonal_mixture,
    pick_components,
)
from core.training.data import ImageDataset
from explorer.state.classes import class_sample
from tests.conftest import perturbed_model
from tests.test_class_stats import make_labelled, write_folder


def two_blobs(n=600, share=0.7, seed=0):
    """``(n, 6)`` points: ``share`` of them around +3, the rest around -3 with a std of 0.5
    in the first two elements (1.0 elsewhere)."""
    rng = np.random.default_rng(seed)
    first = int(n * share)
    scale = np.array([0.5, 0.5, 1, 1, 1, 1])
    a = 3.0 + rng.standard_normal((first, 6)) * scale
    b = -3.0 + rng.standard_normal((n - first, 6)) * scale
    return np.concatenate([a, b])[rng.permutation(n)]


def test_the_fit_finds_two_separate_groups_with_their_weights_means_and_spreads():
    fit = fit_diagonal_mixture(two_blobs(), components=2, seed=1)
    assert fit.num_components == 2
    np.testing.assert_allclose(fit.weights, [0.7, 0.3], atol=1e-6)  # largest first
    np.testing.assert_allclose(fit.means[0], 3.0, atol=0.2)
    np.testing.assert_allclose(fit.means[1], -3.0, atol=0.25)
    np.testing.assert_allclose(fit.stds[:, :2], 0.5, atol=0.08)
    np.testing.assert_allclose(fit.stds[:, 2:], 1.0, atol=0.15)
    assert fit.weights.dtype == np.float32 and not fit.means.flags.writeable


def test_the_fit_is_a_function_of_its_seed():
    x = two_blobs(seed=3)
    a = fit_diagonal_mixture(x, components=4, seed=5)
    b = fit_diagonal_mixture(x, components=4, seed=5)
    for u, v in ((a.weights, b.weights), (a.means, b.means), (a.stds, b.stds)):
        assert np.array_equal(u, v)


def test_few_images_give_fewer_components_and_one_is_the_class_gaussian():
    x = two_blobs(n=3 * MIN_IMAGES_PER_COMPONENT)
    assert fit_diagonal_mixture(x, components=10).num_components == 3
    small = two_blobs(n=MIN_IMAGES_PER_COMPONENT - 1)
    one = fit_diagonal_mixture(small, components=10)
    assert one.num_components == 1 and one.weights[0] == 1.0
    np.testing.assert_allclose(one.means[0], small.mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(one.stds[0], small.std(axis=0), rtol=1e-6)


def test_no_component_shrinks_onto_a_few_points():
    # 60 copies of one point and a wide cloud: the copies' component keeps a floor under
    # its variance, a share of the whole class's
    rng = np.random.default_rng(0)
    x = np.concatenate([np.zeros((60, 4)), rng.standard_normal((240, 4)) * 2.0])
    fit = fit_diagonal_mixture(x, components=3, seed=0)
    floor = np.sqrt(VARIANCE_FLOOR * x.var(axis=0))
    assert (fit.stds >= floor * (1 - 1e-5)).all()
    assert np.isfinite(fit.means).all() and abs(float(fit.weights.sum()) - 1.0) < 1e-6


def test_a_component_left_with_a_few_outliers_is_dropped():
    # 400 points in one cloud and 6 far outliers: k-means++ seeds a component on the
    # outliers, and EM leaves it 6 points' worth: too few, so it goes
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal((400, 5)), 40.0 + rng.standard_normal((6, 5))])
    fit = fit_diagonal_mixture(x, components=4, seed=0)
    assert 1 <= fit.num_components < 4
    assert (fit.weights * len(x) >= MIN_IMAGES_IN_COMPONENT).all()
    assert abs(float(fit.weights.sum()) - 1.0) < 1e-6


def test_picking_components_follows_the_weights_and_skips_empty_ones():
    w = np.array([0.5, 0.0, 0.25, 0.25], dtype=np.float32)
    u = np.array([0.0, 0.49, 0.5, 0.74, 0.75, 0.999999, 1.0])
    assert pick_components(w, u).tolist() == [0, 0, 2, 2, 3, 3, 3]
    draws = pick_components(w, np.random.default_rng(0).random(20000))
    shares = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(shares, w, atol=0.015)


# -- in the class statistics -----------------------------------------------------------------


def blob_dataset(per_class=(150, 70), seed=0) -> ImageDataset:
    """8x8 images of two classes; each class is three kinds of image (its left, right or
    top half lit), so its latents fall in three groups."""
    rng = np.random.default_rng(seed)
    halves = ((slice(None), slice(0, 4)), (slice(None), slice(4, 8)), (slice(0, 4), slice(None)))

    def make(k: int, i: int) -> np.ndarray:
        img = rng.integers(0, 40, (1, 8, 8))
        rows, cols = halves[i % 3]
        img[0, rows, cols] += 150 + 30 * k
        return img

    return make_labelled(per_class, make, rng, "blobs")


@pytest.fixture(scope="module")
def mixed_stats() -> ClassStats:
    return compute_class_stats(perturbed_model(), blob_dataset(), per_class=None, components=3)


def test_statistics_carry_a_mixture_per_class_padded_to_the_largest(mixed_stats):
    stats = mixed_stats
    # class c0: 150 images, 3 components; class c1: 70 images, room for one only
    assert stats.num_components == 3
    assert stats.components_used(0) == 3 and stats.components_used(1) == 1
    assert stats.mixture_weights[1].tolist() == [1.0, 0.0, 0.0]
    for level, shape in enumerate(stats.shapes):
        assert stats.mixture_means[level].shape == (2, 3, *shape)
    # a class's single component is its own mean and std (up to float32 sums)
    np.testing.assert_allclose(stats.mixture_means[0][1, 0], stats.means[0][1], atol=1e-5)
    np.testing.assert_allclose(stats.mixture_stds[0][1, 0], stats.stds[0][1], rtol=1e-4)
    # the mixture's average is the class's mean
    w = stats.mixture_weights[0].astype(np.float64)
    mixed = np.tensordot(w, stats.mixture_means[1][0].astype(np.float64), axes=1)
    np.testing.assert_allclose(mixed, stats.means[1][0], atol=1e-4)


def test_tiny_classes_keep_version_one_statistics():
    stats = compute_class_stats(perturbed_model(), blob_dataset((20, 30)), components=10)
    assert stats.mixture_weights is None and stats.to_meta()["version"] == 1


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_mixture_survives_meta_and_npz(mixed_stats, tmp_path, dtype):
    meta = mixed_stats.to_meta(dtype)
    assert meta["version"] == 2 and meta["components"] == 3
    back = ClassStats.from_meta(meta)
    assert np.array_equal(back.mixture_weights, mixed_stats.mixture_weights)
    tol = 0 if dtype == "float32" else 2e-3
    for a, b in zip(back.mixture_means, mixed_stats.mixture_means):
        np.testing.assert_allclose(a, b, atol=tol * max(1.0, float(np.abs(b).max())))
    npz = ClassStats.load_npz(mixed_stats.save_npz(tmp_path / "m.npz"))
    assert npz.num_components == 3
    assert np.array_equal(npz.mixture_stds[1], mixed_stats.mixture_stds[1])


def test_a_damaged_mixture_makes_the_statistics_absent(mixed_stats):
    meta = mixed_stats.to_meta()
    assert stats_from_meta({META_KEY: {**meta, "mixture_weights": b"\0" * 8}}) is None
    assert stats_from_meta({META_KEY: {**meta, "mixture_means": [b"xx"] * 2}}) is None
    assert stats_from_meta({META_KEY: {**meta, "components": 0}}) is None
    lopsided = np.array(mixed_stats.mixture_weights)
    lopsided[0, 0] += 0.5
    data = {**meta, "mixture_weights": lopsided.tobytes()}
    assert stats_from_meta({META_KEY: data}) is None


def test_samples_come_from_the_picked_component(mixed_stats):
    stats = mixed_stats
    noise = [
        np.random.default_rng(i).standard_normal((5, *s)).astype(np.float32)
        for i, s in enumerate(stats.shapes)
    ]
    pick = np.array([0.0, 0.3, 0.6, 0.9, 0.99])
    comps = pick_components(stats.mixture_weights[0], pick)
    zs = stats.sample_latents(0, noise, 0.0, levels=(1,), pick=pick)
    assert np.array_equal(zs[0], np.zeros_like(noise[0]))  # the prior, at temperature 0
    for i, c in enumerate(comps):
        assert np.array_equal(zs[1][i], stats.mixture_means[1][0, c])
    hot = stats.sample_latents(0, noise, 0.5, pick=pick)
    c = comps[2]
    expected = (
        stats.mixture_means[0][0, c] + np.float32(0.5) * stats.mixture_stds[0][0, c] * noise[0][2]
    )
    np.testing.assert_array_equal(hot[0][2], expected)
    with pytest.raises(ValueError, match="needs pick"):
        stats.sample_latents(0, noise, 0.5)


def test_the_explorer_and_the_core_draw_class_samples_from_the_mixture(mixed_stats):
    stats = mixed_stats
    a = class_sample(stats, 0, 64, 0.0, seed=4)
    b = class_sample(stats, 0, 64, 0.0, seed=4)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    # at temperature 0 every latent is one component's mean, and several are used
    flat = np.concatenate([z.reshape(64, -1) for z in a], axis=1)
    means = np.concatenate([m[0].reshape(3, -1) for m in stats.mixture_means], axis=1)
    which = [int(np.flatnonzero((means == row).all(axis=1))[0]) for row in flat]
    assert len(set(which)) == 3
    model = perturbed_model()
    g = torch.Generator().manual_seed(0)
    x = class_samples(model, stats, 0, 6, 0.7, (0, 1), g)
    again = class_samples(model, stats, 0, 6, 0.7, (0, 1), torch.Generator().manual_seed(0))
    assert x.shape == (6, 1, 8, 8) and torch.equal(x, again)


def test_export_and_directions_choose_the_number_of_components(tmp_path, capsys):
    folder = write_folder(tmp_path / "folder", {"a": 130, "b": 130})
    ckpt = save_checkpoint(tmp_path / "m.pt", perturbed_model(), {"dataset": "folder"})
    args = ["--data-dir", str(folder)]
    assert (
        cli_main(["export", str(ckpt), str(tmp_path / "e2.pt"), *args, "--class-components", "2"])
        == 0
    )
    assert "up to 2 Gaussians a class" in capsys.readouterr().out
    stats = stats_from_meta(read_checkpoint(tmp_path / "e2.pt")["meta"])
    assert stats.num_components == 2
    assert cli_main(["info", str(tmp_path / "e2.pt")]) == 0
    assert "a mixture of up to 2 Gaussians each" in capsys.readouterr().out
    assert (
        cli_main(["export", str(ckpt), str(tmp_path / "e1.pt"), *args, "--class-components", "1"])
        == 0
    )
    assert stats_from_meta(read_checkpoint(tmp_path / "e1.pt")["meta"]).mixture_weights is None
    out = tmp_path / "d.npz"
    assert (
        cli_main(
            [
                "directions",
                str(ckpt),
                "--dataset",
                "folder",
                *args,
                "--device",
                "cpu",
                "--components",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert ClassStats.load_npz(out).num_components == 2
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli_main(["directions", str(ckpt), *args, "--components", "0", "--out", str(out)])
    assert "from 1 to 256" in capsys.readouterr().err
    sample = tmp_path / "s.png"
    assert (
        cli_main(
            ["sample", str(tmp_path / "e2.pt"), "--class", "a", "--n", "4", "--out", str(sample)]
        )
        == 0
    )
    assert sample.is_file()


def test_a_class_mixture_is_fitted_to_a_bounded_number_of_images(monkeypatch):
    import core.stats.measure as measure

    monkeypatch.setattr(measure, "MAX_MIXTURE_IMAGES", 100)
    stats = compute_class_stats(perturbed_model(), blob_dataset(), per_class=None, components=3)
    # class c0's 150 images: its first 100 in the mixture, room for two components; the
    # means and standard deviations still cover all 150
    assert stats.counts == (150, 70) and stats.components_used(0) == 2

"""Class statistics: labels from every data set, the per-class means and standard deviations,
their storage in checkpoints and files, and the command line (directions, sample --class,
export --data-dir) and the trainer that make and use them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.cli import main as cli_main
from core.files.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from core.flow.model import pixel_centres
from core.stats.class_stats import (
    META_KEY,
    ClassStats,
    ClassStatsError,
    level_mask,
    sample_indices,
    stats_from_meta,
)
from core.stats.measure import compute_class_stats
from core.training.data import ImageDataset, load_folder, load_mnist
from tests.conftest import perturbed_model
from tests.test_data import MNIST_DIR, needs_mnist


def labelled_dataset(n_per_class=(5, 3, 0), seed=0) -> ImageDataset:
    """8x8 grey images; class k is brighter the larger k; the last class has no images."""
    rng = np.random.default_rng(seed)
    make = lambda k, i: rng.integers(0, 80, (1, 8, 8)) + 60 * k  # noqa: E731
    return make_labelled(n_per_class, make, rng, "tiny")


def make_labelled(n_per_class, make, rng, name: str) -> ImageDataset:
    """A data set of ``n_per_class[k]`` images ``make(k, i)`` of class ``c<k>``, clipped to
    uint8 and interleaved, as a real data set would be."""
    images, labels = [], []
    for k, n in enumerate(n_per_class):
        for i in range(n):
            images.append(make(k, i))
            labels.append(k)
    images = np.clip(np.array(images), 0, 255).astype(np.uint8).reshape(len(labels), 1, 8, 8)
    order = rng.permutation(len(labels))
    return ImageDataset(
        torch.from_numpy(images[order]),
        name,
        labels=np.array(labels, dtype=np.int64)[order],
        class_names=tuple(f"c{k}" for k in range(len(n_per_class))),
    )


def write_folder(root: Path, classes: dict[str, int], size: int = 8) -> Path:
    rng = np.random.default_rng(1)
    for name, n in classes.items():
        folder = root / name if name else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 255, (size, size), dtype=np.uint8)
            Image.fromarray(pixels, "L").save(folder / f"{name or 'root'}_{i}.png")
    return root


# -- labels ---------------------------------------------------------------------------------


def test_folder_labels_come_from_the_first_subfolder_level(tmp_path):
    root = write_folder(tmp_path / "d", {"cats": 3, "dogs": 2, "": 1})
    (root / "dogs" / "deeper").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(root / "dogs" / "deeper" / "x.png")
    ds = load_folder(root, train=True, channels=1, image_size=8, test_fraction=0.0)
    assert ds.class_names == ("cats", "dogs")
    assert sorted(ds.labels.tolist()) == [-1, 0, 0, 0, 1, 1, 1]  # the root image has none


@pytest.mark.parametrize("layout", [{"only": 4}, {"": 4}])
def test_a_folder_with_one_subfolder_or_none_has_no_labels(tmp_path, layout):
    root = write_folder(tmp_path / "d", layout)
    ds = load_folder(root, train=True, channels=1, image_size=8, test_fraction=0.0)
    assert ds.labels is None and ds.class_names == ()
    with pytest.raises(ClassStatsError, match="no labels"):
        compute_class_stats(perturbed_model(), ds)


@needs_mnist
def test_mnist_labels_are_read_with_the_images():
    ds = load_mnist(MNIST_DIR, train=False)
    assert ds.labels.shape == (10000,) and ds.class_names[7] == "7"
    assert ds.labels[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first test digits


# -- the statistics ------------------------------------------------------------------------


def test_means_and_stds_are_those_of_each_class_latents():
    model = perturbed_model()
    ds = labelled_dataset()
    stats = compute_class_stats(model, ds, per_class=None, batch_size=3)
    assert stats.names == ("c0", "c1") and stats.counts == (5, 3)
    assert stats.skipped == ("c2",)  # no images: left out, and named
    with torch.inference_mode():
        zs = model.encode(pixel_centres(ds.images))
    for level, z in enumerate(zs):
        z = z.double().numpy()
        for k in range(2):
            mine = z[ds.labels == k]
            np.testing.assert_allclose(stats.means[level][k], mine.mean(0), atol=1e-5)
            np.testing.assert_allclose(stats.stds[level][k], mine.std(0), atol=1e-4)
    assert model.training is False


class _Calls(list):
    def __call__(self, done: int, total: int) -> None:
        self.append((done, total))


def test_progress_and_the_per_class_sample():
    ds = labelled_dataset((5, 3))
    calls = _Calls()
    stats = compute_class_stats(perturbed_model(), ds, per_class=2, batch_size=3, progress=calls)
    assert stats.counts == (2, 2)
    assert calls[-1] == (4, 4) and len(calls) == 2
    assert "first 2 per class" in stats.source
    chosen = sample_indices(ds.labels, 2, 2)
    # the first two of each class in data set order
    for k in range(2):
        assert (
            chosen[ds.labels[chosen] == k].tolist() == np.flatnonzero(ds.labels == k)[:2].tolist()
        )


def test_meta_round_trip_through_a_weights_only_checkpoint(tmp_path):
    model = perturbed_model()
    stats = compute_class_stats(model, labelled_dataset(), per_class=None)
    path = save_checkpoint(tmp_path / "m.pt", model, {"dataset": "tiny", META_KEY: stats.to_meta()})
    _, meta = load_checkpoint(path)  # weights_only=True inside
    back = stats_from_meta(meta)
    assert back.names == stats.names and back.counts == stats.counts
    for a, b in zip(stats.means + stats.stds, back.means + back.stds):
        assert np.array_equal(a, b)
    half = ClassStats.from_meta(stats.to_meta("float16"))
    np.testing.assert_allclose(half.means[0], stats.means[0], atol=2e-3)
    npz = ClassStats.load_npz(stats.save_npz(tmp_path / "s.npz"))
    assert np.array_equal(npz.stds[1], stats.stds[1]) and npz.skipped == ("c2",)


def test_damaged_or_missing_statistics_are_absent_not_fatal(tmp_path):
    stats = compute_class_stats(perturbed_model(), labelled_dataset(), per_class=None)
    meta = stats.to_meta()
    assert stats_from_meta({}) is None
    assert stats_from_meta({META_KEY: {**meta, "means": [b"xx"] * 2}}) is None
    assert stats_from_meta({META_KEY: {**meta, "version": 99}}) is None
    with pytest.raises(ClassStatsError, match="damaged"):
        ClassStats.from_meta({**meta, "means": [b"xx"] * 2})
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ClassStatsError, match="damaged"):
        ClassStats.load_npz(bad)


def test_level_masks_and_class_samples():
    assert level_mask("coarse", 3) == (1, 2) and level_mask("fine", 3) == (0,)
    assert level_mask("all", 3) == (0, 1, 2) and level_mask("0,2", 3) == (0, 2)
    with pytest.raises(ClassStatsError, match="coarse, fine, all"):
        level_mask("5", 3)
    stats = compute_class_stats(perturbed_model(), labelled_dataset(), per_class=None)
    noise = [np.ones((2, *s), np.float32) for s in stats.shapes]
    zs = stats.sample_latents(1, noise, 0.5, levels=(1,))
    assert np.array_equal(zs[0], 0.5 * noise[0])  # from the prior
    np.testing.assert_allclose(zs[1][0], stats.means[1][1] + 0.5 * stats.stds[1][1] * noise[1][0])
    assert stats.index("c1") == 1 and stats.index(0) == 0
    with pytest.raises(ClassStatsError, match="no class 'c9'"):
        stats.index("c9")


# -- the command line and the trainer --------------------------------------------------------


@pytest.fixture
def labelled_folder(tmp_path) -> Path:
    # 8x8 images, enough that the held-out tenth has the 20 test images export's
    # typicality reference needs
    return write_folder(tmp_path / "folder", {"a": 120, "b": 120, "empty": 0})


def test_cli_directions_sample_and_export(tmp_path, tiny_checkpoint, labelled_folder, capsys):
    out = tmp_path / "stats.npz"
    args = ["--dataset", "folder", "--data-dir", str(labelled_folder), "--device", "cpu"]
    assert cli_main(["directions", str(tiny_checkpoint), *args, "--out", str(out)]) == 0
    stats = ClassStats.load_npz(out)
    assert stats.names == ("a", "b") and sum(stats.counts) > 0
    assert "class statistics" in capsys.readouterr().err  # the progress bar
    # sampling a class needs statistics in the checkpoint
    code = cli_main(
        ["sample", str(tiny_checkpoint), "--class", "a", "--out", str(tmp_path / "x.png")]
    )
    assert code == 2 and "no class statistics" in capsys.readouterr().err
    data = read_checkpoint(tiny_checkpoint)
    model = perturbed_model()
    meta = {**data["meta"], "dataset": "folder", "kept": "by export"}
    save_checkpoint(tmp_path / "f.pt", model, meta)
    exported = tmp_path / "e.pt"
    assert (
        cli_main(
            ["export", str(tmp_path / "f.pt"), str(exported), "--data-dir", str(labelled_folder)]
        )
        == 0
    )
    _, meta = load_checkpoint(exported)
    assert meta["kept"] == "by export" and stats_from_meta(meta).names == ("a", "b")
    png = tmp_path / "b.png"
    assert cli_main(["sample", str(exported), "--class", "b", "--n", "4", "--out", str(png)]) == 0
    assert (
        cli_main(
            [
                "sample",
                str(exported),
                "--class",
                "b",
                "--class-levels",
                "coarse",
                "--n",
                "4",
                "--out",
                str(tmp_path / "c.png"),
            ]
        )
        == 0
    )
    assert png.is_file() and not np.array_equal(
        np.asarray(Image.open(png)), np.asarray(Image.open(tmp_path / "c.png"))
    )
    assert cli_main(["sample", str(exported), "--class", "zebra", "--out", str(png)]) == 2
    assert "no class 'zebra'" in capsys.readouterr().err


def test_trainer_stores_class_statistics_after_its_last_evaluation(tmp_path, labelled_folder):
    from core.flow.model import FlowConfig
    from core.training.trainer import TrainConfig, Trainer

    config = TrainConfig(
        dataset="folder",
        data_dir=str(labelled_folder),
        out=str(tmp_path / "run"),
        batch_size=4,
        max_steps=2,
        eval_every=1000,
        warmup_steps=1,
        num_samples=2,
        device="cpu",
        class_stats_per_class=3,
    )
    model_config = FlowConfig(
        in_channels=1, image_size=8, num_scales=2, mid_channels=4, num_blocks=1
    )
    Trainer(model_config, config).run()
    _, meta = load_checkpoint(tmp_path / "run" / "latest.pt")
    stats = stats_from_meta(meta)
    assert stats.names == ("a", "b") and max(stats.counts) <= 3

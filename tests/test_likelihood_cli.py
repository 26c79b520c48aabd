"""``realnvp encode --json / --heatmap`` and the bundled model's typicality verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MNIST_DIR
from PIL import Image

from core.cli import main
from core.stats.typicality import IN_DISTRIBUTION, NO_REFERENCE

KEYS = {
    "path",
    "bits_per_dim",
    "levels",
    "preprocess_bits_per_dim",
    "percentile",
    "p_value",
    "complexity_score",
    "complexity_p_value",
    "verdict",
    "reason",
}


def _images(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = {
        "constant.png": Image.new("L", (30, 30), 128),
        "one_pixel.png": Image.new("RGB", (1, 1), (10, 200, 30)),
        "sixteen.png": Image.fromarray(rng.integers(0, 65535, (12, 9), dtype=np.uint16)),
        "rgba.png": Image.fromarray(rng.integers(0, 256, (10, 10, 4), dtype=np.uint8), "RGBA"),
        "palette.gif": Image.new("P", (9, 9), 3),
        "float.tif": Image.fromarray(rng.normal(size=(7, 7)).astype(np.float32), "F"),
    }
    for name, image in paths.items():
        image.save(tmp_path / name)
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    return [tmp_path / name for name in paths]


def test_encode_json_and_heatmaps_for_every_mode(tmp_path, tiny_checkpoint, capsys):
    images = _images(tmp_path)
    rc = main(
        [
            "encode",
            str(tiny_checkpoint),
            *map(str, images),
            "--out",
            str(tmp_path / "enc"),
            "--json",
            "--heatmap",
            str(tmp_path / "heat"),
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(images)
    for line, path in zip(lines, images):
        record = json.loads(line)
        assert set(record) >= KEYS and record["path"] == str(path)
        assert [lv["level"] for lv in record["levels"]] == [0, 1]
        total = sum(lv["prior_bits_per_dim"] + lv["logdet_bits_per_dim"] for lv in record["levels"])
        assert total + record["preprocess_bits_per_dim"] == pytest.approx(
            record["bits_per_dim"], rel=1e-5
        )
        # the tiny checkpoint carries no test statistics: the verdict says so and how to fix it
        assert record["verdict"] == NO_REFERENCE and "realnvp export" in record["reason"]
        assert record["p_value"] is None
        heat = Image.open(record["heatmap"])
        # image | reconstruction | heat map, each at least 112 px, 4 px gaps
        assert heat.size == (3 * 112 + 8, 112) and heat.mode == "RGB"
        assert (tmp_path / "enc" / f"{path.stem}_recon.png").is_file()
        assert np.asarray(heat)[:, -112:].std() > 0 or "constant" in path.name


def test_encode_text_output_names_levels_and_verdict(tmp_path, tiny_checkpoint, capsys):
    path = _images(tmp_path)[0]
    assert main(["encode", str(tiny_checkpoint), str(path), "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "level 0" in out and "level 1" in out and NO_REFERENCE in out


# -- the bundled model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled():
    from core.files.checkpoint import load_checkpoint
    from core.files.resources import bundled_model_path

    if not bundled_model_path().is_file():
        pytest.skip("no bundled model")
    return load_checkpoint(bundled_model_path())


def _verdicts(model, reference, pixels: np.ndarray):
    from core.flow.likelihood import likelihood_map_uint8
    from core.flow.model import ENCODE_SEED
    from core.stats.typicality import judge_pixels

    with torch.inference_mode():
        m = likelihood_map_uint8(
            model, torch.from_numpy(pixels), torch.Generator().manual_seed(ENCODE_SEED)
        )
    return [judge_pixels(reference, b, p) for b, p in zip(m.bits_per_dim.tolist(), pixels)]


def photo_like(seed: int = 0) -> np.ndarray:
    """A photo-like 28x28 grey image: a lit gradient, blotches and sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28] / 27.0
    blotches = np.kron(rng.normal(size=(7, 7)), np.ones((4, 4)))
    photo = 90 + 80 * yy + 40 * xx + 25 * blotches + 8 * rng.normal(size=(28, 28))
    return np.clip(photo, 0, 255).astype(np.uint8)[None]


def test_bundled_model_ships_its_test_statistics(bundled):
    from core.stats.typicality import TypicalityReference

    _, meta = bundled
    reference = TypicalityReference.from_meta(meta)
    assert reference is not None and reference.images >= 1000 and reference.dataset == "mnist"
    assert float(np.mean(reference.bits_per_dim)) == pytest.approx(meta["test_bpd"], abs=1e-4)


@pytest.mark.slow
def test_bundled_verdicts_digits_in_blank_and_photos_out(bundled):
    from core.stats.typicality import TypicalityReference

    model, meta = bundled
    reference = TypicalityReference.from_meta(meta)
    odd = np.stack(
        [
            np.zeros((1, 28, 28), np.uint8),
            np.full((1, 28, 28), 255, np.uint8),
            photo_like(0)[0:1],
            photo_like(1)[0:1],
        ]
    )
    labels = [v.label for v in _verdicts(model, reference, odd)]
    assert IN_DISTRIBUTION not in labels, labels
    black = _verdicts(model, reference, odd[:1])[0]
    assert "simpler than anything in the test set" in black.reason
    if not MNIST_DIR.is_dir():
        pytest.skip("no MNIST")
    from core.training.data import load_mnist

    digits = load_mnist(MNIST_DIR, train=False).images[-300:].numpy()
    labels = [v.label for v in _verdicts(model, reference, digits)]
    assert labels.count(IN_DISTRIBUTION) / len(labels) >= 0.9

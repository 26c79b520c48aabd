"""The completion sampler (core.flow.completion) and ``realnvp complete``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY_CONFIG, perturbed_model
from PIL import Image

from core.cli import main
from core.files.checkpoint import save_checkpoint
from core.flow.completion import (
    CompletionError,
    check_mask,
    complete,
    complete_image,
    completion_steps,
)

STEPS = 6  # the tests check the plumbing and the guarantees, not the quality


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (1, 8, 8), dtype=np.uint8)


def _bottom_half() -> np.ndarray:
    mask = np.zeros((8, 8), bool)
    mask[4:] = True
    return mask


def test_observed_pixels_are_kept_exactly_and_the_masked_ones_change():
    model = perturbed_model()
    pixels = _image()
    done = complete_image(model, pixels, _bottom_half(), samples=3, seed=1, steps=STEPS)
    assert done.images.shape == (3, 1, 8, 8) and done.images.dtype == np.uint8
    assert (done.images[:, :, :4] == pixels[:, :4]).all()  # bit for bit
    assert (done.images[:, :, 4:] != pixels[:, 4:]).any()
    assert done.bits_per_dim.shape == (3,) and np.isfinite(done.bits_per_dim).all()


def test_completions_differ_across_seeds_and_chains_and_repeat_with_a_seed():
    model = perturbed_model()
    pixels, mask = _image(), _bottom_half()
    a = complete_image(model, pixels, mask, samples=2, seed=3, steps=STEPS)
    b = complete_image(model, pixels, mask, samples=2, seed=3, steps=STEPS)
    c = complete_image(model, pixels, mask, samples=2, seed=4, steps=STEPS)
    assert np.array_equal(a.images, b.images)
    assert np.array_equal(a.bits_per_dim, b.bits_per_dim)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.images[0], a.images[1])  # each chain its own noise


def test_the_model_is_left_as_it_was():
    model = perturbed_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    complete_image(model, _image(), _bottom_half(), samples=1, steps=2)
    assert all(p.requires_grad for p in model.parameters())
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())


def test_a_batch_completes_each_image_with_its_own_mask():
    model = perturbed_model()
    pixels = np.stack([_image(0), _image(1)])
    masks = np.zeros((2, 1, 8, 8), bool)
    masks[0, :, :, :3] = True  # left columns
    masks[1, :, 5:] = True  # bottom rows
    done = complete(model, pixels, masks, steps=STEPS)
    assert np.array_equal(done.images[~masks], pixels[~masks])


def test_the_sampler_reports_each_step_then_its_completions():
    model = perturbed_model()
    pixels, masks = _image()[None], _bottom_half()[None, None]
    items = list(completion_steps(model, pixels, masks, steps=4))
    assert items[:4] == [1, 2, 3, 4] and items[4].images.shape == (1, 1, 8, 8)


@pytest.mark.parametrize(
    ("mask", "words"),
    [
        (np.zeros((8, 8), bool), "marks no pixel"),
        (np.ones((8, 8), bool), "covers the whole image"),
        (np.ones((6, 8), bool), "the mask is 8x6 pixels but the model's images are 8x8"),
    ],
)
def test_bad_masks_get_one_sentence(mask, words):
    with pytest.raises(CompletionError, match=words):
        check_mask(mask, 1, 8)


def test_a_mask_of_any_channel_marks_the_pixel():
    mask = np.zeros((3, 4, 4), np.uint8)
    mask[2, 1, 1] = 255
    checked = check_mask(mask, 3, 4)
    assert checked.shape == (3, 4, 4) and checked[:, 1, 1].all() and checked.sum() == 3


def test_bad_settings_are_refused():
    model = perturbed_model()
    with pytest.raises(CompletionError, match="temperature"):
        complete_image(model, _image(), _bottom_half(), temperature=0.0)
    with pytest.raises(CompletionError, match="samples"):
        complete_image(model, _image(), _bottom_half(), samples=0)
    with pytest.raises(CompletionError, match="shape"):
        complete_image(model, np.zeros((1, 9, 9), np.uint8), _bottom_half())


# -- the command line -------------------------------------------------------------------------


@pytest.fixture
def cli_files(tmp_path):
    ckpt = save_checkpoint(tmp_path / "tiny.pt", perturbed_model(), meta={"dataset": "t"})
    image = tmp_path / "digit.png"
    Image.fromarray(_image()[0]).save(image)
    mask = tmp_path / "mask.png"
    Image.fromarray((_bottom_half() * 255).astype(np.uint8)).save(mask)
    return ckpt, image, mask


def test_cli_writes_one_png_per_completion_and_json_lines(cli_files, tmp_path, capsys):
    ckpt, image, mask = cli_files
    out = tmp_path / "out"
    argv = [
        "complete",
        str(ckpt),
        str(image),
        "--mask",
        str(mask),
        "--samples",
        "3",
        "--seed",
        "5",
        "--steps",
        str(STEPS),
        "--out",
        str(out),
        "--json",
    ]
    assert main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["path"] for line in lines] == [str(out / f"digit_{k}.png") for k in range(3)]
    original = _image()[0]
    for line in lines:
        pixels = np.asarray(Image.open(line["path"]))
        assert pixels.shape == (8, 8) and np.array_equal(pixels[:4], original[:4])
        assert np.isfinite(line["bits_per_dim"])
    # The same seed, the same files.
    first = [np.asarray(Image.open(line["path"])) for line in lines]
    assert main([*argv[:-1]]) == 0
    assert all(np.array_equal(a, np.asarray(Image.open(p["path"]))) for a, p in zip(first, lines))


def test_cli_crops_and_resizes_an_image_as_drops_are(cli_files, tmp_path, capsys):
    ckpt, _image_path, mask = cli_files
    big = tmp_path / "big.png"
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(big)
    out = tmp_path / "out"
    code = main(
        [
            "complete",
            str(ckpt),
            str(big),
            "--mask",
            str(mask),
            "--samples",
            "1",
            "--steps",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert np.asarray(Image.open(out / "big_0.png")).shape == (8, 8)
    assert "big_0.png" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mask_pixels", "words"),
    [
        (np.zeros((8, 8), np.uint8), "marks no pixel"),
        (np.full((8, 8), 255, np.uint8), "covers the whole image"),
        (np.full((5, 8), 255, np.uint8), "8x5 pixels"),
    ],
)
def test_cli_bad_masks_get_one_line(cli_files, tmp_path, capsys, mask_pixels, words):
    ckpt, image, _mask = cli_files
    bad = tmp_path / "bad.png"
    Image.fromarray(mask_pixels).save(bad)
    code = main(
        ["complete", str(ckpt), str(image), "--mask", str(bad), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err.strip()
    assert code != 0 and words in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_cli_unreadable_mask_and_image(cli_files, tmp_path, capsys):
    ckpt, image, mask = cli_files
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    for args in ([str(image), "--mask", str(junk)], [str(junk), "--mask", str(mask)]):
        code = main(["complete", str(ckpt), *args, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip()
        assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err


def test_tiny_config_is_the_fixture_model():
    assert perturbed_model().config == TINY_CONFIG

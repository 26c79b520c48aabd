"""The bundled model's class statistics do what the Classes tab promises: a class sample
looks like its class, and moving a digit's coarse levels onto another class's means turns
it into that class while its finest level stays bit-identical.

The judge is a nearest-class-mean classifier in pixel space, fitted here on the MNIST
training set: simple, and blind to the latent space it checks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PySide6.QtCore import Qt

from core.files.checkpoint import load_checkpoint
from core.flow.inference import fold_for_inference
from core.flow.model import pixel_centres
from core.stats.class_stats import ClassStats, level_mask, stats_from_meta
from core.stats.judge import NearestNeighbourJudge
from core.stats.measure import class_samples
from core.training.data import load_mnist
from explorer.state.classes import ClassMove, class_sample, nearest_classes
from explorer.state.state import ExplorerState
from tests.test_data import MNIST_DIR, needs_mnist

BUNDLED = Path(__file__).resolve().parents[1] / "resources" / "default_model.pt"

pytestmark = [
    needs_mnist,
    pytest.mark.skipif(not BUNDLED.is_file(), reason="no bundled model"),
]


@pytest.fixture(scope="module")
def bundled():
    model, meta = load_checkpoint(BUNDLED)
    stats = stats_from_meta(meta)
    assert stats is not None, "the bundled model carries class statistics"
    return fold_for_inference(model), stats


@pytest.fixture(scope="module")
def pixel_class_means() -> np.ndarray:
    """``(10, 784)``: the mean training image of each digit, pixels in [0, 1]."""
    train = load_mnist(MNIST_DIR, train=True)
    x = train.images.reshape(len(train), -1).float().numpy() / 255.0
    return np.stack([x[train.labels == k].mean(axis=0) for k in range(10)])


def classify(images: torch.Tensor, means: np.ndarray) -> np.ndarray:
    """Nearest class mean in pixel space of ``(N, 1, 28, 28)`` images in [0, 1]."""
    x = images.reshape(len(images), -1).numpy().astype(np.float64)
    d = ((x[:, None, :] - means[None]) ** 2).sum(axis=2)
    return d.argmin(axis=1)


def decode(model, latents) -> torch.Tensor:
    with torch.inference_mode():
        return model.decode([torch.from_numpy(np.array(z, dtype=np.float32)) for z in latents])


def test_the_statistics_cover_every_digit_with_enough_images(bundled):
    _, stats = bundled
    assert stats.names == tuple(str(d) for d in range(10))
    assert min(stats.counts) >= 1000 and not stats.skipped
    # class samples come from a mixture of several Gaussians a digit
    assert stats.mixture_weights is not None
    assert min(stats.components_used(k) for k in range(10)) >= 2


@pytest.mark.slow
def test_sampling_a_class_gives_that_digit(bundled, pixel_class_means, one_torch_thread):
    model, stats = bundled
    hits = []
    for k in range(10):
        latents = class_sample(stats, k, 100, 0.7, seed=k)
        hits.append(float((classify(decode(model, latents), pixel_class_means) == k).mean()))
    # A cruder judge than the nearest training image below. Seven digits of ten at 70% or
    # more: the 1.1983 bits/dim model (issue 31's sixth run) with its class mixtures has
    # 7 (8: 51%, 5: 63%, 2: 66%), as the 1.2036 one had (8: 56%, 2: 59%, 5: 66%) and the
    # 1.2134 one (2: 61%, 8: 65%, 5: 67%); the bundled model follows the test likelihood.
    passed = sum(h >= 0.7 for h in hits)
    assert passed >= 7, f"share assigned to the sampled digit, per digit: {hits}"


@pytest.fixture(scope="module")
def judge() -> NearestNeighbourJudge:
    train = load_mnist(MNIST_DIR, train=True)
    return NearestNeighbourJudge(train.images[:20000].numpy(), np.asarray(train.labels[:20000]))


def shares_of(model, stats, judge) -> dict[int, float]:
    """The share of each digit's 100 class samples (temperature 0.7, every level drawn from
    the class) that the judge calls that digit."""
    levels = level_mask("all", model.num_levels)
    shares = {}
    with torch.inference_mode():
        for k in range(10):
            g = torch.Generator().manual_seed(k)
            x = class_samples(model, stats, k, 100, 0.7, levels, g)
            shares[k] = judge.share_as(x.cpu().numpy(), k)
    return shares


@pytest.fixture(scope="module")
def judged_class_shares(bundled, judge) -> dict[int, float]:
    """``realnvp sample bundled --class K`` (temperature 0.7, every level drawn from the
    class's mixture, 100 samples a digit): the share of each digit's samples that the
    nearest of 20,000 MNIST training images in pixel space calls that digit."""
    model, stats = bundled
    return shares_of(model, stats, judge)


@pytest.mark.slow
def test_the_mixture_reads_as_its_digit_more_often_than_one_gaussian(
    bundled, judge, judged_class_shares
):
    """Each digit's mixture against its single Gaussian (the class's mean and std, what
    class samples were before), on the same model, noise seeds and judge."""
    model, stats = bundled
    single = ClassStats(stats.names, stats.counts, stats.means, stats.stds, stats.source)
    one = shares_of(model, single, judge)
    mixed = judged_class_shares
    assert sum(mixed.values()) >= sum(one.values()) + 0.3, (mixed, one)  # 3 points a digit
    assert min(mixed.values()) > min(one.values()), (mixed, one)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="issue 31's target, not reached: the bundled model (1.1983 bits/dim) reads "
    "as its digit 99 100 71 80 88 79 88 86 69 91% for 0..9 with its class mixtures "
    "(resources/MODEL_CARD.md)",
)
def test_sample_class_reads_as_that_digit_for_every_digit(judged_class_shares):
    """The target: every digit at least 80%."""
    shares = judged_class_shares
    assert min(shares.values()) >= 0.8, f"share judged as the sampled digit: {shares}"


@pytest.mark.slow
def test_class_samples_read_as_their_digit_most_of_the_time(judged_class_shares):
    """What holds today, and must not get worse: 82% read as their digit on average, and
    no digit below 60% (the bundled model's mixtures: 85.1% and 69%; its single
    Gaussians, 79.6% and 54%; run 5's model, 84.7% and 71%, and run 4's, 85.1% and 65%,
    with their mixtures)."""
    shares = judged_class_shares
    assert sum(shares.values()) / len(shares) >= 0.82, shares
    assert min(shares.values()) >= 0.6, shares


def test_the_judge_reads_real_test_digits():
    train = load_mnist(MNIST_DIR, train=True)
    test = load_mnist(MNIST_DIR, train=False)
    judge = NearestNeighbourJudge(train.images[:20000].numpy(), np.asarray(train.labels[:20000]))
    guess = judge.classify(test.images[:500].numpy())
    assert (guess == np.asarray(test.labels[:500])).mean() >= 0.93


@pytest.mark.slow
def test_moving_the_coarse_levels_changes_the_class_and_keeps_the_finest(
    bundled, pixel_class_means, one_torch_thread
):
    model, stats = bundled
    test = load_mnist(MNIST_DIR, train=False)
    digits, labels = test.images[:20], test.labels[:20]
    with torch.inference_mode():
        encoded = [z.numpy() for z in model.encode(pixel_centres(digits))]
    assert (classify(decode(model, encoded), pixel_class_means) == labels).mean() >= 0.7
    changed = 0
    for i, label in enumerate(labels):
        target = (int(label) + 5) % 10
        state = ExplorerState(stats.shapes, n_images=1)
        state.set_classes(ClassMove.from_stats(stats))  # the mask starts at "coarse"
        state.set_image([z[i] for z in encoded])
        state.set_class_amount(target, 1.0)
        moved = state.latents()
        assert np.array_equal(moved[0], encoded[0][i : i + 1])  # the finest, bit for bit
        near = nearest_classes([z[0] for z in moved], stats.names, stats.means)
        assert [n.index for n in near[1:]] == [target] * (len(moved) - 1)
        changed += int(classify(decode(model, moved), pixel_class_means)[0] == target)
    # the decoded image is judged in pixel space, where the untouched finest level still
    # carries some of the old digit's stroke
    assert changed >= 14, f"{changed} of 20 digits became the target class"


@pytest.mark.slow
def test_the_window_samples_a_digit_of_the_bundled_model(
    make_window, qtbot, bundled, judge, screenshot_dir
):
    """Classes tab, digit 8 (among the hardest for the judge), Sample clicked: the view
    holds that many images drawn from the 8's mixture, and most of them read as 8."""
    model, _ = bundled
    window = make_window(BUNDLED)
    window.resize(1366, 768)
    panel = window.classes_panel
    window.show_tab(panel)
    qtbot.keyClicks(panel.class_combo, "8")  # a user typing the digit into the box
    assert panel.class_combo.currentText() == "8"
    # The most the view holds: 24 images swung from 42% to 83% read as 8 between draws
    # of the 1.2036 model (72% of 400); 64 from 61% to 75% over 20 draws.
    panel.count.setValue(64)
    qtbot.mouseClick(panel.sample_button, Qt.MouseButton.LeftButton)
    latents = window.state.latents()
    assert window.state.n_images == 64 and latents[0].shape[0] == 64
    x = decode(model, latents)
    assert judge.share_as(x.numpy(), 8) >= 0.5
    assert "mixture of Gaussians a class (0: " in panel.source_label.text()
    qtbot.waitUntil(lambda: window.samples_panel.view.painted_complete_id > 0, timeout=20000)
    assert window.grab().save(str(screenshot_dir / "bundled_class_8.png"))

"""Typicality verdicts against a model's test set (core.stats.typicality: numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from core.stats.typicality import (
    IN_DISTRIBUTION,
    NO_REFERENCE,
    OUT_OF_DISTRIBUTION,
    UNUSUAL,
    TypicalityReference,
    compressed_bits_per_dim,
    judge,
    judge_pixels,
    percent_text,
    place,
)


def _reference(n: int = 1000) -> TypicalityReference:
    rng = np.random.default_rng(0)
    return TypicalityReference(
        "toy", np.sort(rng.normal(1.0, 0.1, n)), np.sort(rng.normal(-2.0, 0.2, n))
    )


def test_place_is_two_sided_and_never_zero():
    ref = np.arange(1.0, 100.0)  # 99 values 1..99
    mid = place(50.0, ref)
    assert mid.percentile == pytest.approx(49.5 / 99 * 100)
    assert mid.p_value == 1.0
    low, high = place(-5.0, ref), place(500.0, ref)
    assert low.below_all and not low.above_all and low.percentile == 0.0
    assert high.above_all and high.percentile == 100.0
    assert low.p_value == high.p_value == pytest.approx(2 / 100)
    # symmetric: the k-th smallest and the k-th largest get the same p-value
    assert place(3.0, ref).p_value == pytest.approx(place(97.0, ref).p_value)
    assert place(3.0, ref).p_value == pytest.approx(2 * 4 / 100)


def test_verdicts_and_reasons_in_words():
    ref = _reference()
    typical = judge(ref, 1.0, -2.0)
    assert typical.label == IN_DISTRIBUTION and "percentile" in typical.reason
    simple = judge(ref, 0.2, -2.0)  # far fewer bits/dim than any test image
    assert simple.label == OUT_OF_DISTRIBUTION
    assert "simpler than anything in the test set" in simple.reason
    unlikely = judge(ref, 3.0, -2.0)
    assert unlikely.label == OUT_OF_DISTRIBUTION
    assert "far less likely than the test set" in unlikely.reason
    # typical bits/dim, but far more than its complexity explains
    odd = judge(ref, 1.0, 1.0)
    assert odd.label == OUT_OF_DISTRIBUTION and "complexity" in odd.reason
    assert odd.p_value > 0.5 and odd.complexity_p_value < 0.002
    # a value in the outer 2% but not beyond the 0.2% is unusual
    edge = float(np.quantile(ref.bits_per_dim, 0.996))
    assert judge(ref, edge, -2.0).label == UNUSUAL


def test_a_small_reference_never_calls_an_image_beyond_it_in_distribution():
    """64 reference images allow no p-value below 2/65 = 0.031: above both thresholds. An
    image beyond all of them, at either end, is unusual, and the verdict says how far 64
    images go."""
    ref = _reference(64)
    for bits, cx, beyond in (
        (3.0, -2.0, "more bits/dim than all 64 test images"),
        (0.2, -2.0, "fewer bits/dim than all 64 test images"),
        (1.0, 1.0, "complexity-corrected score higher than any test image"),
        (1.0, -9.0, "complexity-corrected score lower than any test image"),
    ):
        v = judge(ref, bits, cx)
        assert v.label == UNUSUAL, (bits, cx, v)
        assert v.reason.startswith(beyond), v.reason
        assert v.reason.endswith(
            "beyond all 64 reference images it is unusual, but they are too few to call it "
            "out of distribution (that takes 1,000)"
        )
        assert v.reference_images == 64 and v.to_dict()["reference_images"] == 64
    inside = judge(ref, float(np.median(ref.bits_per_dim)), float(np.median(ref.complexity)))
    assert inside.label == IN_DISTRIBUTION and "of the 64 toy test images" in inside.reason
    # With 1,000 the evidence reaches out of distribution, and no caveat is added.
    big = judge(_reference(1000), 3.0, -2.0)
    assert big.label == OUT_OF_DISTRIBUTION and "too few" not in big.reason


def test_percentages_never_round_to_0_or_100_unless_they_are():
    assert [percent_text(p) for p in (99.96, 0.04, 99.9996, 50.0, 100.0, 0.0, 12.34)] == [
        "99.96",
        "0.04",
        "99.9996",
        "50.0",
        "100.0",
        "0.0",
        "12.3",
    ]
    ref = TypicalityReference("toy", np.arange(2500.0), np.zeros(2500))
    # Above 2,499 of 2,500 reference values: percentile 99.96, the case.
    v = judge(ref, 2498.5, 0.0)
    assert "more bits/dim than 99.96% of the test set" in v.reason, v.reason
    assert "100.0%" not in v.reason


def test_test_set_itself_is_mostly_in_distribution():
    ref = _reference()
    labels = [judge(ref, b, c).label for b, c in zip(ref.bits_per_dim, ref.complexity[::-1])]
    assert labels.count(IN_DISTRIBUTION) / len(labels) >= 0.9


def test_no_reference_says_how_to_add_one():
    v = judge(None, 1.2, -1.0)
    assert v.label == NO_REFERENCE and "realnvp export" in v.reason and "--data-dir" in v.reason
    d = v.to_dict()
    assert d["p_value"] is None and d["verdict"] == NO_REFERENCE
    assert judge(_reference(), float("nan"), 0.0).label == OUT_OF_DISTRIBUTION


def test_meta_round_trip_and_bad_meta():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (30, 1, 8, 8), dtype=np.uint8)
    bpd = rng.normal(5, 1, 30)
    ref = TypicalityReference.from_scores("toy", bpd, pixels, note="n")
    meta = {"typicality": ref.to_meta(), "dataset": "toy"}
    back = TypicalityReference.from_meta(meta)
    assert back.images == 30 and back.dataset == "toy"
    np.testing.assert_allclose(back.bits_per_dim, np.sort(bpd), atol=1e-5)
    expected = np.sort([b - compressed_bits_per_dim(p) for b, p in zip(bpd, pixels)])
    np.testing.assert_allclose(back.complexity, expected, atol=1e-5)
    for bad in (
        None,
        {},
        {"typicality": "x"},
        {"typicality": {"version": 99}},
        {"typicality": {**ref.to_meta(), "complexity": [1.0]}},
        {"typicality": {**ref.to_meta(), "bits_per_dim": "junk"}},
    ):
        assert TypicalityReference.from_meta(bad) is None
    with pytest.raises(ValueError, match="at least"):
        TypicalityReference.from_scores("toy", bpd[:5], pixels[:5])


def test_complexity_orders_simple_below_busy():
    flat = np.zeros((1, 28, 28), np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    assert compressed_bits_per_dim(flat) < 1.0 < 7.0 < compressed_bits_per_dim(noise)
    v = judge_pixels(_reference(), 1.0, flat)
    assert v.complexity_score == pytest.approx(1.0 - compressed_bits_per_dim(flat))
    with pytest.raises(ValueError):
        compressed_bits_per_dim(np.zeros((2, 4, 4), np.uint8))

"""The likelihood map and typicality verdict of one image, for the explorer (torch here).

Called by the render engine under its model lock, on a worker thread: the map costs about
one encode (``realnvp bench``: ``likelihood_map``).
"""

from __future__ import annotations

import numpy as np

from core.flow.likelihood import ImageLikelihood, describe_images
from core.flow.model import RealNVP
from core.stats.heatmap import bits_range, colorize
from core.stats.typicality import TypicalityReference
from explorer.state.advice import in_app_words
from explorer.state.likelihood import PREPROCESSING, TOTAL, LikelihoodView, level_key


def describe_pixels(
    model: RealNVP, pixels: np.ndarray, reference: TypicalityReference | None
) -> LikelihoodView:
    """:class:`LikelihoodView` of a uint8 ``(C, H, W)`` image (the encode seed's noise)."""
    return describe_pixel_batch(model, np.asarray(pixels)[None], reference)[0]


def describe_pixel_batch(
    model: RealNVP, pixels: np.ndarray, reference: TypicalityReference | None
) -> list[LikelihoodView]:
    """:func:`describe_pixels` of each uint8 ``(N, C, H, W)`` image, in one pass."""
    return [_view(d, reference) for d in describe_images(model, pixels, reference)]


def _view(described: ImageLikelihood, reference: TypicalityReference | None) -> LikelihoodView:
    s = described.summary
    maps = {TOTAL: described.pixel_bits}
    for i, bits in enumerate(described.level_bits):
        maps[level_key(i)] = bits
    maps[PREPROCESSING] = described.preprocess_bits
    heat, ranges = {}, {}
    for name, bits in maps.items():
        per_pixel = bits.sum(0)  # (H, W): a colour pixel's channels together
        ranges[name] = bits_range(per_pixel)
        heat[name] = colorize(per_pixel, *ranges[name])
    return LikelihoodView(
        bits_per_dim=s["bits_per_dim"],
        prior_bits_per_dim=tuple(lv["prior_bits_per_dim"] for lv in s["levels"]),
        logdet_bits_per_dim=tuple(lv["logdet_bits_per_dim"] for lv in s["levels"]),
        preprocess_bits_per_dim=s["preprocess_bits_per_dim"],
        heat=heat,
        heat_range=ranges,
        verdict=s["verdict"],
        reason=in_app_words(s["reason"]),
        percentile=s["percentile"],
        p_value=s["p_value"],
        complexity_score=s["complexity_score"],
        complexity_p_value=s["complexity_p_value"],
        reference_bits=reference.bits_per_dim if reference is not None else None,
        reference_dataset=reference.dataset if reference is not None else "",
    )

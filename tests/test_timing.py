"""The one timing kit (core/training/timing.py) that every benchmark and the precision
choice use: one median, one p95, calls interleaved in turn."""

from __future__ import annotations

import numpy as np
import pytest

from core.training.timing import interleaved_ms, p95, percentiles, time_ms


@pytest.mark.parametrize(
    "samples", [[1, 2, 3, 4, 5, 6, 7, 100], [3.0, 1.0], list(np.random.default_rng(0).random(37))]
)
def test_p95_interpolates_between_ranks_as_numpy_does(samples):
    assert p95(samples) == pytest.approx(float(np.percentile(samples, 95)))


def test_percentiles_name_their_keys():
    assert percentiles([4.0, 1.0, 2.0], "_ms") == {"p50_ms": 2.0, "p95_ms": 3.8, "n": 3}
    assert percentiles([5.0]) == {"p50": 5.0, "p95": 5.0, "n": 1}


def test_calls_are_timed_in_turn_after_the_warm_up_and_synchronised():
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b")}
    times, warm = interleaved_ms(calls, 3, warmup=2)
    assert order == ["a", "b"] * 5
    assert [len(t) for t in times.values()] == [3, 3] and set(warm) == {"a", "b"}
    syncs: list[str] = []
    assert len(time_ms(lambda: syncs.append("call"), 2, sync=lambda: syncs.append("sync"))) == 2
    assert syncs == ["sync", "call", "sync"] * 2


def test_a_budget_cuts_the_rounds_to_at_least_one():
    import time

    times, _ = interleaved_ms({"slow": lambda: time.sleep(0.02)}, 50, budget_s=0.001)
    assert len(times["slow"]) == 1

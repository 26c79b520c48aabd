"""One timing kit for every figure the project measures: ``realnvp bench``, the explorer's
benchmarks (``explorer_bench``) and the trainer's choice of precision time their calls
here and read them with one median and one p95.

Torch-free: a CUDA caller passes ``sync`` (``torch.cuda.synchronize``), called before the
clock starts and before it stops, so a call's queued GPU work counts as its own.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence


def time_ms(
    fn: Callable[[], object],
    repeats: int = 1,
    warmup: int = 0,
    sync: Callable[[], object] | None = None,
) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``fn``, after ``warmup`` calls left untimed."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if sync is not None:
            sync()
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        out.append((time.perf_counter() - start) * 1000.0)
    return out


def interleaved_ms(
    fns: Mapping[str, Callable[[], object]],
    repeats: int,
    *,
    warmup: int = 1,
    budget_s: float | None = None,
    sync: Callable[[], object] | None = None,
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Times of each function, one call of each in turn (so a change in the machine's load
    falls on all), after ``warmup`` such rounds; fewer rounds (at least one) where the
    warm-up says ``repeats`` would take over ``budget_s``. Returns the times and each
    function's mean warm-up time (its first calls, compilation and caches included)."""
    warm: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(warmup):
        for name, fn in fns.items():
            warm[name] += time_ms(fn, sync=sync)
    first = {name: statistics.fmean(ms) for name, ms in warm.items() if ms}
    if budget_s is not None and first:
        per_round_ms = max(sum(first.values()), 1e-9)
        repeats = max(1, min(repeats, int(budget_s * 1000.0 // per_round_ms)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name] += time_ms(fn, sync=sync)
    return times, first


def p50(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def p95(samples: Sequence[float]) -> float:
    """The 95th percentile, interpolated between the two nearest ranks (numpy's default,
    ``statistics.quantiles(method="inclusive")``); one sample is its own."""
    if len(samples) < 2:
        return float(samples[0])
    return statistics.quantiles(samples, n=20, method="inclusive")[18]


def percentiles(samples_ms: Sequence[float], suffix: str = "", digits: int = 3) -> dict:
    """``{"p50", "p95", "n"}`` of ``samples_ms`` (``suffix`` after the percentiles' keys:
    ``"_ms"`` gives ``p50_ms`` and ``p95_ms``)."""
    return {
        f"p50{suffix}": round(p50(samples_ms), digits),
        f"p95{suffix}": round(p95(samples_ms), digits),
        "n": len(samples_ms),
    }

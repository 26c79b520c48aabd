"""The learning-rate schedule and the run's planned length under a time limit.

The rate warms up linearly over ``warmup`` steps, then stays flat (``constant``) or follows a
half cosine down to ``floor`` times the base rate at the planned last step (``cosine``).

With ``--time-limit`` the planned length is measured, not guessed: the schedule stays a
function of the step (so a resumed run replays the same rates and a checkpoint holds all it
needs), and the step count it decays over is planned from the measured rate of this
machine. :class:`StepPlan` re-plans at every progress line: while the rate warms up the plan
may move either way; after it only shrinks, so a machine that slows down (another process
taking a core) ends the decay before the limit, and one that speeds up ends early rather
than jumping the rate back up. A cluster's wall-clock limit is the same problem with the
limit read from the scheduler.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

SCHEDULES = ("constant", "cosine")
# The cosine's end, as a share of the base rate.
COSINE_FLOOR = 0.01

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms]?)")
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``90m``, ``2h``, ``1h30m``, ``45s``, ``3600`` (seconds), or
    Slurm's ``HH:MM:SS``, ``MM:SS`` and ``D-HH:MM:SS``. Raises ``ValueError`` with a
    sentence for anything else, or a duration that is not positive."""
    s = str(text).strip().lower()
    seconds: float | None = None
    if ":" in s:
        days = 0.0
        if "-" in s:
            d, s = s.split("-", 1)
            days = float(d) if d.isdigit() else math.nan
        parts = s.split(":")
        if len(parts) in (2, 3) and all(p.isdigit() for p in parts) and not math.isnan(days):
            values = [int(p) for p in parts]
            if len(values) == 2:
                values = [0, *values]
            h, m, sec = values
            seconds = days * 86400 + h * 3600 + m * 60 + sec
    else:
        pos, total = 0, 0.0
        for match in _DURATION.finditer(s):
            if match.start() != pos or (not match.group(2) and match.end() != len(s)):
                break
            total += float(match.group(1)) * _UNIT_S[match.group(2)]
            pos = match.end()
        if s and pos == len(s):
            seconds = total
    if seconds is None or not seconds > 0:
        raise ValueError(
            f"{text!r} is not a duration: use a number with a unit, such as 90m, 2h, 1h30m or "
            "45s (or HH:MM:SS)"
        )
    return seconds


def lr_factor(step: int, schedule: str, warmup: int, planned: int) -> float:
    """The learning rate of step ``step`` (0-based, the step about to run) as a share of
    the base rate."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if schedule == "constant":
        return warm
    if schedule != "cosine":
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {SCHEDULES}")
    span = max(planned - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return warm * (COSINE_FLOOR + (1.0 - COSINE_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * progress)))


@dataclass
class StepPlan:
    """The step the run plans to end at. ``total`` is the length asked for (epochs or
    ``--max-steps``); ``planned`` the length the schedule decays over, never beyond it."""

    total: int
    planned: int
    warmup: int = 0

    def replan(
        self, step: int, steps_per_s: float, seconds_left: float, margin: float = 0.97
    ) -> bool:
        """Fit the plan to ``seconds_left`` at ``steps_per_s``; whether it changed."""
        if steps_per_s <= 0 or not math.isfinite(steps_per_s):
            return False
        fits = step + int(max(seconds_left, 0.0) * steps_per_s * margin)
        target = max(step + 1, min(self.total, fits))
        if step >= self.warmup:
            target = min(target, self.planned)  # past warm-up the plan only shrinks
        if target == self.planned:
            return False
        self.planned = target
        return True

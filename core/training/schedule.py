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
from dataclasses import dataclass

from core.config import SCHEDULES, parse_duration  # noqa: F401 (re-exported)

# The cosine's end, as a share of the base rate.
COSINE_FLOOR = 0.01


def lr_factor(step: int, schedule: str, warmup: int, planned: int | StepPlan) -> float:
    """The learning rate of step ``step`` (0-based, the step about to run) as a share of
    the base rate; ``planned``: the planned last step, or a :class:`StepPlan` (whose
    progress may have been re-planned)."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if schedule == "constant":
        return warm
    if schedule != "cosine":
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {SCHEDULES}")
    if isinstance(planned, StepPlan):
        progress = planned.progress(step)
    else:
        progress = min(max(step - warmup, 0) / max(planned - warmup, 1), 1.0)
    return warm * (COSINE_FLOOR + (1.0 - COSINE_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * progress)))


@dataclass
class StepPlan:
    """The step the run plans to end at, and how far the schedule has come.

    ``total`` is the length asked for (epochs or ``--max-steps``); ``planned`` the step the
    schedule reaches its end at, never beyond ``total``. Progress runs from 0 at the end of
    warm-up to 1 at ``planned``, linearly from the last re-plan (``anchor_step``,
    ``anchor_progress``): a longer plan slows the decay from where it is and a shorter one
    speeds it up, so the rate never rises again and always reaches its floor at the planned
    step. Without re-plans progress is ``(step - warmup) / (planned - warmup)``.
    """

    total: int
    planned: int
    warmup: int = 0
    anchor_step: int | None = None  # None: the end of warm-up, at progress 0
    anchor_progress: float = 0.0

    def progress(self, step: int) -> float:
        start = self.warmup if self.anchor_step is None else self.anchor_step
        if step <= start:
            return self.anchor_progress
        span = max(self.planned - start, 1)
        done = self.anchor_progress + (1.0 - self.anchor_progress) * (step - start) / span
        return min(done, 1.0)

    def replan(
        self, step: int, steps_per_s: float, seconds_left: float, margin: float = 0.97
    ) -> bool:
        """Fit the plan to ``seconds_left`` at ``steps_per_s``; whether it changed. Changes
        under 2% of the steps left are not made, so the plan does not follow noise."""
        if steps_per_s <= 0 or not math.isfinite(steps_per_s):
            return False
        fits = step + int(max(seconds_left, 0.0) * steps_per_s * margin)
        target = max(step + 1, min(self.total, fits))
        if abs(target - self.planned) <= 0.02 * max(self.planned - step, 0) or (
            target == self.planned
        ):
            return False
        if step > self.warmup:
            self.anchor_progress = self.progress(step)
            self.anchor_step = step
        self.planned = target
        return True

    def state_dict(self) -> dict:
        return {
            "planned": self.planned,
            "anchor_step": self.anchor_step,
            "anchor_progress": self.anchor_progress,
        }

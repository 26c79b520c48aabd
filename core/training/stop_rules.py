"""When a run's loop ends, and what the end means: ``--time-limit`` (the schedule re-planned
to fit it, see :mod:`core.training.schedule`), a stop request (a signal, ``OUT/STOP``, a
closed event stream) and, under Slurm, a requeue (see :mod:`core.runs.slurm`). In a
distributed run the ranks agree on each."""

from __future__ import annotations

import signal
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from core.config import TrainConfig
from core.runs.events import EventSink
from core.runs.slurm import SlurmJob
from core.runs.stopping import REQUEUE_SIGNALS, StopSignals
from core.training.distributed import Ranks
from core.training.schedule import StepPlan


def with_job_time_limit(config: TrainConfig, slurm: SlurmJob | None) -> TrainConfig:
    """A Slurm job with no requeue left plans its schedule to the job's end (a typed
    ``--time-limit`` wins)."""
    no_requeue_left = slurm and slurm.restarts >= config.max_requeues
    if no_requeue_left and config.time_limit is None:
        return replace(config, time_limit=slurm.time_limit())
    return config


class StopRules:
    """The stop decisions of one run, from ``started`` (when ``--time-limit`` began to
    count). ``last_eval_s``: how long the last evaluation took (the trainer sets it);
    ``time_up``: the time limit has ended the loop."""

    def __init__(
        self,
        config: TrainConfig,
        ranks: Ranks,
        device: torch.device,
        sink: EventSink,
        stop_file: Path,
        slurm: SlurmJob | None,
        started: float,
    ) -> None:
        self.config = config
        self.dist = ranks
        self.device = device
        self.sink = sink
        self.stop_file = stop_file
        self.slurm = slurm
        self.started = started
        self.time_up = False
        self.last_eval_s: float | None = None
        self._reserve_s = 0.0

    def stop_reason(self, stop: StopSignals) -> str:
        """Why a signal or the stop file ends the loop: under Slurm, SIGUSR1 (the job's
        time limit is near) and SIGTERM (a preemption, not scancel) requeue the job while
        ``--max-requeues`` allows, then end the run as a time limit does."""
        if self.slurm is None or stop.received not in REQUEUE_SIGNALS:
            return "stopped"
        # scancel sends SIGTERM too, to a job it has already ended (COMPLETING), which
        # Slurm would requeue all the same; a preemption's grace time finds it RUNNING.
        if stop.received == signal.SIGTERM and self.slurm.state() != "RUNNING":
            return "stopped"
        return "requeue" if self.slurm.restarts < self.config.max_requeues else "time_limit"

    def requeue(self, step: int, checkpoint: Path) -> bool:
        """Ask Slurm to requeue the job, ``checkpoint`` saved; a ``requeue`` event says so
        (no ``done``: the run goes on in the requeued job). ``False`` where Slurm refused
        (a job being cancelled: ``scancel`` sends SIGTERM too), with a warning."""
        if not self.dist.is_main:
            return True
        refused = self.slurm.requeue()
        if refused is not None:
            self.sink.emit("warning", message=refused)
            return False
        self.sink.emit(
            "requeue",
            step=step,
            job_id=self.slurm.job_id,
            requeues=self.slurm.restarts + 1,
            max_requeues=self.config.max_requeues,
            checkpoint=str(checkpoint),
        )
        return True

    def past_deadline(self) -> bool:
        c = self.config
        if c.time_limit is None:
            return False
        return time.perf_counter() - self.started >= c.time_limit - self._reserve_s

    def fit_plan(
        self,
        plan: StepPlan,
        step: int,
        loop_step: int,
        loop_start: float,
        n_train: int,
        n_test: int,
    ) -> None:
        """``--time-limit``: re-plan the schedule's length from the rate measured since the
        loop began (evaluations included), keeping back the time the last evaluation, the
        class statistics and the last save will take (see :mod:`core.training.schedule`).
        In a distributed run the ranks agree on the shortest plan."""
        c = self.config
        now = time.perf_counter()
        done = step - loop_step
        if done < 5:
            return
        steps_per_s = done / max(now - loop_start, 1e-9)
        images_per_s = steps_per_s * c.batch_size * self.dist.world
        # The last evaluation, the averaged weights' batch norm and the class statistics
        # are forward passes in float32: counted at half a training step's time an image (a
        # forward pass is about a third of a step, and a bf16 step is up to 1.6x faster).
        tail_images = n_test if self.last_eval_s is None else 0
        tail_images += c.ema_bn_images + (
            min(n_train, 10 * c.class_stats_per_class) if c.class_stats_per_class else n_train
        )
        tail_s = tail_images / max(2 * images_per_s, 1e-9) + 1.3 * (self.last_eval_s or 0.0)
        self._reserve_s = tail_s + 0.02 * c.time_limit
        seconds_left = c.time_limit - (now - self.started) - self._reserve_s
        plan.replan(step, steps_per_s, seconds_left)
        if self.dist.enabled:
            planned = torch.tensor([plan.planned], device=self.device)
            dist.all_reduce(planned, op=dist.ReduceOp.MIN)
            plan.planned = int(planned.item())
        elif self.past_deadline():
            self.time_up = True

    def should_stop(self, stop: StopSignals, check_now: bool) -> bool:
        """A signal, the stop file, or a closed event stream (the reader of ``--progress
        json`` went away) ends the run with a checkpoint."""
        if not self.dist.enabled:
            return stop.requested or self.sink.closed or self.stop_file.exists() or self.time_up
        if not check_now:  # agreeing across ranks is a synchronisation; not every step
            return False
        self.time_up = self.time_up or self.past_deadline()
        requested = stop.requested or self.sink.closed or self.stop_file.exists() or self.time_up
        flag = torch.tensor([1.0 if requested else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

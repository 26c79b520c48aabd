"""The trainer: the paper's recipe, safe checkpoints, exact resume and DistributedDataParallel.

Run it as ``python -m core train`` / ``realnvp train``, or under
``torchrun --nproc_per_node N -m core train`` for several processes (NCCL on CUDA, gloo on
the CPU). Rank 0 alone writes files and events.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from core.config import TrainConfig
from core.files.checkpoint import estimate_checkpoint_bytes, save_checkpoint
from core.files.images import save_png
from core.flow.model import FlowConfig, RealNVP, dequantize, preset
from core.runs.disk import low_space_warning
from core.runs.events import EventSink
from core.runs.folder import (
    EVENTS_FILE,
    RunFolderError,
    RunLock,
    claim_run_folder,
    same_file,
)
from core.runs.slurm import SlurmJob
from core.runs.stopping import STOP_FILE, StopSignals
from core.training.averaging import WeightAverage
from core.training.checkpoints import (
    RunProgress,
    RunRecord,
    finished_run_refusal,
    initial_weights,
    restore_plan,
    resume_from,
    saving,
)
from core.training.data import ImageDataset, load_run_data, resident
from core.training.datasets import DatasetError, dataset_geometry, describe_skipped
from core.training.device import describe
from core.training.distributed import close_distributed, init_distributed
from core.training.errors import SaveFailedError, TrainingError
from core.training.evaluation import AVERAGE_BN_BATCH, SAMPLE_TEMPERATURES, RunEvaluation
from core.training.precision import PrecisionChoice, choose_precision, conv_probe_ms
from core.training.schedule import StepPlan, lr_factor
from core.training.step import (
    TrainStep,
    make_adam,
    measure_step_ms,
    step_autocast,
    to_channels_last,
    use_channels_last,
)
from core.training.stop_rules import StopRules, with_job_time_limit
from core.training.tensorboard import tensorboard_log

# Importable from here as before: the CLI and the tests name them through the trainer.
__all__ = [
    "AVERAGE_BN_BATCH",
    "SaveFailedError",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "build_model_config",
]


# -- the run --------------------------------------------------------------------------------


def build_model_config(
    dataset: str,
    preset_name: str | None,
    num_scales: int | None,
    mid_channels: int | None,
    num_blocks: int | None,
    channels: int | None = None,
    image_size: int | None = None,
    alpha: float | None = None,
) -> FlowConfig:
    """A FlowConfig for the data set's geometry, from a preset and/or explicit sizes."""
    ch, size = dataset_geometry(dataset, channels, image_size)
    base = preset(preset_name) if preset_name else preset("mnist-small")
    overrides = {
        k: v
        for k, v in (
            ("num_scales", num_scales),
            ("mid_channels", mid_channels),
            ("num_blocks", num_blocks),
            ("alpha", alpha),
        )
        if v is not None
    }
    return replace(base, in_channels=ch, image_size=size, **overrides)


class Trainer:
    """One training run. ``run()`` returns the final metrics; events go to ``sink``.

    It runs the loop and writes the events, and composes the rest: :class:`RunEvaluation`
    (the evaluated weights, test bits/dim, sample grids, class statistics),
    :class:`RunRecord` and :class:`RunProgress` (what a checkpoint holds; resuming from one,
    see :mod:`core.training.checkpoints`) and :class:`StopRules` (``--time-limit``, stop
    requests, Slurm's requeue)."""

    def __init__(
        self,
        model_config: FlowConfig | None,
        config: TrainConfig,
        sink: EventSink | None = None,
        resume: str | os.PathLike | None = None,
        overwrite: bool = False,
        keep_length: bool = False,
    ) -> None:
        """``resume``: a checkpoint with training state to continue; ``keep_length``: then
        train to the resumed run's own end (its ``max_steps`` / ``epochs``), not to
        ``config``'s. ``overwrite``: a fresh run may start in a folder holding an earlier one,
        which is moved aside (:func:`core.runs.folder.claim_run_folder`)."""
        self.dist, self.device = init_distributed(config.device)
        self.overwrite = overwrite
        self.resume_path = Path(resume) if resume is not None else None
        self.lock: RunLock | None = None
        self.last_good: tuple[Path, int] | None = None  # the newest checkpoint saved, its step
        self.sink = sink or EventSink("none")
        if not self.dist.is_main:
            self.sink = EventSink("none")
        self.resume_state: dict[str, Any] | None = None
        if resume is not None:
            self.model, self.resume_state, config = resume_from(resume, config, keep_length)
            self.last_good = (Path(resume), int(self.resume_state.get("step", 0)))
        else:
            if model_config is None and config.init_from is None:
                raise ValueError("a model config is needed unless resuming")
            torch.manual_seed(config.seed)
            if config.init_from is not None:
                self.model, self.init_meta = initial_weights(config.init_from, model_config)
            else:
                self.model = RealNVP(model_config)
        self.config = config
        self.out = Path(config.out)
        self.model.to(self.device)
        self.cuda = self.device.type == "cuda"
        self.precision: PrecisionChoice | None = None  # chosen when the run starts
        self.channels_last = False
        self.model.train()
        self.evaluation = RunEvaluation(self.model, config, self.device, self.sink)
        self.plan: StepPlan | None = None
        self.stops: StopRules | None = None  # made when the run starts

    init_meta: dict[str, Any] | None = None
    _step_now: int | None = None  # the last step taken, None before the first

    @property
    def average(self) -> WeightAverage | None:
        """The averaged weights, where ``--ema``."""
        return self.evaluation.average

    # -- pieces of a step -------------------------------------------------------------------

    def _autocast(self):
        return step_autocast(self.device, self.precision.precision if self.precision else None)

    def _choose_precision(self) -> PrecisionChoice:
        """``--precision``, or for ``auto`` a short measurement (see
        :mod:`core.training.precision`) on a copy of the model, so the run itself is untouched. In a
        distributed run rank 0 measures and every rank takes its choice."""
        c, mc = self.config, self.model.config
        if not self.dist.is_main and c.precision == "auto" and self.device.type == "cpu":
            choice = None
        else:
            choice = choose_precision(
                c.precision,
                self.device,
                probe=lambda: conv_probe_ms(mc.mid_channels, mc.image_size // 2, c.batch_size),
                measure=lambda: measure_step_ms(self.model, c.batch_size, self.device, c),
            )
        if self.dist.enabled:
            flag = torch.tensor([choice is not None and choice.precision == "bf16"])
            dist.broadcast(flag.to(self.device), 0)
            if choice is None:
                bf16 = bool(flag.item())
                name = "bf16" if bf16 else "float32"
                choice = PrecisionChoice(name, f"{name} (rank 0's choice)", c.precision)
        return choice

    def _batch(
        self, images: torch.Tensor, perm: torch.Tensor, pos: int, noise: torch.Generator
    ) -> torch.Tensor:
        b, w = self.config.batch_size, self.dist.world
        start = pos * b * w + self.dist.rank * b
        idx = perm[start : start + b]
        x = images[idx.to(images.device)]
        x = x.to(self.device, non_blocking=True)
        x = dequantize(x, noise)
        if self.config.flip:
            flip = torch.rand(x.shape[0], generator=noise, device=noise.device) < 0.5
            x = torch.where(flip.to(self.device).view(-1, 1, 1, 1), x.flip(3), x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _epoch_permutation(self, epoch: int, n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=g)

    # -- evaluation (see RunEvaluation) ---------------------------------------------------------

    def evaluate(self, test: ImageDataset) -> float:
        """Mean test bits/dim in eval mode and float32 (see :meth:`evaluate_per_image`)."""
        per_image = self.evaluate_per_image(test)
        return per_image.sum().item() / max(len(per_image), 1)

    def evaluate_per_image(self, test: ImageDataset) -> torch.Tensor:
        """Bits/dim of each evaluated test image (see :meth:`RunEvaluation.per_image`)."""
        return self.evaluation.per_image(test, self._step_now)

    def evaluated_model(self, step: int | None = None) -> nn.Module:
        """The weights evaluated, sampled and saved (see :meth:`RunEvaluation.evaluated_model`)."""
        return self.evaluation.evaluated_model(step)

    def compute_class_stats(self, train: ImageDataset) -> None:
        """Per-class latent statistics for the checkpoints saved from now on (labelled data)."""
        self.evaluation.compute_class_stats(train, self._step_now)

    def write_samples(self, step: int) -> Path:
        """A PNG with two grids side by side: temperature 0.7 (left) and 1.0 (right)."""
        grid = self.evaluation.sample_grid(step)
        path = self.out / "samples" / f"samples_{step:07d}.png"
        return self._saving(f"samples/{path.name}", lambda: save_png(grid, path))

    def _saving(self, what: str, write) -> Path:
        """``write()``, a failure told as :class:`SaveFailedError` (see
        :func:`core.training.checkpoints.saving`)."""
        return saving(what, self.out, self.last_good, write)

    # -- checkpoints ------------------------------------------------------------------------

    def _save(self, name: str, step: int, epoch: int, progress: RunProgress) -> Path:
        record = RunRecord(
            self.out,
            self.config,
            self.model.config,
            self.device,
            self.dist.world,
            self.precision.precision if self.precision else None,
            self.init_meta,
        )
        average, class_stats = self.average, self.evaluation.class_stats
        meta = record.meta(step, epoch, progress.figures, self._step_now, average, class_stats)
        training = record.training(step, progress, self.plan, average, self.model)
        saved_model = self.model if average is None else self.evaluated_model(step)
        path = self._saving(
            name, lambda: save_checkpoint(self.out / name, saved_model, meta, training)
        )
        if name == "latest.pt" or self.last_good is None:
            self.last_good = (path, step)
        self.sink.emit("checkpoint", path=str(path), step=step, kind=name.removesuffix(".pt"))
        return path

    # -- the loop ---------------------------------------------------------------------------

    @property
    def stop_file(self) -> Path:
        """``OUT/STOP``: creating it stops the run as SIGTERM does (save, ``done``), on every
        platform and under ``torchrun``, where every rank then ends with status 0. A stale
        one is removed when the run starts and after it has stopped the run."""
        return self.out / STOP_FILE

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()  # --time-limit counts from here
        slurm = SlurmJob.from_environ()
        self.config = with_job_time_limit(self.config, slurm)
        self.stops = StopRules(
            self.config, self.dist, self.device, self.sink, self.stop_file, slurm, started
        )
        try:
            if self.dist.is_main:
                self._claim_folder()
                self.stop_file.unlink(missing_ok=True)
            with StopSignals() as stop:
                return self._run(stop)
        except RunFolderError as exc:
            # A launcher that sends stdout into this folder's events.jsonl must not have the
            # refusal written into the events of the run that holds the folder.
            if not same_file(sys.stdout, self.out / EVENTS_FILE):
                self.sink.emit("error", message=str(exc))
            raise
        except (DatasetError, TrainingError, ValueError, OSError) as exc:
            self.sink.emit("error", message=str(exc))
            raise
        finally:
            if self.lock is not None:
                self.lock.release()
            self.sink.record_to(None)
            if self.dist.enabled:
                close_distributed()

    def _claim_folder(self) -> None:
        """Take the output folder for this run (see :mod:`core.runs.folder`): a run
        resumed from a checkpoint in the folder continues it there; otherwise the folder must
        hold no earlier run, unless ``overwrite``. Events also go to ``OUT/events.jsonl``
        unless stdout already is that file (the training page, ``>> OUT/events.jsonl``), so
        every run folder can be reopened and its state read."""
        resume_here = self.resume_path is not None and (
            self.resume_path.resolve().parent == self.out.resolve()
        )
        self.lock = claim_run_folder(self.out, resume=resume_here, overwrite=self.overwrite)
        events = self.out / EVENTS_FILE
        if not same_file(sys.stdout, events):
            self.sink.record_to(events)
        board = tensorboard_log(self.out)  # None without the tensorboard package
        if board is not None:
            self.sink.listen(board)

    def _run(self, stop: StopSignals) -> dict[str, Any]:
        c = self.config
        model = self.model
        train, test = load_run_data(c, model.config, self.dist.world, self.dist.is_main)
        self._refuse_finished_run(len(train))
        images = resident(train.images, self.device)
        self.evaluation.train_images = images
        self.precision = self._choose_precision()
        self.channels_last = use_channels_last(self.device, self.precision.precision)
        self.evaluation.channels_last = self.channels_last
        if self.channels_last:
            to_channels_last(model)
        steps_per_epoch, total_steps = self._length(len(train))
        if c.ema > 0 and self.dist.is_main:
            self.evaluation.average = WeightAverage(model, c.ema)

        optimizer, fused = make_adam(model.parameters(), c.lr)
        warmup = max(c.warmup_steps, 0)
        self.plan = StepPlan(total=total_steps, planned=total_steps, warmup=warmup)
        if self.resume_state is not None:
            restore_plan(self.plan, self.resume_state)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, c.lr_schedule, warmup, self.plan)
        )
        noise = torch.Generator(device=self.device if self.cuda else "cpu")
        noise.manual_seed(c.seed * 7919 + self.dist.rank)
        progress = RunProgress(optimizer, fused, scheduler, noise)
        state = progress.figures
        step = 0
        if self.resume_state is not None:
            step = progress.restore(self.resume_state, self.dist.enabled, self.average)

        net: nn.Module = model
        if self.dist.enabled:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.cuda else None
            )
        eager_net = None
        if c.compile:
            try:
                net, eager_net = torch.compile(net), net
            except Exception as exc:  # a missing compiler must not stop training
                print(
                    f"warning: torch.compile unavailable ({exc}); running eagerly", file=sys.stderr
                )
        train_step = TrainStep(
            model,
            net,
            optimizer,
            fused,
            c.weight_norm_l2,
            c.grad_clip,
            self._autocast,
            eager_net,
            cuda_graph=c.cuda_graph and self.cuda and not self.dist.enabled,
        )

        self.sink.emit(
            "start",
            step=step,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            parameters=sum(p.numel() for p in model.parameters()),
            device=describe(self.device),
            precision=self.precision.precision,
            precision_reason=self.precision.reason,
            world_size=self.dist.world,
            threads=torch.get_num_threads(),  # CPU threads (--threads), for a reopened run
            out=str(self.out),
            model_config=model.config.to_dict(),
            train_config=c.to_dict(),
            train_images=len(train),
            test_images=len(test) if test is not None else None,
            skipped_files=train.skipped,
            resumed=self.resume_state is not None,
            lr_schedule=c.lr_schedule,
            ema=c.ema,
            init_from=self.init_meta,
            time_limit_s=c.time_limit,
            planned_steps=self.plan.planned,
        )
        for warning in self.lock.warnings if self.lock is not None else ():
            self.sink.emit("warning", message=warning)
        # Tiny folders use every file on both sides: each skipped file named once.
        skipped = list(dict.fromkeys((*train.skipped_names, *(test.skipped_names if test else ()))))
        if skipped:
            self.sink.emit("warning", message=f"{c.data_dir}: {describe_skipped(skipped)}")
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._warn_if_disk_is_short(train, test)

        # The host looks at the device's counters only to log, before a checkpoint, and every
        # ``check_every`` steps for divergence; in a run of bad steps, every step.
        check_every = max(1, min(c.log_every, c.max_nonfinite))
        nonfinite_before = state["nonfinite_total"]
        bad_run = 0
        perm_epoch, perm = -1, None
        window_start, window_images = time.perf_counter(), 0
        run_start = time.perf_counter()
        wall_before = state["wall_time_s"]
        epoch = step // max(steps_per_epoch, 1)
        reason = "finished"
        loop_start, loop_step = time.perf_counter(), step

        while step < self.plan.planned:
            epoch, pos = divmod(step, steps_per_epoch)
            if epoch != perm_epoch:
                # Where the data lives, so picking a batch copies nothing from the host.
                perm = self._epoch_permutation(epoch, len(train)).to(images.device)
                perm_epoch = epoch
            x = self._batch(images, perm, pos, noise)
            train_step(x)
            if self.average is not None:
                self.average.update(model)
            scheduler.step()
            step += 1
            self._step_now = step
            window_images += x.shape[0] * self.dist.world

            if c.time_limit is not None and step % check_every == 0:
                self.stops.fit_plan(
                    self.plan, step, loop_step, loop_start, len(train), len(test or ())
                )
            log = step % c.log_every == 0 or step == self.plan.planned
            due = step % c.eval_every == 0 and step < self.plan.planned
            if log or due or bad_run or step % check_every == 0:
                counts = train_step.read(reset_window=log)
                state["nonfinite_total"] = nonfinite_before + counts["nonfinite"]
                bad_run = counts["bad_run"]
                if bad_run >= c.max_nonfinite:
                    raise TrainingError(
                        f"training diverged: {bad_run} non-finite losses in a row at "
                        f"step {step}; the last good checkpoint in {self.out} is intact "
                        "(try a lower --lr)"
                    )
            if log:
                now = time.perf_counter()
                rate = window_images / max(now - window_start, 1e-9)
                record = {
                    "step": step,
                    "epoch": epoch,
                    "loss": counts["loss"],
                    "images_per_s": rate,
                }
                state["history"]["steps"].append(record)
                self.sink.emit(
                    "step",
                    **record,
                    lr=scheduler.get_last_lr()[0],
                    total_steps=self.plan.planned,
                    nonfinite=state["nonfinite_total"],
                )
                window_start, window_images = now, 0

            if self.stops.should_stop(stop, step % check_every == 0):
                reason = "time_limit" if self.stops.time_up else self.stops.stop_reason(stop)
                break
            # No checkpoint in the middle of a run of non-finite losses: the last good one
            # stays the newest on disk.
            if self.dist.is_main and due and bad_run == 0:
                state["wall_time_s"] = wall_before + time.perf_counter() - run_start
                self._evaluate_and_save(test, step, epoch, progress)

        if reason == "finished" and self.plan.planned < total_steps:
            reason = "time_limit"  # the plan was cut to fit the limit, and it was reached
        state["nonfinite_total"] = nonfinite_before + train_step.read(False)["nonfinite"]
        state["wall_time_s"] = wall_before + time.perf_counter() - run_start
        if self.dist.enabled:
            # DDP copies rank 0's buffers into every rank before each forward, so rank 0's
            # batch-norm statistics are the run's; make every rank end with them.
            for b in model.buffers():
                dist.broadcast(b, 0)
        if self.dist.is_main:
            if reason in ("finished", "time_limit"):
                self._evaluate_and_save(test, step, epoch, progress, last=True, final_train=train)
            else:
                self._save("latest.pt", step, epoch, progress)
                self.stop_file.unlink(missing_ok=True)
        if self.dist.enabled:
            # No rank leaves (and tears its process group down) while rank 0 still writes the
            # last checkpoint: the ranks end together, and torchrun's exit means it is saved.
            dist.barrier()
        if reason == "requeue":
            if self.stops.requeue(step, self.out / "latest.pt"):
                return {"step": step, "reason": reason, "test_bpd": state["last_test_bpd"],
                        "best_test_bpd": state["best_test_bpd"]}  # fmt: skip
            reason = "stopped"
        self.sink.emit(
            "done",
            step=step,
            reason=reason,
            test_bpd=state["last_test_bpd"],
            best_test_bpd=state["best_test_bpd"],
            checkpoint=str(self.out / "latest.pt"),
            nonfinite=state["nonfinite_total"],
            wall_time_s=state["wall_time_s"],
        )
        return {
            "step": step,
            "reason": reason,
            "test_bpd": state["last_test_bpd"],
            "best_test_bpd": state["best_test_bpd"],
        }

    def _length(self, train_images: int) -> tuple[int, int]:
        """Steps per epoch and the run's length in steps (``--max-steps`` or ``--epochs``)."""
        c = self.config
        steps_per_epoch = train_images // (c.batch_size * self.dist.world)
        total = c.max_steps if c.max_steps is not None else c.epochs * steps_per_epoch
        return steps_per_epoch, total

    def _refuse_finished_run(self, train_images: int) -> None:
        """A resumed run with nothing left to do says so and how to go on (see
        :func:`core.training.checkpoints.finished_run_refusal`), instead of saving,
        measuring and appending another start and done to its events. Nothing is written:
        the run's events still end with its own ``done``."""
        if self.resume_state is None:
            return
        refusal = finished_run_refusal(
            self.resume_state, self.resume_path, self._length(train_images)[1]
        )
        if refusal is not None:
            self.sink.record_to(None)
            raise RunFolderError(refusal)

    def _warn_if_disk_is_short(self, train: ImageDataset, test: ImageDataset | None) -> None:
        """A ``warning`` event when the output folder's disk has room for fewer than three
        checkpoints (see :mod:`core.runs.disk`), before the first step."""
        dims = self.model.config.num_dims
        extra = 16 * len(self.evaluation.images(test)) if test is not None else 0  # typicality
        if train.labels is not None:  # class statistics: a mean and a deviation per dim
            extra += 16 * dims * max(len(train.class_names), 1)
        need = estimate_checkpoint_bytes(
            self.model, training=True, extra_bytes=extra, averaged=self.config.ema > 0
        )
        warning = low_space_warning(self.out, need)
        if warning is not None:
            self.sink.emit("warning", message=warning)

    def _evaluate_and_save(
        self,
        test: ImageDataset,
        step: int,
        epoch: int,
        progress: RunProgress,
        last: bool = False,
        final_train: ImageDataset | None = None,
    ) -> None:
        """``last``: the run's last evaluation (typicality statistics); ``final_train``: the
        training set then, whose class statistics (labelled data) go into the checkpoints
        saved now."""
        state = progress.figures
        started = time.perf_counter()
        per_image = self.evaluate_per_image(test)
        test_bpd = per_image.sum().item() / max(len(per_image), 1)
        self.stops.last_eval_s = time.perf_counter() - started
        if last:
            state["typicality"] = self.evaluation.typicality(test, per_image)
        state["last_test_bpd"] = test_bpd
        state["history"]["evals"].append({"step": step, "test_bpd": test_bpd})
        self.sink.emit("eval", step=step, epoch=epoch, test_bpd=test_bpd)
        path = self.write_samples(step)
        self.sink.emit("samples", step=step, path=str(path), temperatures=list(SAMPLE_TEMPERATURES))
        if final_train is not None and final_train.labels is not None:
            self.compute_class_stats(final_train)
        improved = state["best_test_bpd"] is None or test_bpd < state["best_test_bpd"]
        if improved and math.isfinite(test_bpd):
            state["best_test_bpd"] = test_bpd
        self._save("latest.pt", step, epoch, progress)
        if improved:
            self._save("best.pt", step, epoch, progress)

"""The trainer: the paper's recipe, safe checkpoints, exact resume and DistributedDataParallel.

Run it as ``python -m core train`` / ``realnvp train``, or under
``torchrun --nproc_per_node N -m core train`` for several processes (NCCL on CUDA, gloo on
the CPU). Rank 0 alone writes files and events.
"""

from __future__ import annotations

import copy
import errno
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from core.config import RESUME_OPTIONS, TrainConfig
from core.files.checkpoint import (
    CheckpointError,
    estimate_checkpoint_bytes,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from core.files.images import make_grid, save_png, to_uint8
from core.flow.model import (
    FlowConfig,
    RealNVP,
    dequantize,
    per_image_bits_per_dim,
    preset,
)
from core.runs.disk import low_space_warning, save_failure_sentence
from core.runs.events import EventSink
from core.runs.folder import (
    EVENTS_FILE,
    RunFolderError,
    RunLock,
    claim_run_folder,
    same_file,
)
from core.runs.slurm import SlurmJob
from core.runs.stopping import REQUEUE_SIGNALS, STOP_FILE, StopSignals
from core.stats.class_stats import META_KEY, ClassStatsError
from core.stats.measure import compute_class_stats
from core.stats.typicality import MIN_REFERENCE_IMAGES, TypicalityReference
from core.training.averaging import WeightAverage, averaged_copy
from core.training.data import ImageDataset, load_dataset
from core.training.datasets import DatasetError, dataset_geometry, describe_skipped
from core.training.device import cpu_model, describe
from core.training.distributed import close_distributed, init_distributed
from core.training.precision import PrecisionChoice, choose_precision, conv_probe_ms
from core.training.schedule import StepPlan, lr_factor
from core.training.step import (
    TrainStep,
    fix_loaded_adam,
    make_adam,
    measure_step_ms,
    step_autocast,
    to_channels_last,
    use_channels_last,
)
from core.training.tensorboard import tensorboard_log

# Images per batch when the averaged weights' batch norm is measured (larger than a
# training batch: fewer passes, and the batch statistics of 256 images differ from those of
# 64 by less than their spread between batches).
AVERAGE_BN_BATCH = 256


class TrainingError(RuntimeError):
    """A run that cannot go on; the message is meant for the user. ``exit_status`` is the
    command line's (3: diverged)."""

    exit_status = 3


_NOT_RESUMABLE = (
    "{}: has no training state to resume from (an exported checkpoint, like the bundled "
    "model, keeps only the weights); resume a run's latest.pt, or start a new run"
)


class SaveFailedError(TrainingError):
    """A checkpoint or sample grid that could not be written (a full disk, a read-only or
    removed folder); the previous checkpoint is intact and the message says where."""

    exit_status = 4


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
    """One training run. ``run()`` returns the final metrics; events go to ``sink``."""

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
            data = read_checkpoint(resume)
            if not data.get("training"):
                raise CheckpointError(_NOT_RESUMABLE.format(resume))
            saved = TrainConfig.from_dict(data["training"]["train_config"])
            # Data, optimizer and seed come from the checkpoint; where and how long from now.
            taken = {name: getattr(config, name) for name in RESUME_OPTIONS}
            if keep_length:
                taken.update(epochs=saved.epochs, max_steps=saved.max_steps)
            config = replace(saved, out=config.out, **taken)
            self.model, _ = load_checkpoint(resume)
            self.resume_state = data["training"]
            if self.resume_state.get("raw_model") is not None:
                # The file's model holds the averaged weights; training goes on from the raw.
                self.model.load_state_dict(self.resume_state["raw_model"])
            self.last_good = (Path(resume), int(self.resume_state.get("step", 0)))
        else:
            if model_config is None and config.init_from is None:
                raise ValueError("a model config is needed unless resuming")
            torch.manual_seed(config.seed)
            if config.init_from is not None:
                self.model, self.init_meta = self._initial_weights(config.init_from, model_config)
            else:
                self.model = RealNVP(model_config)
        self.config = config
        self.out = Path(config.out)
        self.model.to(self.device)
        self.cuda = self.device.type == "cuda"
        self.precision: PrecisionChoice | None = None  # chosen when the run starts
        self.channels_last = False
        self.model.train()
        self.class_stats: dict[str, Any] | None = None  # meta["class_stats"] once computed
        self.average: WeightAverage | None = None  # the averaged weights, where --ema
        self._evaluated: tuple[int, nn.Module] | None = None  # (step, averaged copy)
        self._train_images: torch.Tensor | None = None  # for the average's batch norm
        self.plan: StepPlan | None = None

    init_meta: dict[str, Any] | None = None

    @staticmethod
    def _initial_weights(
        path: str, model_config: FlowConfig | None
    ) -> tuple[RealNVP, dict[str, Any]]:
        """``--init-from``: the checkpoint's model (its averaged weights, where it holds
        them) and what the run records of it. The architecture is the checkpoint's; an
        explicit other one is refused rather than silently ignored."""
        model, meta = load_checkpoint(path)
        if model_config is not None and model_config != model.config:
            raise TrainingError(
                f"--init-from {path}: its model is {model.config.to_dict()}, not the "
                f"{model_config.to_dict()} asked for; leave out --preset and the size "
                "options to take the checkpoint's"
            )
        record = {
            "path": str(path),
            "step": meta.get("step"),
            "images_seen": meta.get("images_seen"),
            "test_bpd": meta.get("best_test_bpd", meta.get("test_bpd")),
            "weights": meta.get("weights", "raw"),
            "lineage": list(meta.get("lineage", [])),
        }
        return model.train(), record

    # -- data -------------------------------------------------------------------------------

    def _load_data(self) -> tuple[ImageDataset, ImageDataset | None]:
        c = self.config
        mc = self.model.config
        kwargs = dict(channels=mc.in_channels, image_size=mc.image_size, download=c.download)
        train = load_dataset(c.dataset, c.data_dir, True, **kwargs)
        test = load_dataset(c.dataset, c.data_dir, False, **kwargs) if self.dist.is_main else None
        for ds in (train, test):
            if ds is not None and (ds.channels, ds.image_size) != (mc.in_channels, mc.image_size):
                raise DatasetError(
                    f"{c.dataset} images are {ds.channels}x{ds.image_size}x{ds.image_size}, "
                    f"the model expects {mc.in_channels}x{mc.image_size}x{mc.image_size}"
                )
        if len(train) < c.batch_size * self.dist.world:
            raise DatasetError(
                f"{len(train)} training images are fewer than one batch "
                f"({c.batch_size} x {self.dist.world} processes); lower --batch-size"
            )
        return train, test

    def _resident(self, images: torch.Tensor) -> torch.Tensor:
        """Small data sets live on the GPU as uint8; larger ones stay pinned on the host."""
        if self.cuda and images.numel() <= 2 * 1024**3:
            return images.to(self.device)
        if self.cuda:
            return images.pin_memory()
        return images

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

    @torch.no_grad()
    def evaluate(self, test: ImageDataset) -> float:
        """Mean test bits/dim in eval mode (see :func:`core.flow.model.mean_bits_per_dim`), in
        float32 also on CUDA: under bf16 autocast the same weights read about 0.005 bits/dim
        high (1.3970 against 1.3922 on MNIST), more than the gains late in a run."""
        per_image = self.evaluate_per_image(test)
        return per_image.sum().item() / max(len(per_image), 1)

    def evaluated_model(self, step: int | None = None) -> nn.Module:
        """The weights that are evaluated, sampled and saved as the checkpoint's model: a
        copy holding the averaged weights with batch-norm statistics measured for them on
        training batches (cached for ``step``), or, without an average, the model itself."""
        if self.average is None or self._train_images is None:
            return self.model
        if self._evaluated is not None and step is not None and self._evaluated[0] == step:
            return self._evaluated[1]
        model = averaged_copy(self.model, self.average, self._bn_batches(step or 0))
        self._evaluated = (step, model) if step is not None else None
        return model

    def _bn_batches(self, step: int):
        """Dequantized training batches for the averaged weights' batch norm, drawn with a
        generator of their own (the run's noise and RNG stay as they were, so a resumed run
        replays the same steps)."""
        images = self._train_images
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        n = min(self.config.ema_bn_images, len(images))
        idx = torch.randperm(len(images), generator=g)[:n]
        b = min(AVERAGE_BN_BATCH, n)
        for start in range(0, n - b + 1, b):
            x = images[idx[start : start + b].to(images.device)].to(self.device)
            yield dequantize(x, g)

    @torch.no_grad()
    def evaluate_per_image(self, test: ImageDataset) -> torch.Tensor:
        """Bits/dim of each evaluated test image (float64, CPU), as :meth:`evaluate`.

        In the default memory format also where steps run channels_last (on the CPU the
        float32 sums differ in the 8th digit between the two), so that ``realnvp eval`` of
        the saved checkpoint reproduces the recorded figure exactly."""
        if self.average is not None and self._train_images is not None:
            model = self.evaluated_model(self._step_now)
            return per_image_bits_per_dim(model.eval(), self._eval_images(test), self.device)
        if self.channels_last and not self.cuda:
            model = copy.deepcopy(self.model).to(memory_format=torch.contiguous_format)
            return per_image_bits_per_dim(model.eval(), self._eval_images(test), self.device)
        self.model.eval()
        try:
            return per_image_bits_per_dim(self.model, self._eval_images(test), self.device)
        finally:
            self.model.train()

    def _eval_images(self, test: ImageDataset) -> torch.Tensor:
        return test.images[: self.config.eval_limit] if self.config.eval_limit else test.images

    def compute_class_stats(self, train: ImageDataset) -> None:
        """Per-class latent statistics of the training set (see :mod:`core.stats.class_stats`),
        kept for the checkpoints saved from now on; unlabelled data is left without."""
        try:
            stats = compute_class_stats(
                self.evaluated_model(self._step_now),
                train,
                self.config.class_stats_per_class or None,
                device=self.device,
                progress=self._progress("class statistics"),
            )
        except ClassStatsError:
            return
        self.class_stats = stats.to_meta()

    def _progress(self, task: str) -> Callable[[int, int], None]:
        """``progress(done, total)`` as ``progress`` events: work outside the steps that
        takes a while (the class statistics after the last step, about 25 s on 2 cores)
        is shown, not a silence."""

        def progress(done: int, total: int) -> None:
            self.sink.emit("progress", task=task, done=done, total=total)

        return progress

    @torch.no_grad()
    def write_samples(self, step: int) -> Path:
        """A PNG with two grids side by side: temperature 0.7 (left) and 1.0 (right)."""
        model = self.evaluated_model(step)
        model.eval()
        grids = []
        for t in (0.7, 1.0):
            g = torch.Generator().manual_seed(4321)
            x = model.sample(self.config.num_samples, temperature=t, generator=g)
            grids.append(make_grid(to_uint8(x.float().cpu().numpy())))
        if model is self.model:
            model.train()
        gap = np.full((grids[0].shape[0], 8, grids[0].shape[2]), 255, dtype=np.uint8)
        grid = np.concatenate([grids[0], gap, grids[1]], axis=1)
        path = self.out / "samples" / f"samples_{step:07d}.png"
        return self._saving(f"samples/{path.name}", lambda: save_png(grid, path))

    def _saving(self, what: str, write: Callable[[], Path]) -> Path:
        """``write()``, with a failure (a full disk, a read-only folder, the folder removed
        under the run) turned into one sentence: :class:`SaveFailedError`. A removed folder
        is not silently made again: the run's other files went with it."""
        try:
            if not self.out.is_dir():
                raise FileNotFoundError(errno.ENOENT, "the output folder is gone", str(self.out))
            return write()
        except OSError as exc:
            sentence = save_failure_sentence(what, self.out, exc, self.last_good)
            raise SaveFailedError(sentence) from None

    # -- checkpoints ------------------------------------------------------------------------

    def _save(self, name: str, step: int, epoch: int, optimizer, scheduler, noise, state) -> Path:
        meta = {
            "dataset": self.config.dataset,
            # Where the data came from, so `realnvp eval` finds the test set without help.
            "data_dir": os.path.abspath(self.config.data_dir),
            "step": step,
            "epoch": epoch,
            "test_bpd": state["last_test_bpd"],
            "best_test_bpd": state["best_test_bpd"],
            "images_seen": step * self.config.batch_size * self.dist.world,
            "wall_time_s": state["wall_time_s"],
            "device": describe(self.device),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "weights": self._weights_description(),
            "lineage": self._lineage(state),
        }
        if self.init_meta is not None:
            meta["init_from"] = {k: v for k, v in self.init_meta.items() if k != "lineage"}
        if state.get("typicality") is not None:
            meta["typicality"] = state["typicality"]
        if self.class_stats is not None:
            meta[META_KEY] = self.class_stats
        training = {
            "train_config": self.config.to_dict(),
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "noise_rng": noise.get_state(),
            "torch_rng": torch.get_rng_state(),
            "nonfinite_total": state["nonfinite_total"],
            "history": state["history"],
            "best_test_bpd": state["best_test_bpd"],
            "last_test_bpd": state["last_test_bpd"],
            "wall_time_s": state["wall_time_s"],
            "total_steps": self.plan.total if self.plan else None,
            "planned_steps": self.plan.planned if self.plan else None,
            "plan": self.plan.state_dict() if self.plan else None,
        }
        saved_model = self.model
        if self.average is not None:
            training["ema"] = self.average.state_dict()
            training["raw_model"] = {
                k: v.detach().cpu() for k, v in self.model.state_dict().items()
            }
            saved_model = self.evaluated_model(step)
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
        self._started = time.perf_counter()  # --time-limit counts from here
        self.slurm = SlurmJob.from_environ()
        no_requeue_left = self.slurm and self.slurm.restarts >= self.config.max_requeues
        if no_requeue_left and self.config.time_limit is None:
            # Plan the schedule to the job's end (a typed --time-limit wins).
            self.config = replace(self.config, time_limit=self.slurm.time_limit())
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
        train, test = self._load_data()
        self._refuse_finished_run(len(train))
        images = self._resident(train.images)
        self._train_images = images
        self.precision = self._choose_precision()
        self.channels_last = use_channels_last(self.device, self.precision.precision)
        if self.channels_last:
            to_channels_last(model)
        steps_per_epoch = len(train) // (c.batch_size * self.dist.world)
        total_steps = c.max_steps if c.max_steps is not None else c.epochs * steps_per_epoch
        if c.ema > 0 and self.dist.is_main:
            self.average = WeightAverage(model, c.ema)

        optimizer, fused = make_adam(model.parameters(), c.lr)
        warmup = max(c.warmup_steps, 0)
        self.plan = StepPlan(total=total_steps, planned=total_steps, warmup=warmup)
        if self.resume_state is not None:
            self.plan.planned = self._resumed_plan(total_steps)
            saved = self.resume_state.get("plan") or {}
            if saved.get("anchor_step") is not None and self.plan.planned == saved["planned"]:
                self.plan.anchor_step = int(saved["anchor_step"])
                self.plan.anchor_progress = float(saved["anchor_progress"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, c.lr_schedule, warmup, self.plan)
        )
        noise = torch.Generator(device=self.device if self.cuda else "cpu")
        noise.manual_seed(c.seed * 7919 + self.dist.rank)
        state = {
            "history": {"steps": [], "evals": []},
            "best_test_bpd": None,
            "last_test_bpd": None,
            "nonfinite_total": 0,
            "wall_time_s": 0.0,
        }
        step = 0
        if self.resume_state is not None:
            rs = self.resume_state
            optimizer.load_state_dict(rs["optimizer"])
            fix_loaded_adam(optimizer, fused)
            scheduler.load_state_dict(rs["scheduler"])
            if not self.dist.enabled:
                noise.set_state(rs["noise_rng"].to(noise.get_state().device))
            torch.set_rng_state(rs["torch_rng"])
            step = int(rs["step"])
            if self.average is not None and rs.get("ema") is not None:
                self.average.load_state_dict(rs["ema"])
            for key in (
                "history",
                "best_test_bpd",
                "last_test_bpd",
                "nonfinite_total",
                "wall_time_s",
            ):
                state[key] = rs.get(key, state[key])

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
                self._fit_plan(step, loop_step, loop_start, len(train), len(test or ()))
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

            if self._should_stop(stop, step % check_every == 0):
                reason = "time_limit" if self._time_up else self._stop_reason(stop)
                break
            # No checkpoint in the middle of a run of non-finite losses: the last good one
            # stays the newest on disk.
            if self.dist.is_main and due and bad_run == 0:
                state["wall_time_s"] = wall_before + time.perf_counter() - run_start
                self._evaluate_and_save(test, step, epoch, optimizer, scheduler, noise, state)

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
                self._evaluate_and_save(
                    test,
                    step,
                    epoch,
                    optimizer,
                    scheduler,
                    noise,
                    state,
                    last=True,
                    final_train=train,
                )
            else:
                self._save("latest.pt", step, epoch, optimizer, scheduler, noise, state)
                self.stop_file.unlink(missing_ok=True)
        if self.dist.enabled:
            # No rank leaves (and tears its process group down) while rank 0 still writes the
            # last checkpoint: the ranks end together, and torchrun's exit means it is saved.
            dist.barrier()
        if reason == "requeue":
            if self._requeue(step):
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

    def _refuse_finished_run(self, train_images: int) -> None:
        """A resumed run with nothing left to do (a finished run resumed without a new
        length, or with a length it has passed) says so and how to go on, instead of saving,
        measuring and appending another start and done to its events. Nothing is written:
        the run's events still end with its own ``done``."""
        if self.resume_state is None:
            return
        c = self.config
        step = int(self.resume_state.get("step", 0))
        steps_per_epoch = train_images // (c.batch_size * self.dist.world)
        total = c.max_steps if c.max_steps is not None else c.epochs * steps_per_epoch
        evals = (self.resume_state.get("history") or {}).get("evals") or [{}]
        planned = self._resumed_plan(total)  # a --time-limit may have ended it sooner
        # A run stopped at its last step has its final evaluation still to make.
        if step < planned or evals[-1].get("step") != step:
            return
        if planned < total:
            where = f"the run ended at step {step}, where its --time-limit planned it to"
        elif step == total:
            where = f"the run is finished (step {step} of {total})"
        else:
            where = f"the run is at step {step}, past the {total} steps asked for"
        self.sink.record_to(None)
        raise RunFolderError(
            f"{self.resume_path}: {where}; to train it further, start a new run from its "
            f"weights with --init-from {self.resume_path}, or resume it with a longer "
            f"--max-steps (above {step}) or more --epochs"
        )

    def _warn_if_disk_is_short(self, train: ImageDataset, test: ImageDataset | None) -> None:
        """A ``warning`` event when the output folder's disk has room for fewer than three
        checkpoints (see :mod:`core.runs.disk`), before the first step."""
        dims = self.model.config.num_dims
        extra = 16 * len(self._eval_images(test)) if test is not None else 0  # typicality
        if train.labels is not None:  # class statistics: a mean and a deviation per dim
            extra += 16 * dims * max(len(train.class_names), 1)
        need = estimate_checkpoint_bytes(
            self.model, training=True, extra_bytes=extra, averaged=self.config.ema > 0
        )
        warning = low_space_warning(self.out, need)
        if warning is not None:
            self.sink.emit("warning", message=warning)

    def _typicality(self, test: ImageDataset, per_image: torch.Tensor) -> dict[str, Any] | None:
        """The typicality reference of the last evaluation (see :mod:`core.stats.typicality`);
        ``None`` when it covered too few images to be one."""
        images = self._eval_images(test)
        if len(per_image) < MIN_REFERENCE_IMAGES or not torch.isfinite(per_image).all():
            return None
        note = f"float32, {len(per_image)} test images, last evaluation of training"
        return TypicalityReference.from_scores(
            self.config.dataset, per_image.numpy(), images.cpu().numpy(), note=note
        ).to_meta()

    def _weights_description(self) -> str:
        if self.average is None:
            return "raw: the optimized weights, batch-norm statistics from training"
        return (
            f"averaged: exponential moving average of the weights (decay {self.average.decay:g},"
            f" {self.average.updates} updates), batch-norm statistics measured for them on "
            f"{self.config.ema_bn_images} training images"
        )

    def _lineage(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        """Every run that led to these weights, oldest first: where it ran, what it started
        from, and its test bits/dim against the images it had seen (the model card's
        learning curve). Runs started with ``--init-from`` add theirs to the checkpoint's."""
        earlier = list(self.init_meta.get("lineage", [])) if self.init_meta else []
        offset = 0
        if self.init_meta is not None:
            offset = int(self.init_meta.get("images_seen") or 0)
            if earlier:
                offset = int(earlier[-1].get("images_end", offset))
        per_step = self.config.batch_size * self.dist.world
        this = {
            "out": str(self.out),
            "init_from": self.init_meta.get("path") if self.init_meta else None,
            "device": describe(self.device),
            "cpu": cpu_model(),
            "precision": self.precision.precision if self.precision else None,
            "train_config": self.config.to_dict(),
            "model_config": self.model.config.to_dict(),
            "wall_time_s": state["wall_time_s"],
            "images_start": offset,
            "images_end": offset + (self._step_now or 0) * per_step,
            "evals": [
                [offset + e["step"] * per_step, e["test_bpd"]] for e in state["history"]["evals"]
            ],
        }
        return [*earlier, this]

    # -- the time limit ---------------------------------------------------------------------

    _time_up = False
    _step_now: int | None = None
    _last_eval_s: float | None = None
    _reserve_s = 0.0

    def _stop_reason(self, stop: StopSignals) -> str:
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

    def _requeue(self, step: int) -> bool:
        """Ask Slurm to requeue the job, ``latest.pt`` saved; a ``requeue`` event says so
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
            checkpoint=str(self.out / "latest.pt"),
        )
        return True

    def _past_deadline(self) -> bool:
        c = self.config
        if c.time_limit is None:
            return False
        return time.perf_counter() - self._started >= c.time_limit - self._reserve_s

    def _fit_plan(self, step: int, loop_step: int, loop_start: float, n_train: int, n_test: int):
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
        tail_images = n_test if self._last_eval_s is None else 0
        tail_images += c.ema_bn_images + (
            min(n_train, 10 * c.class_stats_per_class) if c.class_stats_per_class else n_train
        )
        tail_s = tail_images / max(2 * images_per_s, 1e-9) + 1.3 * (self._last_eval_s or 0.0)
        self._reserve_s = tail_s + 0.02 * c.time_limit
        seconds_left = c.time_limit - (now - self._started) - self._reserve_s
        self.plan.replan(step, steps_per_s, seconds_left)
        if self.dist.enabled:
            planned = torch.tensor([self.plan.planned], device=self.device)
            dist.all_reduce(planned, op=dist.ReduceOp.MIN)
            self.plan.planned = int(planned.item())
        elif self._past_deadline():
            self._time_up = True

    def _resumed_plan(self, total_steps: int) -> int:
        """The planned length of a resumed run: the saved plan where a time limit had
        shortened it below the run's length, otherwise the length asked for now."""
        rs = self.resume_state or {}
        saved_plan, saved_total = rs.get("planned_steps"), rs.get("total_steps")
        if saved_plan is None or saved_total is None or saved_plan >= saved_total:
            return total_steps
        return min(int(saved_plan), total_steps)

    def _should_stop(self, stop: StopSignals, check_now: bool) -> bool:
        """A signal, the stop file, or a closed event stream (the reader of ``--progress
        json`` went away) ends the run with a checkpoint."""
        if not self.dist.enabled:
            return stop.requested or self.sink.closed or self.stop_file.exists() or self._time_up
        if not check_now:  # agreeing across ranks is a synchronisation; not every step
            return False
        self._time_up = self._time_up or self._past_deadline()
        requested = stop.requested or self.sink.closed or self.stop_file.exists() or self._time_up
        flag = torch.tensor([1.0 if requested else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def _evaluate_and_save(
        self,
        test,
        step,
        epoch,
        optimizer,
        scheduler,
        noise,
        state,
        last: bool = False,
        final_train=None,
    ) -> None:
        """``last``: the run's last evaluation (typicality statistics); ``final_train``: the
        training set then, whose class statistics (labelled data) go into the checkpoints
        saved now."""
        started = time.perf_counter()
        per_image = self.evaluate_per_image(test)
        test_bpd = per_image.sum().item() / max(len(per_image), 1)
        self._last_eval_s = time.perf_counter() - started
        if last:
            state["typicality"] = self._typicality(test, per_image)
        state["last_test_bpd"] = test_bpd
        state["history"]["evals"].append({"step": step, "test_bpd": test_bpd})
        self.sink.emit("eval", step=step, epoch=epoch, test_bpd=test_bpd)
        path = self.write_samples(step)
        self.sink.emit("samples", step=step, path=str(path), temperatures=[0.7, 1.0])
        if final_train is not None and final_train.labels is not None:
            self.compute_class_stats(final_train)
        improved = state["best_test_bpd"] is None or test_bpd < state["best_test_bpd"]
        if improved and math.isfinite(test_bpd):
            state["best_test_bpd"] = test_bpd
        self._save("latest.pt", step, epoch, optimizer, scheduler, noise, state)
        if improved:
            self._save("best.pt", step, epoch, optimizer, scheduler, noise, state)

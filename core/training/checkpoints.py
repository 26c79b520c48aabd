"""A run's checkpoints: what each one records of the run, how a failed save is told, and a
run started from one (``--resume`` continues its training state, ``--init-from`` takes its
weights)."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.config import RESUME_OPTIONS, TrainConfig
from core.files.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from core.flow.model import FlowConfig, RealNVP
from core.runs.disk import save_failure_sentence
from core.stats.class_stats import META_KEY
from core.training.averaging import WeightAverage
from core.training.device import cpu_model, describe
from core.training.errors import SaveFailedError, TrainingError
from core.training.schedule import StepPlan
from core.training.step import fix_loaded_adam

NOT_RESUMABLE = (
    "{}: has no training state to resume from (an exported checkpoint, like the bundled "
    "model, keeps only the weights); resume a run's latest.pt, or start a new run"
)

# What a resumed run restores from its checkpoint's training state, beside the optimizer.
_RESUMED_STATE = ("history", "best_test_bpd", "last_test_bpd", "nonfinite_total", "wall_time_s")


# -- starting from a checkpoint --------------------------------------------------------------


def resume_from(
    path: str | os.PathLike, config: TrainConfig, keep_length: bool
) -> tuple[RealNVP, dict[str, Any], TrainConfig]:
    """``--resume``: the model (its raw weights, where the file's model holds the averaged
    ones), the training state, and the run's config: data, optimizer and seed from the
    checkpoint; where and how long from ``config`` (with ``keep_length``, the length too
    comes from the checkpoint)."""
    data = read_checkpoint(path)
    if not data.get("training"):
        raise CheckpointError(NOT_RESUMABLE.format(path))
    saved = TrainConfig.from_dict(data["training"]["train_config"])
    taken = {name: getattr(config, name) for name in RESUME_OPTIONS}
    if keep_length:
        taken.update(epochs=saved.epochs, max_steps=saved.max_steps)
    config = replace(saved, out=config.out, **taken)
    model, _ = load_checkpoint(path)
    state = data["training"]
    if state.get("raw_model") is not None:
        # The file's model holds the averaged weights; training goes on from the raw.
        model.load_state_dict(state["raw_model"])
    return model, state, config


def initial_weights(path: str, model_config: FlowConfig | None) -> tuple[RealNVP, dict[str, Any]]:
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


def resumed_plan(resume_state: dict[str, Any] | None, total_steps: int) -> int:
    """The planned length of a resumed run: the saved plan where a time limit had
    shortened it below the run's length, otherwise the length asked for now."""
    rs = resume_state or {}
    saved_plan, saved_total = rs.get("planned_steps"), rs.get("total_steps")
    if saved_plan is None or saved_total is None or saved_plan >= saved_total:
        return total_steps
    return min(int(saved_plan), total_steps)


def restore_plan(plan: StepPlan, resume_state: dict[str, Any]) -> None:
    """A resumed run's plan: its planned length, and the saved re-plan's anchor where the
    plan is the saved one (so the learning rate goes on as it was)."""
    plan.planned = resumed_plan(resume_state, plan.total)
    saved = resume_state.get("plan") or {}
    if saved.get("anchor_step") is not None and plan.planned == saved["planned"]:
        plan.anchor_step = int(saved["anchor_step"])
        plan.anchor_progress = float(saved["anchor_progress"])


def finished_run_refusal(
    resume_state: dict[str, Any], resume_path: Path | None, total_steps: int
) -> str | None:
    """Why a resumed run has nothing left to do (a finished run resumed without a new
    length, or with a length it has passed), and how to go on; ``None`` when it has."""
    step = int(resume_state.get("step", 0))
    evals = (resume_state.get("history") or {}).get("evals") or [{}]
    planned = resumed_plan(resume_state, total_steps)  # a --time-limit may have ended it sooner
    # A run stopped at its last step has its final evaluation still to make.
    if step < planned or evals[-1].get("step") != step:
        return None
    if planned < total_steps:
        where = f"the run ended at step {step}, where its --time-limit planned it to"
    elif step == total_steps:
        where = f"the run is finished (step {step} of {total_steps})"
    else:
        where = f"the run is at step {step}, past the {total_steps} steps asked for"
    return (
        f"{resume_path}: {where}; to train it further, start a new run from its "
        f"weights with --init-from {resume_path}, or resume it with a longer "
        f"--max-steps (above {step}) or more --epochs"
    )


def _fresh_figures() -> dict[str, Any]:
    return {
        "history": {"steps": [], "evals": []},
        "best_test_bpd": None,
        "last_test_bpd": None,
        "nonfinite_total": 0,
        "wall_time_s": 0.0,
    }


@dataclass
class RunProgress:
    """The training state a checkpoint keeps for an exact resume, beside the weights: the
    optimizer (``fused``: Adam's fused kernel) and its schedule, the data noise, and the
    run's figures (``history``, best and last test bits/dim, non-finite losses, wall time,
    and the typicality reference of the last evaluation) as a plain dict."""

    optimizer: torch.optim.Optimizer
    fused: bool
    scheduler: Any
    noise: torch.Generator
    figures: dict[str, Any] = field(default_factory=_fresh_figures)

    def restore(
        self, resume_state: dict[str, Any], distributed: bool, average: WeightAverage | None
    ) -> int:
        """Put everything back as the checkpoint saved it (and the averaged weights, where
        ``average``); returns the step to go on from. The data noise is restored in a single
        process only (each rank draws its own)."""
        rs = resume_state
        self.optimizer.load_state_dict(rs["optimizer"])
        fix_loaded_adam(self.optimizer, self.fused)
        self.scheduler.load_state_dict(rs["scheduler"])
        if not distributed:
            self.noise.set_state(rs["noise_rng"].to(self.noise.get_state().device))
        torch.set_rng_state(rs["torch_rng"])
        if average is not None and rs.get("ema") is not None:
            average.load_state_dict(rs["ema"])
        for key in _RESUMED_STATE:
            self.figures[key] = rs.get(key, self.figures[key])
        return int(rs["step"])


# -- writing checkpoints ----------------------------------------------------------------------


def saving(
    what: str, out: Path, last_good: tuple[Path, int] | None, write: Callable[[], Path]
) -> Path:
    """``write()``, with a failure (a full disk, a read-only folder, the folder removed
    under the run) turned into one sentence: :class:`SaveFailedError`. A removed folder
    is not silently made again: the run's other files went with it."""
    try:
        if not out.is_dir():
            raise FileNotFoundError(errno.ENOENT, "the output folder is gone", str(out))
        return write()
    except OSError as exc:
        raise SaveFailedError(save_failure_sentence(what, out, exc, last_good)) from None


@dataclass(frozen=True)
class RunRecord:
    """What every checkpoint of a run records about it, beside the step's own figures: the
    run's configs, where and how it ran, and the run its weights came from."""

    out: Path
    config: TrainConfig
    model_config: FlowConfig
    device: torch.device
    world: int  # processes
    precision: str | None
    init_meta: dict[str, Any] | None  # --init-from: the checkpoint's record

    def meta(
        self,
        step: int,
        epoch: int,
        state: dict[str, Any],
        steps_done: int | None,
        average: WeightAverage | None,
        class_stats: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """The checkpoint's ``meta``; ``steps_done``: the run's last step, ``None`` before its
        first (for the lineage's image count)."""
        c = self.config
        meta = {
            "dataset": c.dataset,
            # Where the data came from, so `realnvp eval` finds the test set without help.
            "data_dir": os.path.abspath(c.data_dir),
            "step": step,
            "epoch": epoch,
            "test_bpd": state["last_test_bpd"],
            "best_test_bpd": state["best_test_bpd"],
            "images_seen": step * c.batch_size * self.world,
            "wall_time_s": state["wall_time_s"],
            "device": describe(self.device),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "weights": self.weights_description(average),
            "lineage": self.lineage(state, steps_done),
        }
        if self.init_meta is not None:
            meta["init_from"] = {k: v for k, v in self.init_meta.items() if k != "lineage"}
        if state.get("typicality") is not None:
            meta["typicality"] = state["typicality"]
        if class_stats is not None:
            meta[META_KEY] = class_stats
        return meta

    def training(
        self,
        step: int,
        progress: RunProgress,
        plan: StepPlan | None,
        average: WeightAverage | None,
        model: nn.Module,
    ) -> dict[str, Any]:
        """The checkpoint's ``training``: all that an exact resume needs."""
        state = progress.figures
        training = {
            "train_config": self.config.to_dict(),
            "step": step,
            "optimizer": progress.optimizer.state_dict(),
            "scheduler": progress.scheduler.state_dict(),
            "noise_rng": progress.noise.get_state(),
            "torch_rng": torch.get_rng_state(),
            "nonfinite_total": state["nonfinite_total"],
            "history": state["history"],
            "best_test_bpd": state["best_test_bpd"],
            "last_test_bpd": state["last_test_bpd"],
            "wall_time_s": state["wall_time_s"],
            "total_steps": plan.total if plan else None,
            "planned_steps": plan.planned if plan else None,
            "plan": plan.state_dict() if plan else None,
        }
        if average is not None:
            training["ema"] = average.state_dict()
            training["raw_model"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return training

    def weights_description(self, average: WeightAverage | None) -> str:
        if average is None:
            return "raw: the optimized weights, batch-norm statistics from training"
        return (
            f"averaged: exponential moving average of the weights (decay {average.decay:g},"
            f" {average.updates} updates), batch-norm statistics measured for them on "
            f"{self.config.ema_bn_images} training images"
        )

    def lineage(self, state: dict[str, Any], steps_done: int | None) -> list[dict[str, Any]]:
        """Every run that led to these weights, oldest first: where it ran, what it started
        from, and its test bits/dim against the images it had seen (the model card's
        learning curve). Runs started with ``--init-from`` add theirs to the checkpoint's."""
        earlier = list(self.init_meta.get("lineage", [])) if self.init_meta else []
        offset = 0
        if self.init_meta is not None:
            offset = int(self.init_meta.get("images_seen") or 0)
            if earlier:
                offset = int(earlier[-1].get("images_end", offset))
        per_step = self.config.batch_size * self.world
        this = {
            "out": str(self.out),
            "init_from": self.init_meta.get("path") if self.init_meta else None,
            "device": describe(self.device),
            "cpu": cpu_model(),
            "precision": self.precision,
            "train_config": self.config.to_dict(),
            "model_config": self.model_config.to_dict(),
            "wall_time_s": state["wall_time_s"],
            "images_start": offset,
            "images_end": offset + (steps_done or 0) * per_step,
            "evals": [
                [offset + e["step"] * per_step, e["test_bpd"]] for e in state["history"]["evals"]
            ],
        }
        return [*earlier, this]

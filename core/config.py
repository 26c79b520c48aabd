"""The configs of a model and of a training run, as plain data, written once.

:class:`FlowConfig` rebuilds a model; :data:`PRESETS` name the sizes (and say which recipe
made the bundled model); :class:`TrainConfig` is everything a run needs besides the model.
Each field carries its option: the command-line flag, its help text, its range or choices,
and the training form's control (or why the form has none). ``realnvp train``'s options are
generated from these fields (:func:`core.cli._train_arguments`), and the training form reads
its defaults, ranges and tooltips from them, so an option is written here and nowhere else.

No torch: the desktop app's training page, the run agent on a GPU host and the command line
import this module without loading it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

DATASETS = ("mnist", "cifar10", "folder")
# The learning-rate schedules of core.training.schedule.
SCHEDULES = ("constant", "cosine")

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


PRECISIONS = ("auto", "float32", "bf16")
# Training images per class for the class statistics computed at the end of a run on
# labelled data (core.stats.class_stats.DEFAULT_PER_CLASS).
DEFAULT_PER_CLASS = 1000


# -- value parsers (for the command line and the form's text fields) -------------------------


def _int_at_least(low: int, words: str):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise ValueError(f"must be {words}, got {text}")
        return value

    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "0 or a positive integer")
per_class = _int_at_least(0, "0 (all) or a positive integer")


def decay(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise ValueError(f"must be a number in [0, 1), such as 0.999, got {text}")
    return value


PARSERS = {
    "int": int,
    "float": float,
    "str": str,
    "positive": positive_int,
    "non_negative": non_negative_int,
    "decay": decay,
    "duration": parse_duration,
    "per_class": per_class,
}


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    parse: str = "str",
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    metavar: str | None = None,
    cli_default: Any = MISSING,
    form: str | None = None,
    no_form: str | None = None,
) -> Any:
    """A config field with its option. ``flag``: the command-line flag (``--batch-size``;
    default from the field's name); ``parse``: a :data:`PARSERS` key, or ``flag`` for a
    switch, ``no-flag`` for a switch that turns a default-on field off; ``cli_default``: the
    command line's default where it differs (``None``: the command decides, such as a
    resumed run's own length); ``form``: the training form's control for it, or
    ``no_form``: why the form has none."""
    if (form is None) == (no_form is None):
        raise ValueError("an option names its form control or why it has none, not both")
    meta = {
        "help": help,
        "flag": flag,
        "parse": parse,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "metavar": metavar,
        "cli_default": cli_default,
        "form": form,
        "no_form": no_form,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Option:
    """One field's option, read back from its metadata."""

    name: str
    default: Any
    help: str
    flag: str
    parse: str
    choices: tuple[str, ...] | None
    minimum: float | None
    maximum: float | None
    metavar: str | None
    cli_default: Any
    form: str | None
    no_form: str | None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_").removeprefix("no_")


def options(cls: type) -> dict[str, Option]:
    """The options of a config dataclass, by field name, in field order."""
    found = {}
    for f in fields(cls):
        if "help" not in f.metadata:
            continue
        m = dict(f.metadata)
        flag = m.pop("flag") or "--" + f.name.replace("_", "-")
        found[f.name] = Option(name=f.name, default=f.default, flag=flag, **m)
    return found


# -- the model ------------------------------------------------------------------------------


def geometry_problem(image_size: int, num_scales: int) -> str | None:
    """Why ``num_scales`` scales do not fit ``image_size`` pixels (each scale but the last
    halves the image, and the last keeps at least 2x2), or ``None`` when they do."""
    step = 2 ** (num_scales - 1)
    if image_size % step or image_size // step < 2:
        return (
            f"{image_size}px images do not fit {num_scales} scales: the size must be "
            f"divisible by {step} and leave at least 2×2 pixels at the last scale"
        )
    return None


@dataclass(frozen=True)
class FlowConfig:
    """Everything needed to rebuild a :class:`core.flow.model.RealNVP`; stored in every
    checkpoint.

    ``mid_channels`` is the s/t width at the first scale; it doubles at each scale.
    ``alpha`` is the preprocessing constant of ``logit(alpha + (1 - 2 alpha) x)``.
    """

    in_channels: int = option(
        1, "folder data sets: 1 (grayscale) or 3 (colour)", flag="--channels", parse="int",
        choices=(1, 3), cli_default=None, form="channels",
    )  # fmt: skip
    image_size: int = option(
        28, "folder data sets: side in pixels (images are centre-cropped and resized)",
        parse="positive", minimum=2, maximum=1024, cli_default=None, form="image_size",
    )  # fmt: skip
    num_scales: int = option(
        3, "scales of the multi-scale model; each but the last halves the image (default: "
        "the preset's)", parse="positive", minimum=1, maximum=8, cli_default=None,
        form="num_scales",
    )  # fmt: skip
    mid_channels: int = option(
        16, "width of the s/t networks at the first scale, doubling at each scale (default: "
        "the preset's)", parse="positive", minimum=1, maximum=1024, cli_default=None,
        form="mid_channels",
    )  # fmt: skip
    num_blocks: int = option(
        2, "residual blocks in each s/t network (default: the preset's)", parse="positive",
        minimum=1, maximum=64, cli_default=None, form="num_blocks",
    )  # fmt: skip
    alpha: float = option(
        0.05, "the preprocessing constant of logit(alpha + (1 - 2 alpha) x)", parse="float",
        no_form="the paper's constant; no preset changes it, and a checkpoint records it",
    )  # fmt: skip

    def __post_init__(self) -> None:
        for name in ("in_channels", "image_size", "num_scales", "mid_channels", "num_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FlowConfig.{name} must be a positive integer, got {value!r}")
        step = 2 ** (self.num_scales - 1)
        if geometry_problem(self.image_size, self.num_scales):
            raise ValueError(
                f"image_size {self.image_size} does not fit {self.num_scales} scales: it must "
                f"be divisible by 2**(num_scales-1) = {step} and leave at least 2x2 pixels "
                "at the last scale"
            )
        if not 0.0 < float(self.alpha) < 0.5:
            raise ValueError(f"FlowConfig.alpha must lie in (0, 0.5), got {self.alpha!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FlowConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown FlowConfig fields: {sorted(unknown)}")
        return cls(**data)

    @property
    def num_dims(self) -> int:
        return self.in_channels * self.image_size**2

    @property
    def sizes(self) -> tuple[int, int, int]:
        """``(num_scales, mid_channels, num_blocks)``: what a preset names."""
        return self.num_scales, self.mid_channels, self.num_blocks


PRESETS: dict[str, FlowConfig] = {
    # Trains on MNIST in reasonable time on a 2-core CPU: the bundled model's size, trained
    # with the default recipe (cosine schedule, averaged weights; resources/MODEL_CARD.md).
    "mnist-small": FlowConfig(
        in_channels=1, image_size=28, num_scales=3, mid_channels=16, num_blocks=2
    ),
    # One residual block deeper: 1.4x the parameters and the time of a step, the larger
    # model of the equal-time comparison in the model card.
    "mnist": FlowConfig(in_channels=1, image_size=28, num_scales=3, mid_channels=16, num_blocks=3),
    # The paper's CIFAR-10 model: 8 residual blocks, 64 features.
    "cifar10": FlowConfig(
        in_channels=3, image_size=32, num_scales=2, mid_channels=64, num_blocks=8
    ),
}


def preset(name: str) -> FlowConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


# Data sets whose images fix the model's geometry: (channels, image_size).
DATASET_GEOMETRY = {"mnist": (1, 28), "cifar10": (3, 32)}


def dataset_geometry(name: str, channels: int | None, image_size: int | None) -> tuple[int, int]:
    """``(channels, image_size)`` that a model for this data set must have (a folder: as
    asked, 3 x 32 by default)."""
    return DATASET_GEOMETRY.get(name, (channels or 3, image_size or 32))


# -- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs besides the model architecture."""

    dataset: str = option(
        "mnist", "what to train on; folder: every image under --data-dir (subfolders are "
        "classes)", choices=DATASETS, form="dataset",
    )  # fmt: skip
    data_dir: str = option("data", "folder with the data set files", form="data_dir")
    download: bool = option(
        False, "fetch MNIST / CIFAR-10 if missing", parse="flag", form="download"
    )
    out: str = option(
        "runs/run", "output folder for checkpoints, samples and events.jsonl; it must not hold "
        "another run (see --resume, --overwrite) (default: runs/run; with --resume, the "
        "checkpoint's folder)", cli_default=None, form="out",
    )  # fmt: skip
    batch_size: int = option(
        64, "images per step (per process)", parse="positive", minimum=1, maximum=65536,
        form="batch_size",
    )  # fmt: skip
    lr: float = option(1e-3, "Adam learning rate", parse="float", minimum=0.0, form="lr")
    weight_norm_l2: float = option(
        5e-5, "L2 penalty on the weight-norm scales, added to the loss in bits/dim",
        parse="float", minimum=0.0,
        no_form="the paper's regularizer; a research knob the form leaves to the command line",
    )  # fmt: skip
    grad_clip: float = option(
        100.0, "largest gradient norm; larger is scaled down", parse="float", minimum=0.0,
        no_form="a safety net against rare huge gradients, not a setting to tune per run",
    )  # fmt: skip
    warmup_steps: int = option(
        200, "steps over which the learning rate rises linearly from 0 (0: none)",
        parse="non_negative", minimum=0,
        no_form="200 steps suit every preset; the command line can change it",
    )  # fmt: skip
    lr_schedule: str = option(
        "cosine", "after warm-up: cosine decays the rate to 1% of --lr at the run's planned "
        "last step (with --time-limit, planned from the measured rate); constant keeps it",
        choices=SCHEDULES, form="lr_schedule",
    )  # fmt: skip
    ema: float = option(
        0.999, "average the weights with this decay per step (Polyak averaging); "
        "evaluations, samples, best.pt and the saved model use the averaged weights, with "
        "batch-norm statistics measured for them; 0: no average", parse="decay",
        minimum=0.0, maximum=0.9999, metavar="DECAY", form="ema",
    )  # fmt: skip
    ema_bn_images: int = option(
        2048, "training images on which the averaged weights' batch-norm statistics are "
        "measured before each evaluation and save", parse="positive", minimum=1,
        no_form="enough for stable statistics at every size the form offers",
    )  # fmt: skip
    init_from: str | None = option(
        None, "start a new run from this checkpoint's weights (its averaged ones where it has "
        "them; `bundled` for the bundled model) with a fresh optimizer and schedule; the "
        "model's size is the checkpoint's", metavar="CHECKPOINT", form="init_from",
    )  # fmt: skip
    time_limit: float | None = option(
        None, "end the run cleanly before this much time has passed (90m, 2h, 1h30m, 45s or "
        "HH:MM:SS): it saves, evaluates and ends with status 0 (done: time_limit)",
        parse="duration", metavar="DURATION", form="time_limit",
    )  # fmt: skip
    max_requeues: int = option(
        3, "under Slurm: times the job requeues itself on SIGUSR1 before its time limit (or "
        "a preemption's SIGTERM) and resumes; after that it ends as with --time-limit",
        parse="non_negative", maximum=1000,
        no_form="a Slurm job's setting; the page's runs requeue the default 3 times",
    )  # fmt: skip
    epochs: int = option(
        1, "passes over the training set (default: 1; with --resume, the resumed run's)",
        parse="positive", minimum=1, cli_default=None, form="length",
    )  # fmt: skip
    max_steps: int | None = option(
        None, "optimizer steps in all, counted from the start of the run; overrides --epochs "
        "(default: from --epochs; with --resume, the resumed run's)", parse="positive",
        minimum=1, form="length",
    )  # fmt: skip
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps", form="device")
    precision: str = option(
        "auto", "bf16 runs the s/t networks in bf16 autocast; auto: bf16 on CUDA, and on the "
        "CPU where a short measurement at start-up finds it faster", choices=PRECISIONS,
        no_form="auto measures which is faster on the machine the run starts on",
    )  # fmt: skip
    compile: bool = option(False, "torch.compile the model", parse="flag", form="compile")
    cuda_graph: bool = option(
        True, "on CUDA, launch every kernel of a step instead of replaying a CUDA graph",
        flag="--no-cuda-graph", parse="no-flag",
        no_form="graphs are always faster where they apply; the switch is for debugging",
    )  # fmt: skip
    seed: int = option(0, "random seed of the model, batches and noise", parse="int", form="seed")
    eval_every: int = option(
        500, "steps between test evaluations, each saving checkpoints and a sample grid",
        parse="positive", minimum=1, maximum=10_000_000, form="eval_every",
    )  # fmt: skip
    eval_limit: int | None = option(
        None, "test images per evaluation (default: all)", parse="positive", minimum=1,
        maximum=10_000_000, form="eval_limit",
    )  # fmt: skip
    log_every: int = option(
        10, "steps between progress lines", parse="positive", minimum=1, maximum=1_000_000,
        form="log_every",
    )  # fmt: skip
    flip: bool = option(False, "random horizontal flips", parse="flag", form="flip")
    max_nonfinite: int = option(
        20, "non-finite losses in a row after which the run stops as diverged (status 3)",
        parse="positive", minimum=1,
        no_form="a divergence guard; twenty in a row is the same for every run",
    )  # fmt: skip
    num_samples: int = option(
        64, "images in each sample grid written at an evaluation", parse="positive", minimum=1,
        no_form="the page shows a fixed 8x8 grid",
    )  # fmt: skip
    class_stats_per_class: int = option(
        DEFAULT_PER_CLASS, "labelled data: training images per class for the class "
        f"statistics stored at the end of the run (default {DEFAULT_PER_CLASS}; 0: all)",
        flag="--class-limit", parse="per_class", minimum=0, metavar="CLASS_LIMIT",
        no_form="1,000 a class is enough for the explorer's class directions",
    )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        # Runs saved before these options existed had a flat rate and no average.
        values.setdefault("lr_schedule", "constant")
        values.setdefault("ema", 0.0)
        return cls(**values)


TRAIN_OPTIONS = options(TrainConfig)
MODEL_OPTIONS = options(FlowConfig)


# -- a run's command line -------------------------------------------------------------------

# The options a resumed run takes from its command; the rest come from its checkpoint
# (core.training.trainer.Trainer).
RESUME_OPTIONS = (
    "epochs", "max_steps", "device", "precision", "compile", "cuda_graph", "eval_every",
    "log_every", "time_limit", "max_requeues",
)  # fmt: skip
# Options that name a file or folder of the machine the run starts on.
PATH_OPTIONS = ("data_dir", "init_from")
# The model's options a run's command gives (the preprocessing constant keeps its default).
MODEL_SIZES = ("in_channels", "image_size", "num_scales", "mid_channels", "num_blocks")


def duration_text(seconds: float) -> str:
    """``seconds`` as ``--time-limit`` reads it back: ``2h``, ``45m``, ``90s``."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds) if seconds == int(seconds) else seconds}s"


def option_text(opt: Option, value: Any) -> str:
    """``value`` as the option's flag takes it (a float in full, so it parses back equal)."""
    return duration_text(value) if opt.parse == "duration" else str(value)


def train_flags(
    config: TrainConfig,
    model: Mapping[str, int] | None = None,
    *,
    preset: str | None = None,
    resume: str | None = None,
    overwrite: bool = False,
    threads: int | None = None,
    path: Callable[[str], str] = str,
) -> list[str]:
    """``realnvp train``'s options for a run of ``config``, without ``--out`` and
    ``--progress``, which the launcher adds; parsed back they give ``config``.

    Every option with a form control is written, the others where they differ from their
    default. ``model``: the sizes of :data:`MODEL_SIZES` (``--preset`` where they are
    ``preset``'s; a folder data set's geometry); none with ``init_from``, whose model is
    the checkpoint's. ``resume``: a checkpoint to continue, which then gives everything but
    :data:`RESUME_OPTIONS`. ``path`` maps each path (the bundled model's name stays)."""
    args: list[str] = []
    if resume:
        args += ["--resume", path(resume)]
    for name in RESUME_OPTIONS if resume else TRAIN_OPTIONS:
        opt, value = TRAIN_OPTIONS[name], getattr(config, name)
        if name == "out" or value is None or (name == "epochs" and config.max_steps):
            continue  # the launcher's; unset; overridden by --max-steps
        if opt.parse in ("flag", "no-flag"):
            args += [opt.flag] if value != opt.default else []
        elif opt.form is not None or value != opt.default:
            if name in PATH_OPTIONS and value != "bundled":
                value = path(value)
            args += [opt.flag, option_text(opt, value)]
    if model is not None and not resume and not config.init_from:
        names = MODEL_SIZES[2:] if config.dataset in DATASET_GEOMETRY else MODEL_SIZES
        if preset in PRESETS and PRESETS[preset].sizes == tuple(model[n] for n in names[-3:]):
            args += ["--preset", preset]
            names = names[:-3]
        args += [word for n in names for word in (MODEL_OPTIONS[n].flag, str(model[n]))]
    if overwrite and not resume:
        args.append("--overwrite")
    if threads:
        args += ["--threads", str(threads)]
    return args

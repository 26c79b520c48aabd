"""realnvp, python -m core: train sample encode complete eval info export directions bench remote.

Every command that takes a checkpoint also takes the word ``bundled`` for the bundled model.
A user error is one line on stderr and exit status 2, never a traceback; output cut short
by its reader (``| head``) ends quietly.
"""

# ruff: noqa: E402 (the OpenMP wait is set before the imports below load torch)
from __future__ import annotations

from core.training.threads import prepare_openmp

prepare_openmp()  # libgomp reads it once, when torch loads it (core/training/threads.py)

import argparse
import json
import sys
from dataclasses import MISSING
from pathlib import Path

from core.config import MODEL_OPTIONS, PARSERS, PRESETS, TRAIN_OPTIONS, Option, TrainConfig
from core.files.checkpoint import CheckpointError
from core.files.images import IMAGE_WRITE_FORMATS, ImageLoadError
from core.files.resources import resolve_checkpoint
from core.runs.events import silence
from core.runs.folder import RunFolderError
from core.runs.slurm import SlurmRequest
from core.stats.class_stats import DEFAULT_PER_CLASS, ClassStatsError
from core.training.datasets import DATASETS, DatasetError

USER_ERRORS = (
    CheckpointError,
    ClassStatsError,
    DatasetError,
    ImageLoadError,
    RunFolderError,
    ValueError,
    OSError,  # a file that cannot be read or written: said as a sentence (error_sentence)
)


def error_sentence(exc: BaseException) -> str:
    """A user error in words: an OSError as ``FILE: what went wrong`` (the file a rename
    was writing, not its source), not Python's ``[Errno 13] Permission denied: '…'``."""
    if isinstance(exc, OSError) and exc.strerror:
        name = exc.filename2 if exc.filename2 is not None else exc.filename
        what = exc.strerror[:1].lower() + exc.strerror[1:]
        return f"{name}: {what}" if name is not None else what
    return str(exc)


class HelpFormatter(argparse.HelpFormatter):
    """``--lr LR  Adam learning rate (default: 0.001)``: the default written in once, by
    the formatter, so help text and behaviour cannot disagree. Every parser of ``realnvp``
    and of the benchmark scripts uses it; an option whose help already names its default,
    a flag, or an option without a default is left as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or default == []
            or not (action.option_strings or action.nargs in ("?", "*"))
        ):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)  # defaults written in
        # One rule for every command, here and on a host (whose agent reads the train
        # options without abbreviations): options are spelled out.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, like every other user error
        self.exit(2, f"{self.prog}: error: {message}\n")


CHECKPOINT_HELP = "a checkpoint file (.pt), or the word bundled for the bundled model"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _per_class(text: str) -> int | None:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (all) or a positive integer, got {text}")
    return value or None


def _add_threads(p: argparse.ArgumentParser) -> None:
    """``--threads``, the one option every compute command takes; :func:`main` applies it
    (or the default of :mod:`core.training.threads`) before the command runs."""
    p.add_argument(
        "--threads",
        type=_positive,
        help="CPU threads for torch (default: every core less those other processes keep "
        "busy at the start, at least one)",
    )
    p.set_defaults(threads_here=True)


def _add_train(sub) -> None:
    _train_arguments(sub.add_parser("train", help="train a Real NVP model"))


def _config_argument(p, opt: Option) -> None:
    """One option of :mod:`core.config` on the command line, as its field describes it."""
    kwargs: dict = {"help": opt.help}
    if opt.parse == "flag":
        kwargs["action"] = "store_true"
    elif opt.parse == "no-flag":
        kwargs.update(action="store_false", dest=opt.name)
    else:
        kwargs["type"] = _argtype(PARSERS[opt.parse])
        if opt.choices is not None:
            kwargs["choices"] = opt.choices
        if opt.metavar:
            kwargs["metavar"] = opt.metavar
        default = opt.default if opt.cli_default is MISSING else opt.cli_default
        if default is not None:
            kwargs["default"] = default
    if opt.parse != "no-flag":
        kwargs["dest"] = opt.name
    kwargs["help"] = opt.help.replace("%", "%%")
    p.add_argument(opt.flag, **kwargs)


def _argtype(parse):
    """A :mod:`core.config` parser as an argparse type: its ValueError is argparse's error."""

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _train_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``train``, also those of ``remote HOST train`` (checked here before
    they travel): every field of :class:`core.config.TrainConfig` and the model's sizes of
    :class:`core.config.FlowConfig`, generated from their fields, and the options that
    say how to start rather than what to train."""
    opts = TRAIN_OPTIONS
    for name in ("dataset", "data_dir", "download"):
        _config_argument(p, opts[name])
    for name in ("in_channels", "image_size"):
        _config_argument(p, MODEL_OPTIONS[name])
    _config_argument(p, opts["out"])
    p.add_argument("--preset", choices=sorted(PRESETS), help="model size preset")
    for name in ("num_scales", "mid_channels", "num_blocks"):
        _config_argument(p, MODEL_OPTIONS[name])
    alpha = MODEL_OPTIONS["alpha"]
    p.add_argument("--alpha", type=_argtype(float), help=f"{alpha.help} (default: {alpha.default})")
    for name, opt in opts.items():
        if name in ("dataset", "data_dir", "download", "out", "seed"):
            continue  # above, or below after --progress, where --help has always shown them
        _config_argument(p, opt)
        if name == "cuda_graph":
            fresh = p.add_mutually_exclusive_group()
            fresh.add_argument(
                "--resume",
                metavar="CHECKPOINT",
                help="continue the run of this checkpoint (its latest.pt): in its folder, to its "
                "own length, with its data, model and optimizer (default: a new run)",
            )
            fresh.add_argument(
                "--overwrite",
                action="store_true",
                help="start a new run in a folder that holds an earlier one; the earlier run's "
                "checkpoints, samples, events and log move into a previous-DATE folder inside it",
            )
            p.add_argument(
                "--progress",
                choices=("bar", "json", "none"),
                default="bar",
                help="bar: a progress line on stderr; json: one event per line on stdout (the "
                "training page's contract); none: quiet",
            )
            _config_argument(p, opts["seed"])
    _add_threads(p)


def _train_config(args) -> TrainConfig:
    """The run's :class:`TrainConfig` from ``train``'s parsed options: every field from its
    option, the ones the command decides (``None`` on the command line) filled in."""
    values = {name: getattr(args, name) for name in TRAIN_OPTIONS}
    values["out"] = args.out or (str(Path(args.resume).parent) if args.resume else "runs/run")
    values["epochs"] = args.epochs or 1
    values["class_stats_per_class"] = args.class_stats_per_class or 0
    return TrainConfig(**values)


def _cmd_train(args) -> int:
    from core.runs.events import EventSink
    from core.training.trainer import Trainer, TrainingError, build_model_config

    config = _train_config(args)
    model_config = None
    if args.resume and args.init_from:
        raise ValueError(
            "--resume continues a run and --init-from starts a new one from a checkpoint's "
            "weights; give one of them"
        )
    sizes = (args.preset, args.num_scales, args.mid_channels, args.num_blocks, args.alpha)
    if args.init_from and all(v is None for v in sizes):
        pass  # the checkpoint's model, geometry included
    elif not args.resume:
        model_config = build_model_config(
            args.dataset,
            args.preset,
            args.num_scales,
            args.mid_channels,
            args.num_blocks,
            args.in_channels,
            args.image_size,
            alpha=args.alpha,
        )
    sink = EventSink(args.progress)
    try:
        trainer = Trainer(
            model_config,
            config,
            sink,
            resume=args.resume,
            overwrite=args.overwrite,
            # A resumed run ends where it was going to unless told otherwise.
            keep_length=args.epochs is None and args.max_steps is None,
        )
    except USER_ERRORS as exc:
        sink.emit("error", message=error_sentence(exc))
        raise
    try:
        trainer.run()
    except TrainingError as exc:  # diverged (3), a save that failed (4)
        print(f"realnvp train: error: {exc}", file=sys.stderr)
        return exc.exit_status
    return 0


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="write a grid of samples")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--n", type=_positive, default=64, help="number of samples in the grid")
    p.add_argument(
        "--temperature",
        type=float,
        default=0.7,
        help="scale of the latent noise: below 1 sharper and more typical, above 1 wilder",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="random seed; the same seed repeats the grid"
    )
    p.add_argument(
        "--out",
        default="samples.png",
        help="the image file to write; its suffix gives the format: "
        + ", ".join(sorted(IMAGE_WRITE_FORMATS)),
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="where to run: auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps",
    )
    p.add_argument(
        "--class",
        dest="class_name",
        help="draw from this class's fitted Gaussians (a component of its mixture per image), "
        "by name or index (the checkpoint needs class statistics: realnvp export --data-dir)",
    )
    p.add_argument(
        "--class-levels",
        default="all",
        help="with --class: the levels drawn from the class (all, coarse, fine, or indices "
        "such as 1,2); the others come from the prior",
    )
    _add_threads(p)


def _cmd_sample(args) -> int:
    import torch

    from core.files.checkpoint import load_checkpoint
    from core.files.images import image_format, make_grid, save_image, to_uint8
    from core.flow.inference import sampling_model
    from core.stats.class_stats import level_mask, stats_from_meta
    from core.stats.measure import class_samples
    from core.training.device import pick_device

    out = _output_file(args.out, "--out")
    image_format(out)  # a suffix that names no format we write: one sentence, before the work
    device = pick_device(args.device)
    model, meta = load_checkpoint(args.checkpoint, device)
    model = sampling_model(model)  # folded: the same images, sooner
    g = torch.Generator().manual_seed(args.seed)
    with torch.inference_mode():
        if args.class_name is None:
            x = model.sample(args.n, temperature=args.temperature, generator=g)
        else:
            stats = stats_from_meta(meta)
            if stats is None:
                raise ClassStatsError(
                    f"{args.checkpoint} has no class statistics; add them with "
                    "realnvp export CKPT OUT --data-dir DIR"
                )
            if stats.shapes != tuple(tuple(s) for s in model.latent_shapes):
                raise ClassStatsError(f"{args.checkpoint}: class statistics of another model")
            k = stats.index(args.class_name)
            levels = level_mask(args.class_levels, model.num_levels)
            x = class_samples(model, stats, k, args.n, args.temperature, levels, g)
    path = save_image(make_grid(to_uint8(x.cpu().numpy())), out)
    print(path)
    return 0


def _add_encode(sub) -> None:
    p = sub.add_parser(
        "encode", help="encode images: reconstructions, latents, bits/dim and where they go"
    )
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument(
        "images", nargs="+", help="image files, or folders whose images (recursively) are encoded"
    )
    p.add_argument(
        "--out",
        default="encoded",
        help="folder for each image's NAME_recon.png and NAME_latents.npz (made only once "
        "an image is encoded)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per image and line")
    p.add_argument(
        "--heatmap",
        metavar="DIR",
        help="write DIR/<name>_heatmap.png: the image, its reconstruction and its bits per pixel",
    )
    _add_threads(p)


def _cmd_encode(args) -> int:
    import numpy as np
    import torch

    from core.files.checkpoint import load_checkpoint
    from core.files.images import load_image, save_png, to_uint8
    from core.flow.likelihood import describe_image
    from core.flow.model import pixel_centres
    from core.stats.heatmap import bits_range, colorize, upscale
    from core.stats.typicality import TypicalityReference

    model, meta = load_checkpoint(args.checkpoint)
    reference = TypicalityReference.from_meta(meta)
    cfg = model.config
    out = _output_folder(args.out, "--out")
    heat_dir = _output_folder(args.heatmap, "--heatmap") if args.heatmap else None
    names, failures = _encode_inputs(args.images)
    total = len(names) + len(failures)  # images, and folders without any
    stems: dict[str, int] = {}
    for name in names:
        try:
            pixels = load_image(name, cfg.in_channels, cfg.image_size)  # (C, H, W) uint8
        except ImageLoadError as exc:
            failures.append(str(exc))
            print(f"realnvp encode: error: {exc}", file=sys.stderr)
            continue
        # The folders appear with the first image encoded, never for a failed encode.
        out.mkdir(parents=True, exist_ok=True)
        if heat_dir is not None:
            heat_dir.mkdir(parents=True, exist_ok=True)
        x8 = torch.from_numpy(pixels)[None]
        with torch.inference_mode():
            described = describe_image(model, pixels, reference)
            x = pixel_centres(x8)
            zs = model.encode(x)
            recon = model.decode(zs)
        err = (recon - x).abs().max().item()
        stem = Path(name).stem
        stems[stem] = stems.get(stem, 0) + 1
        if stems[stem] > 1:  # a.png in two folders: a_recon.png and a-2_recon.png
            stem = f"{stem}-{stems[stem]}"
        recon8 = to_uint8(recon[0].numpy())  # (C, H, W)
        save_png(recon8.transpose(1, 2, 0), out / f"{stem}_recon.png")
        np.savez(
            out / f"{stem}_latents.npz", **{f"level{i}": z[0].numpy() for i, z in enumerate(zs)}
        )
        result = {"path": name, **described.summary, "max_abs_error": err}
        if heat_dir is not None:
            lo, hi = bits_range(described.pixel_bits.sum(0))
            panels = [np.repeat(p, 3, 0) if p.shape[0] == 1 else p for p in (pixels, recon8)]
            row = [upscale(p.transpose(1, 2, 0)) for p in panels]
            row.append(upscale(colorize(described.pixel_bits, lo, hi)))
            gap = np.full((row[0].shape[0], 4, 3), 255, np.uint8)
            path = heat_dir / f"{stem}_heatmap.png"
            save_png(np.concatenate([row[0], gap, row[1], gap, row[2]], 1), path)
            result.update(heatmap=str(path), heatmap_bits_range=[lo, hi])
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            print(
                f"{name}: {result['bits_per_dim']:.4f} bits/dim ("
                + ", ".join(
                    f"level {lv['level']} {lv['bits_per_dim']:.3f}" for lv in result["levels"]
                )
                + f", preprocessing {result['preprocess_bits_per_dim']:.3f}); "
                f"{result['verdict']}: {result['reason']}; reconstruction error {err:.2e}"
            )
    if failures:
        if total > 1:
            print(
                f"realnvp encode: {len(failures)} of {total} inputs could not be encoded",
                file=sys.stderr,
            )
        return 2
    return 0


def _output_folder(path: str | Path, option: str) -> Path:
    """``path`` as an output folder; a file there, or in its way, is one sentence
    (ValueError)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {folder} is a file; {option} names a folder to write into")
    _no_file_above(folder, option)
    return folder


def _output_file(path: str, option: str) -> Path:
    """``path`` as a file to write; a folder there, or a file where one of its folders
    should be, is one sentence (ValueError), not an errno naming a temporary file."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{option} {target} is a folder; {option} names the file to write")
    _no_file_above(target, option)
    return target


def _no_file_above(path: Path, option: str) -> None:
    """The nearest existing folder of ``path`` above it must be a folder, not a file."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {path}: {parent} is a file, not a folder")
            return


def _encode_inputs(inputs: list[str]) -> tuple[list[str], list[str]]:
    """The image files to encode, a folder standing for the images in it (recursively),
    and a sentence for each folder without any (printed here, one line each)."""
    from core.training.datasets import list_images

    names: list[str] = []
    failures: list[str] = []
    for item in inputs:
        if Path(item).is_dir():
            found = [str(p) for p in list_images(item)]
            if not found:
                failures.append(f"{item}: a folder without image files")
                print(f"realnvp encode: error: {failures[-1]}", file=sys.stderr)
            names += found
        else:
            names.append(item)
    return names, failures


def _add_complete(sub) -> None:
    from core.flow.completion import DEFAULT_SAMPLES, DEFAULT_STEPS, DEFAULT_TEMPERATURE

    p = sub.add_parser(
        "complete",
        help="fill the masked part of an image with samples from the model",
        description=(
            "Complete the pixels a mask marks (white, non-zero) with samples of the model's "
            "conditional distribution given the rest (black pixels are kept exactly): "
            "annealed Langevin dynamics in latent space, see docs/draw.md. Writes "
            "OUT/<image stem>_<k>.png at the model's resolution."
        ),
    )
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("image", help="cropped to a centre square and resized, as drops are")
    p.add_argument("--mask", required=True, help="PNG at the model's size; white = complete")
    p.add_argument("--samples", type=_positive, default=DEFAULT_SAMPLES, help="completions to draw")
    p.add_argument(
        "--temperature", type=float, default=DEFAULT_TEMPERATURE, help="of the latent prior"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed repeats them")
    p.add_argument("--steps", type=_positive, default=DEFAULT_STEPS, help="Langevin steps")
    p.add_argument("--out", required=True, help="folder for the completed images")
    p.add_argument(
        "--json", action="store_true", help="one JSON object per completion: path, bits_per_dim"
    )
    _add_threads(p)


def _cmd_complete(args) -> int:
    from core.files.checkpoint import load_checkpoint
    from core.files.images import load_image, load_mask, save_png
    from core.flow.completion import complete_image

    model, _meta = load_checkpoint(resolve_checkpoint(args.checkpoint))
    cfg = model.config
    pixels = load_image(args.image, cfg.in_channels, cfg.image_size)
    mask = load_mask(args.mask, cfg.image_size)
    from core.training.bars import progress_bar

    progress = None if args.json else progress_bar("completing")
    done = complete_image(
        model, pixels, mask, args.samples, args.temperature, args.seed, args.steps, progress
    )
    out = _output_folder(args.out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.image).stem
    for k, (image, bits) in enumerate(zip(done.images, done.bits_per_dim)):
        path = save_png(image.transpose(1, 2, 0), out / f"{stem}_{k}.png")
        if args.json:
            print(json.dumps({"path": str(path), "bits_per_dim": float(bits)}), flush=True)
        else:
            print(f"{path}: {bits:.4f} bits/dim")
    return 0


def _add_directions(sub) -> None:
    p = sub.add_parser(
        "directions", help="per-class latent means and standard deviations of a labelled set"
    )
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--dataset", choices=DATASETS, help="default: the checkpoint's")
    p.add_argument("--data-dir", default="data", help="folder with the labelled training set")
    p.add_argument(
        "--limit",
        type=_per_class,
        default=DEFAULT_PER_CLASS,
        help=f"images per class, the first in data set order (default {DEFAULT_PER_CLASS}; 0: all)",
    )
    _add_components(p, "--components")
    p.add_argument(
        "--device",
        default="auto",
        help="where to run: auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps",
    )
    p.add_argument("--out", required=True, help="the .npz file to write")
    _add_threads(p)


def _add_components(p, flag: str) -> None:
    from core.stats.mixture import DEFAULT_COMPONENTS, MIN_IMAGES_PER_COMPONENT

    p.add_argument(
        flag,
        type=_components,
        default=DEFAULT_COMPONENTS,
        metavar="M",
        help="Gaussians in each class's mixture, which class samples draw from (default "
        f"{DEFAULT_COMPONENTS}; fewer for a class with under {MIN_IMAGES_PER_COMPONENT} "
        "images a component; 1: the class's single Gaussian)",
    )


def _components(text: str) -> int:
    from core.stats.class_stats import MAX_COMPONENTS

    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_COMPONENTS:
        raise argparse.ArgumentTypeError(f"give a whole number from 1 to {MAX_COMPONENTS}")
    return value


def _class_stats(
    model,
    dataset: str,
    data_dir: str,
    limit: int | None,
    device,
    download: bool = False,
    components: int = 1,
):
    """Class statistics of ``dataset``'s training images, with a progress bar; every
    class without images is named on stderr."""
    from core.stats.measure import compute_class_stats
    from core.training.bars import progress_bar
    from core.training.data import load_dataset

    cfg = model.config
    train = load_dataset(
        dataset,
        data_dir,
        True,
        channels=cfg.in_channels,
        image_size=cfg.image_size,
        download=download,
    )
    if (train.channels, train.image_size) != (cfg.in_channels, cfg.image_size):
        raise DatasetError(f"{dataset} images do not fit this model's {cfg.image_size}px input")
    stats = compute_class_stats(
        model,
        train,
        limit,
        device=device,
        progress=progress_bar("class statistics"),
        components=components,
    )
    for name in stats.skipped:
        print(f"class {name!r} has no images: skipped", file=sys.stderr)
    return stats


def _cmd_directions(args) -> int:
    from core.files.checkpoint import load_checkpoint
    from core.training.device import pick_device

    device = pick_device(args.device)
    model, meta = load_checkpoint(args.checkpoint, device)
    dataset = args.dataset or meta.get("dataset") or "mnist"
    stats = _class_stats(
        model, dataset, args.data_dir, args.limit, device, components=args.components
    )
    path = stats.save_npz(args.out)
    counts = ", ".join(f"{n}: {c}" for n, c in zip(stats.names, stats.counts))
    print(f"{path}: {stats.num_classes} classes ({counts})")
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="test bits/dim of a checkpoint")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--dataset", choices=DATASETS, help="default: the checkpoint's")
    p.add_argument(
        "--data-dir",
        help="folder with the test set (default: the folder the checkpoint was trained from, "
        "when it exists here, else ./data)",
    )
    p.add_argument("--download", action="store_true", help="fetch MNIST / CIFAR-10 if missing")
    p.add_argument(
        "--limit", type=_positive, help="test images to evaluate, the first ones (default: all)"
    )
    p.add_argument(
        "--device",
        default="auto",
        help="where to run: auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a line")
    p.add_argument(
        "--save",
        action="store_true",
        help="store the test set's per-image bits/dim and complexity scores in the "
        "checkpoint (typicality reference), keeping everything else in it",
    )
    _add_threads(p)


def _recorded_data_dir(data: dict) -> str | None:
    """The data folder a checkpoint was trained from: ``meta`` (the trainer records it) or
    the training state of older checkpoints."""
    train_config = (data.get("training") or {}).get("train_config") or {}
    return data["meta"].get("data_dir") or train_config.get("data_dir")


def _eval_data_dir(args, data: dict) -> str:
    """``--data-dir``; else the checkpoint's own folder when it is there and holds the same
    data set; else ``./data`` (where ``--download`` puts it)."""
    if args.data_dir:
        return args.data_dir
    recorded = _recorded_data_dir(data)
    same_data = args.dataset in (None, data["meta"].get("dataset"))
    if recorded and same_data and Path(recorded).is_dir():
        return recorded
    return "data"


def _test_bits_per_dim(model, meta, dataset, data_dir, limit, device, download=False):
    """Per-image test bits/dim in float32 on the model's data set:
    ``(data set, uint8 images (N, C, H, W), bits/dim (N,) float64)``."""
    import torch

    from core.flow.model import per_image_bits_per_dim
    from core.training.data import load_dataset

    cfg = model.config
    dataset = dataset or meta.get("dataset") or "mnist"
    test = load_dataset(
        dataset,
        data_dir,
        False,
        channels=cfg.in_channels,
        image_size=cfg.image_size,
        download=download,
    )
    if (test.channels, test.image_size) != (cfg.in_channels, cfg.image_size):
        raise DatasetError(f"{dataset} images do not fit this model's {cfg.image_size}px input")
    images = test.images[:limit] if limit else test.images
    with torch.inference_mode():
        return dataset, images, per_image_bits_per_dim(model, images, device)


def _typicality_meta(dataset: str, images, per_image, note: str) -> dict:
    from core.stats.typicality import TypicalityReference

    return TypicalityReference.from_scores(
        dataset, per_image.numpy(), images.numpy(), note=note
    ).to_meta()


def _cmd_eval(args) -> int:
    from core.files.checkpoint import model_from_checkpoint, read_checkpoint, save_checkpoint
    from core.training.device import pick_device

    device = pick_device(args.device)
    data = read_checkpoint(args.checkpoint)
    model = model_from_checkpoint(data, args.checkpoint).to(device).eval()
    data_dir = _eval_data_dir(args, data)
    dataset, images, per_image = _test_bits_per_dim(
        model, data["meta"], args.dataset, data_dir, args.limit, device, args.download
    )
    n, bpd = images.shape[0], per_image.mean().item()
    result = {"dataset": dataset, "images": n, "test_bpd": bpd, "data_dir": data_dir}
    if args.save:
        path = resolve_checkpoint(args.checkpoint)
        data = read_checkpoint(path)
        stored = dict(data["meta"])
        stored["typicality"] = _typicality_meta(
            dataset, images, per_image, f"float32, {n} test images, by realnvp eval"
        )
        save_checkpoint(
            path, model_from_checkpoint(data, path), stored, training=data.get("training")
        )
        result["saved"] = str(path)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{dataset}: {bpd:.4f} bits/dim on {n} test images in {data_dir}")
        if args.save:
            print(f"{result['saved']}: test-set typicality statistics stored")
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="describe a checkpoint")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")


def _cmd_info(args) -> int:
    from core.files.checkpoint import load_checkpoint
    from core.stats.class_stats import META_KEY as CLASS_KEY
    from core.stats.class_stats import summarize_class_meta
    from core.stats.typicality import META_KEY, summarize_meta

    model, meta = load_checkpoint(args.checkpoint)
    info = {
        "checkpoint": str(resolve_checkpoint(args.checkpoint)),
        "config": model.config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "latent_shapes": [list(s) for s in model.latent_shapes],
        **{k: v for k, v in meta.items() if k != "config"},
    }
    # Which weights the file holds: averaged (with their own batch-norm statistics) or raw.
    info.setdefault("weights", "raw: the optimized weights (saved before averaging existed)")
    if isinstance(info.get("lineage"), list):
        info["lineage"] = [
            f"{run.get('out')}: {run.get('images_start', 0):,} to {run.get('images_end', 0):,} "
            f"images, {len(run.get('evals', []))} evaluations, {run.get('wall_time_s', 0):.0f} s "
            f"on {run.get('device')} ({run.get('cpu')})"
            for run in info["lineage"]
        ]
    # Thousands of numbers (and raw bytes): a summary line each instead.
    if META_KEY in info:
        info[META_KEY] = summarize_meta(info[META_KEY])
    if CLASS_KEY in info:
        info[CLASS_KEY] = summarize_class_meta(info[CLASS_KEY])
    if args.json:
        print(json.dumps(info, default=str))
    else:
        for key, value in info.items():
            print(f"{key:>20}: {value}")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="copy a checkpoint without its training state")
    p.add_argument("checkpoint", help="the checkpoint to copy (a file, or bundled)")
    p.add_argument("out", help="the checkpoint file to write, without training state")
    p.add_argument(
        "--data-dir",
        help="evaluate these weights in float32 on the test set and record that as test_bpd, "
        "with the per-image bits/dim and complexity scores for typicality (a checkpoint "
        "saved on a stop carries its last evaluation, made at an earlier step); for labelled "
        "data also record per-class latent statistics",
    )
    p.add_argument(
        "--class-limit",
        type=_per_class,
        default=DEFAULT_PER_CLASS,
        help=f"with --data-dir: training images per class for the class statistics "
        f"(default {DEFAULT_PER_CLASS}; 0: all)",
    )
    _add_components(p, "--class-components")
    p.add_argument(
        "--download", action="store_true", help="with --data-dir: fetch the test set if missing"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace OUT if it exists, even a checkpoint with a run's training state (which "
        "is then lost: that run can no longer be resumed from it)",
    )
    _add_threads(p)


def _cmd_export(args) -> int:
    from core.files.checkpoint import model_from_checkpoint, read_checkpoint, save_checkpoint
    from core.training.device import pick_device

    if args.download and not args.data_dir:
        raise ValueError("--download needs --data-dir, the folder to put the test set in")
    data = read_checkpoint(args.checkpoint)
    model = model_from_checkpoint(data, args.checkpoint)
    meta = dict(data["meta"])
    lost = _export_destination(args.out, args.force)  # before minutes of evaluation
    if args.data_dir:
        device = pick_device("auto")
        dataset, images, per_image = _test_bits_per_dim(
            model.to(device).eval(), meta, None, args.data_dir, None, device, args.download
        )
        n, bpd = images.shape[0], per_image.mean().item()
        # best_test_bpd is the best figure measured, as the trainer keeps it: never above
        # the test_bpd it sits beside.
        best = min(b for b in (meta.get("best_test_bpd"), bpd) if b is not None)
        meta.update(
            test_bpd=bpd,
            best_test_bpd=best,
            test_bpd_note=f"float32, {n} test images, on export",
            typicality=_typicality_meta(
                dataset, images, per_image, f"float32, {n} test images, on export"
            ),
        )
        print(f"test: {bpd:.4f} bits/dim on {n} test images")
        _export_class_stats(
            model,
            meta,
            args.data_dir,
            args.class_limit,
            device,
            args.download,
            args.class_components,
        )
        model.cpu()
    path = save_checkpoint(args.out, model, meta, training=None)
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")
    if lost:
        print(f"replaced with --force: {path}'s training state ({lost}) is gone", file=sys.stderr)
    return 0


def _export_destination(out: str, force: bool) -> str | None:
    """Check the file ``export`` writes before anything is computed: never a folder, and an
    existing file only with ``--force`` (ValueError otherwise). Returns, for a checkpoint
    with a run's training state there, what replacing it loses, in words."""
    from core.files.checkpoint import read_checkpoint

    target = _output_file(out, "OUT")
    if not target.exists():
        return None
    try:
        training = read_checkpoint(target).get("training")
    except CheckpointError:  # an image, a text file: a plain file to keep
        training = None
    lost = _training_state_words(training) if training else None
    if force:
        return lost
    if lost:
        raise ValueError(
            f"{target} holds a run's training state ({lost}); an export there would lose it "
            "and the run could no longer be resumed from it: write the export to another "
            "file, or pass --force to replace it anyway"
        )
    raise ValueError(f"{target} already exists; choose another file, or pass --force to replace it")


def _training_state_words(training: dict) -> str:
    """What a checkpoint's training state holds, as a replaced one loses it."""
    step = training.get("step")
    evals = len((training.get("history") or {}).get("evals") or ())
    at = f" at step {step}" if isinstance(step, int) else ""
    return f"the optimizer and random states{at} and a history of {evals} evaluations"


def _export_class_stats(
    model,
    meta: dict,
    data_dir: str,
    limit: int | None,
    device,
    download: bool = False,
    components: int = 1,
) -> None:
    """Record class statistics in ``meta`` for labelled data; unlabelled data keeps what
    ``meta`` had."""
    from core.stats.class_stats import META_KEY

    try:
        dataset = meta.get("dataset") or "mnist"
        stats = _class_stats(model, dataset, data_dir, limit, device, download, components)
    except ClassStatsError as exc:
        print(f"no class statistics: {exc}", file=sys.stderr)
        return
    meta[META_KEY] = stats.to_meta()
    mixture = f", up to {stats.num_components} Gaussians a class" if components > 1 else ""
    print(f"class statistics: {stats.num_classes} classes{mixture}, {stats.source}")


def _add_bench(sub) -> None:
    bench_arguments(sub.add_parser("bench", help="measure speed on this machine"))


def bench_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``realnvp bench``, which ``python -m explorer_bench`` (the same report
    with the explorer's figures beside it) takes too."""
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    p.add_argument("--checkpoint", help="model for the latency figures (default: bundled)")
    p.add_argument(
        "--device",
        default="auto",
        help="where to run: auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps",
    )
    p.add_argument("--presets", nargs="*", choices=sorted(PRESETS), help="default: all")
    p.add_argument(
        "--render-presets",
        nargs="*",
        choices=sorted(PRESETS),
        help="random-weight models for the render figures (default: cifar10)",
    )
    _add_threads(p)
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time the training step under torch.compile (train_compiled)",
    )
    p.add_argument(
        "--precision-only",
        action="store_true",
        help="only the float32 / bf16 comparison: both ceilings, training and rendering",
    )
    p.add_argument(
        "--train-batch",
        type=_positive,
        nargs="+",
        default=[64],
        help="batch sizes for the training figures (default: 64; the first is the main one)",
    )
    p.add_argument(
        "--peer",
        metavar="DIR",
        help="a checkout of chrischute/real-nvp: time its float32 training step and sampling "
        "against ours, interleaved (the peer section); imported from DIR for this run only",
    )
    p.add_argument(
        "--peer-batch",
        type=_positive,
        default=16,
        help="batch of both training steps in the peer comparison (default: 16; the peer's "
        "own 64 is four times the work, about 10 s a step on 2 cores)",
    )


def _cmd_bench(args) -> int:
    from core.bench import main as bench_main

    return bench_main(args)


def _add_remote(sub) -> None:
    p = sub.add_parser(
        "remote",
        help="train on another machine over ssh: check, train, status, follow, stop, kill, fetch",
        description="Runs on a host reached with the system ssh client (batch mode: keys or an "
        "agent, never a password prompt). The run is detached there and survives the "
        "connection; every command below re-attaches to it by its run folder.",
    )
    ssh_config = "ssh config file (passed as ssh -F), before or after the host"
    p.add_argument("--ssh-config", metavar="FILE", help=ssh_config)
    p.add_argument("host", help="an alias of your ssh config, or user@host[:port]")
    actions = p.add_subparsers(
        dest="action", required=True, parser_class=_Parser, help="what to do on the host"
    )
    where = _Parser(add_help=False)
    # Also after the host; unset there, it leaves the one given before the host.
    where.add_argument("--ssh-config", metavar="FILE", default=argparse.SUPPRESS, help=ssh_config)
    where.add_argument(
        "--python",
        help="the host's Python that has realnvp-explorer installed, e.g. a virtual "
        "environment's bin/python; remembered for the host (default: the one remembered, "
        "else python3)",
    )
    where.add_argument(
        "--runs-dir",
        help="the host's folder for new runs, and for run names given without a folder; "
        "remembered for the host (default: the one remembered, else ~/realnvp-runs)",
    )
    train = actions.add_parser(
        "train",
        parents=[where],
        allow_abbrev=False,
        help="start a run there and return at once; the last line is the run folder",
    )
    train.add_argument(
        "--gpus", type=_positive, help="more than one: torchrun (default 1); with --slurm: "
        "GPUs per node (default: none asked for)",
    )  # fmt: skip
    slurm = train.add_argument_group(
        "Slurm", "with --slurm the host is a cluster's login node: the run is an sbatch "
        "script in its run folder, submitted there (core/runs/slurm.py)",
    )  # fmt: skip
    slurm.add_argument(
        "--slurm", action="store_true",
        help="submit the run as a Slurm batch job (sbatch) instead of starting it on the host",
    )  # fmt: skip
    slurm.add_argument("--partition", metavar="P", help="the partition (default: Slurm's)")
    slurm.add_argument("--nodes", type=_positive, metavar="K", help="nodes (default 1)")
    slurm.add_argument(
        "--time", metavar="HH:MM:SS", help="the job's time limit; 90 s before it the run "
        "saves and requeues itself (default: the partition's)",
    )  # fmt: skip
    slurm.add_argument("--account", metavar="A", help="the account to charge")
    slurm.add_argument("--qos", metavar="Q", help="the quality of service")
    slurm.add_argument(
        "--sbatch-option", action="append", metavar="OPT", default=[],
        help="another sbatch option, one word, written with = (--sbatch-option=--mem=8G); "
        "repeat it for more",
    )  # fmt: skip
    _train_arguments(train)
    # By default a new folder in --runs-dir; --threads is the host's, forwarded.
    train.set_defaults(out=None, threads_here=False)
    for action in train._actions:  # the launcher's own meaning of two train options
        if action.dest == "out":
            action.help = (
                "the run folder on the host; relative: inside --runs-dir (default: a new "
                "run-YYYYmmdd-HHMMSS there; with --resume, the checkpoint's folder)"
            )
        elif action.dest == "progress":
            action.help = argparse.SUPPRESS  # the launcher always sets --progress json
        elif action.dest == "resume":
            action.help = (
                "continue the run of this checkpoint on the host, in its folder, to its own "
                "length; a relative path is taken inside --runs-dir (e.g. run-1/latest.pt)"
            )
    check = actions.add_parser(
        "check", parents=[where], help="the host's GPUs, CPU cores, free disk and version"
    )
    check.add_argument("--json", action="store_true", help="print one JSON object")
    for name, text in (
        ("status", "state (running, done, failed, stopped), step and test bits/dim"),
        ("follow", "a progress bar until the run ends; Ctrl+C leaves it running"),
        ("stop", "save latest.pt and finish (the run's STOP file)"),
        ("kill", "end the run's processes at once"),
        ("fetch", "copy checkpoints, samples, events and log here, verified by SHA-256"),
    ):
        q = actions.add_parser(name, parents=[where], help=text)
        q.add_argument("run", help="the run folder on the host (as train printed it)")
        if name == "status":
            q.add_argument("--json", action="store_true", help="print one JSON object (run_state)")
        elif name == "follow":
            q.add_argument(
                "--give-up-after",
                type=float,
                default=600.0,
                metavar="S",
                help="end after the host has been unreachable this long (default 600 s)",
            )
        elif name == "fetch":
            q.add_argument("--to", help="local folder (default: a cache folder, printed)")
            q.add_argument("names", nargs="*", help="only these files (e.g. latest.pt)")


# Options of ``remote HOST train`` that are the launcher's, not the trainer's.
_REMOTE_ONLY = {"--python", "--runs-dir", "--gpus", "--out", "--progress", "--ssh-config"}
_REMOTE_ONLY |= {"--partition", "--nodes", "--time", "--account", "--qos", "--sbatch-option"}
_REMOTE_FLAGS = {"--slurm"}  # the launcher's options that take no value


def _forwarded_train_args(args) -> list[str]:
    """The words after ``train`` as typed, less the launcher's own options: they reach the
    host as they are, after this parser has checked them."""
    argv = args.argv
    start = next(
        (i + 1 for i in range(1, len(argv)) if argv[i] == "train" and argv[i - 1] == args.host),
        len(argv),
    )
    words, rest = [], argv[start:]
    i = 0
    while i < len(rest):
        word = rest[i]
        if word in _REMOTE_FLAGS:
            i += 1
            continue
        if word.split("=", 1)[0] in _REMOTE_ONLY:
            i += 1 if "=" in word else 2
            continue
        words.append(word)
        i += 1
    return words


def _cmd_remote(args) -> int:
    from core.runs import hosts

    # What is typed wins and is remembered once the host has answered; what is not typed
    # is the host's remembered value (core.runs.hosts), else the default.
    typed = {"python": args.python, "runs_dir": args.runs_dir, "ssh_config": args.ssh_config}
    status = _remote_action(args, {**hosts.remembered(args.host), **_given(typed)})
    hosts.remember(args.host, **typed)
    return status


def _given(values: dict) -> dict:
    return {k: v for k, v in values.items() if v}


def _remote_action(args, where: dict) -> int:
    from core.runs import hosts
    from core.runs.host import DEFAULT_PYTHON, DEFAULT_RUNS_DIR, default_cache_dir, ssh_host

    action = args.action
    if action == "fetch" and args.to:
        _output_folder(Path(args.to).expanduser(), "--to")  # before connecting
    host = ssh_host(
        args.host,
        python=where.get("python", DEFAULT_PYTHON),
        runs_dir=where.get("runs_dir", DEFAULT_RUNS_DIR),
        config_file=where.get("ssh_config"),
    )
    if action == "check":
        facts = host.check()
        if args.json:
            print(json.dumps({**facts.__dict__, "gpus": [g.__dict__ for g in facts.gpus]}))
        else:
            print("\n".join(facts.summary()))
            config = f", ssh config {host.config_file}" if host.config_file else ""
            print(
                f"remembered for {args.host} in {hosts.hosts_file()}: python {host.python}, "
                f"runs folder {host.runs_dir}{config}"
            )
        if facts.problem:
            print(f"realnvp remote: error: {facts.problem}", file=sys.stderr)
            return 2
        return 0
    if action == "train" and args.slurm:
        run, job_id = host.submit(_forwarded_train_args(args), slurm_request(args), out=args.out)
        print(
            f"submitted to Slurm on {args.host} as job {job_id}; follow it with: "
            f"{run.follow_command()}",
            file=sys.stderr,
        )
        print(run.out)
        return 0
    if action == "train":
        slurm_only = [f"--{n.replace('_', '-')}" for n in ("partition", "nodes", "time",
                      "account", "qos", "sbatch_option") if getattr(args, n)]  # fmt: skip
        if slurm_only:
            from core.runs.transport import RemoteError

            raise RemoteError(f"{', '.join(slurm_only)} only go with --slurm", "bad-input")
        run = host.start(_forwarded_train_args(args), out=args.out, gpus=args.gpus or 1)
        print(f"started on {args.host}; follow it with: {run.follow_command()}", file=sys.stderr)
        print(run.out)
        return 0
    if action == "status":
        status = host.status(args.run)
        if args.json:
            print(json.dumps(status.to_dict()))
        else:
            of = f"/{status.max_steps}" if status.max_steps else ""
            test = f", test {status.test_bpd:.4f} bits/dim" if status.test_bpd is not None else ""
            why = f": {status.message}" if status.message else ""
            print(f"{status.state}{why} (step {status.step}{of}{test}){_job_words(status)}")
        return 0
    if action == "follow":
        return _follow_remote(host, args)
    if action == "stop":
        host.stop(args.run)
        print(f"stop asked: {args.run} saves latest.pt and finishes", file=sys.stderr)
        return 0
    if action == "kill":
        host.kill(args.run)
        print(f"killed: {args.run}", file=sys.stderr)
        return 0
    from core.training.bars import Bars

    run = host.remote_run(args.run)
    to = args.to or default_cache_dir(run)
    result = host.fetch(run, to, names=args.names, progress=Bars(in_bytes=True))
    print(
        f"{result.fetched} of {len(result.files)} files copied ({result.bytes / 1e6:.1f} MB), "
        "all verified by SHA-256",
        file=sys.stderr,
    )
    print(result.folder)
    return 0


def slurm_request(args) -> SlurmRequest:
    """The Slurm job ``remote HOST train --slurm`` asks for (what
    :meth:`~core.runs.slurm.SlurmRequest.cli_words` writes)."""
    return SlurmRequest(
        partition=args.partition, gpus=args.gpus, nodes=args.nodes or 1, time=args.time,
        account=args.account, qos=args.qos, extra=tuple(args.sbatch_option),
    )  # fmt: skip


def _job_words(status) -> str:
    """A Slurm run's job in a status line: ``; Slurm job 12 PENDING: waiting in the queue
    (Resources), 2nd``."""
    from core.runs.slurm import job_words

    return f"; {job_words(status.scheduler)}" if status.scheduler else ""


def _follow_remote(host, args) -> int:
    from core.runs.events import EventSink
    from core.runs.transport import RemoteError

    sink = EventSink("bar")
    follower = host.follow(args.run, give_up_after=args.give_up_after)
    try:
        for update in follower:
            if update.kind == "event":
                sink.show(update.event)
            elif update.kind in ("lost", "queued"):
                sink.note(update.text)
            elif update.kind == "connected" and follower.reconnects:
                sink.note(f"reconnected to {args.host}")
            elif update.kind == "ended":
                if update.state == "failed":
                    why = f": {update.text}" if update.text else ""
                    sink.note(f"realnvp remote: the run failed{why}")
                    return 1
                return 0
    except KeyboardInterrupt:
        follower.close()
        sink.note(f"left running on {args.host}: {args.run}")
        return 130
    except RemoteError as exc:
        sink.note(f"realnvp remote: error: {exc}")
        return exc.status
    return 0


COMMANDS = {
    "train": _cmd_train,
    "sample": _cmd_sample,
    "encode": _cmd_encode,
    "eval": _cmd_eval,
    "info": _cmd_info,
    "bench": _cmd_bench,
    "export": _cmd_export,
    "directions": _cmd_directions,
    "remote": _cmd_remote,
    "complete": _cmd_complete,
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="realnvp",
        description="Real NVP from the command line: train a model, then sample, encode, "
        "complete, eval, info, export and directions with it; bench measures this machine, remote "
        "trains on another. A checkpoint argument also takes the word bundled, the bundled "
        "model.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser, help="what to do (each has --help)"
    )
    for add in (
        _add_train,
        _add_sample,
        _add_encode,
        _add_complete,
        _add_eval,
        _add_info,
        _add_bench,
        _add_export,
        _add_directions,
        _add_remote,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from core.runs.transport import RemoteError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # remote HOST train forwards the train options as typed
    try:
        if getattr(args, "threads_here", False):
            from core.training.device import use_threads

            use_threads(args.threads)
        status = COMMANDS[args.command](args)
        sys.stdout.flush()  # a pipe closed early shows here, not at exit
        return status
    except BrokenPipeError:  # the reader of stdout is gone (`| head`): nothing to say
        silence(sys.stdout)
        return 0
    except RemoteError as exc:
        if args.debug:
            raise
        print(f"realnvp {args.command}: error: {exc}", file=sys.stderr)
        return exc.status
    except USER_ERRORS as exc:
        if args.debug:
            raise
        print(f"realnvp {args.command}: error: {error_sentence(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"realnvp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

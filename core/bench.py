"""``realnvp bench`` / ``python -m core.bench``: speed figures for this machine.

Prints (or with ``--json`` writes one JSON object with these stable keys):

- ``machine``: torch version, device, threads.
- ``peer``: ours against chrischute/real-nvp (``--peer DIR``, its checkout, imported for this
  run only) on its default configuration (our ``cifar10``), float32, same threads, interleaved
  call by call: ``train`` (one training step at ``--peer-batch``, both with Adam) and
  ``sample_1`` / ``sample_16``, each ``ours_ms``, ``peer_ms`` and ``ratio`` (ours / peer);
  without ``--peer`` only ``measured: false`` and ``reason``. See :func:`peer_figures`.
- ``matmul_peak_gflops``: float32 2048x2048 matmul throughput, the machine's ceiling.
- ``train_peak_gflops``: the ceiling the training figures are compared with: the same on the
  CPU; on CUDA, where training runs in bf16 autocast, an 8192x8192 bf16 matmul.
- ``models.<name>``: for each preset (and ``bundled`` when that checkpoint exists):
  ``parameters``; ``encode_ms`` / ``decode_ms`` with ``p50`` and ``p95`` for ``batch_1`` and
  ``batch_64``; for ``bundled`` (folded for inference, as the explorer renders)
  ``fine_level_change`` with ``cached_ms`` and ``full_ms``: decoding after a change to the
  finest level from the cached coarser levels against a full decode, and ``likelihood_map``
  with ``encode_ms``, ``map_ms`` and ``ratio_p50``: one image's likelihood map and per-level
  breakdown against a plain encode, timed alternately in the same run; for presets
  ``train_images_per_s`` and ``train_gflops`` (FLOPs of one training step,
  counted by torch's FLOP counter, per second) at batch 64; ``train_peak_fraction``;
  ``first_step_s``; with ``--train-batch 64 256`` also ``train_batch_256``; with ``--compile``
  ``train_compiled`` (one entry per batch size) for the ``torch.compile``-d step; on CUDA
  ``train_cuda_graph`` (one entry per batch size) for the step replayed from a CUDA graph,
  as the trainer runs it by default.
- ``render.<name>``: the explorer's rendering figures for ``bundled`` (or ``checkpoint``
  with ``--checkpoint``) and each ``--render-presets`` model with random weights (default
  ``cifar10``; the timing does not depend on the weights), folded for inference as the
  explorer renders: ``parameters``, ``threads``; ``decode_ms`` with ``batch_1`` and
  ``batch_16``; ``fine_level_change`` with ``batch_1`` and ``batch_16``, each ``cached_ms``
  and ``full_ms``; on CUDA the same under ``cuda_graphs`` (replayed from CUDA graphs, as the
  explorer renders on a GPU) with ``cuda_graphs_status`` and ``cuda_graphs_agreement``
  (``batches.<B>``: ``max_abs_diff`` against eager, ``eager_ms``, ``graph_ms``).
  On the CPU ``render.<name>.draft``: the draft frames drawn during a drag (see
  :func:`render_drafts`): ``batch_1`` and ``batch_16`` (``float32_ms``, ``draft_ms``,
  ``ratio``), ``error`` (``within_1``, ``within_4``, ``within_16``, ``max``) and ``passes``.
The explorer's own figures (``gui``, ``draw``) come from ``python -m explorer_bench``, which
prints this report with them beside it: ``core`` knows none of its benchmarks.

Tests never assert these times; they only check that the command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from core.files.resources import bundled_model_path, resolve_checkpoint
from core.flow.inference import fold_for_inference
from core.flow.model import PRESETS, FlowConfig, RealNVP, gaussian_log_prob
from core.flow.model import random_model as core_random_model
from core.training.device import describe, pick_device, use_threads
from core.training.timing import interleaved_ms, p50, percentiles, time_ms


def _sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits: small figures (a tiny model on a loaded
    machine) keep their value instead of rounding to 0."""
    return float(f"{x:.{digits}g}")


def _sync(device: torch.device | None) -> Callable[[], None] | None:
    """What the timing kit calls around each timed call on ``device``: CUDA's synchronize."""
    if device is not None and device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return None


def _time_ms(
    fn: Callable[[], Any], repeats: int, warmup: int = 2, device: torch.device | None = None
) -> list[float]:
    return time_ms(fn, repeats, warmup, sync=_sync(device))


def matmul_peak_gflops(
    device: torch.device, size: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32
) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = min(_time_ms(lambda: a @ b, repeats, device=device))
    return _sig(2 * size**3 / (best / 1000.0) / 1e9)


def bf16_matmul_peak_gflops(device: torch.device, repeats: int = 10) -> tuple[float, int]:
    """The bf16 matmul ceiling and the size it was measured at. On CUDA 8192x8192. On the
    CPU the size doubles from 256 up to 2048 while one product takes under 0.1 s: a CPU
    without bf16 units emulates it about 150x slower than float32 (0.9 against 148
    GFLOP/s, AMD EPYC Zen 3), where a 2048 product alone would take 20 s."""
    if device.type == "cuda":
        return matmul_peak_gflops(device, 8192, repeats, torch.bfloat16), 8192
    size = 256
    while size < 2048:
        a = torch.randn(size, size, dtype=torch.bfloat16)
        if min(_time_ms(lambda a=a: a @ a, 2, warmup=1)) > 100.0:
            break
        size *= 2
    return matmul_peak_gflops(device, size, repeats, torch.bfloat16), size


def _interleaved_ms(
    fns: dict[str, Callable[[], Any]], repeats: int, budget_s: float, device: torch.device
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """:func:`core.training.timing.interleaved_ms` after one warm-up call each, on
    ``device``: (times, warm-up times)."""
    return interleaved_ms(fns, repeats, warmup=1, budget_s=budget_s, sync=_sync(device))


def train_precisions(
    config: FlowConfig,
    batch: int,
    steps: int,
    device: torch.device,
    peak: float,
    budget_s: float = 60.0,
) -> dict[str, Any]:
    """The trainer's step (:func:`core.training.step.make_train_step`: autocast, memory format)
    in float32 and in bf16, timed interleaved on two copies of one model; figures per precision
    as in :func:`training_speed`, all shares of ``peak``, and ``bf16_speedup``."""
    from core.training.step import make_train_step, use_channels_last
    from core.training.trainer import TrainConfig

    torch.manual_seed(0)
    model = RealNVP(config).to(device).train()
    flops = train_step_flops(model, batch, device)
    x = torch.rand(batch, config.in_channels, config.image_size, config.image_size, device=device)
    runs = {}
    for p in ("float32", "bf16"):
        step = make_train_step(copy.deepcopy(model), device, p, TrainConfig())
        cl = use_channels_last(device, p)
        xp = x.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        runs[p] = lambda step=step, xp=xp: step(xp)
    times, first = _interleaved_ms(runs, steps, budget_s, device)
    out: dict[str, Any] = {"batch": batch, "train_step_gflop": round(flops / 1e9, 4)}
    for p, ms in times.items():
        per_step = p50(ms) / 1000.0
        gflops = flops / per_step / 1e9
        out[p] = {
            "first_step_s": round(first[p] / 1000.0, 2),
            "steps_timed": len(ms),
            "train_images_per_s": _sig(batch / per_step),
            "train_gflops": _sig(gflops),
            "train_peak_fraction": _sig(gflops / peak) if peak else None,
        }
    out["bf16_speedup"] = round(
        out["bf16"]["train_images_per_s"] / out["float32"]["train_images_per_s"], 3
    )
    return out


PEER_CONFIG = FlowConfig(in_channels=3, image_size=32, num_scales=2, mid_channels=64, num_blocks=8)
PEER_NOT_MEASURED = (
    "not measured: no peer checkout given (realnvp bench --peer DIR, DIR a checkout of "
    "chrischute/real-nvp, whose models/ and util/ packages are imported from it for this run)"
)


@contextlib.contextmanager
def _peer_path(checkout: Path) -> Iterator[None]:
    """``checkout`` first on ``sys.path`` while the peer's modules import, and its top-level
    packages (``models``, ``util``) out of ``sys.modules`` again afterwards, with whatever
    modules of those names were there before put back."""
    names = ("models", "util")

    def ours(name: str) -> bool:
        return any(name == n or name.startswith(n + ".") for n in names)

    saved = {name: mod for name, mod in sys.modules.items() if ours(name)}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(checkout))
    try:
        yield
    finally:
        sys.path.remove(str(checkout))
        for name in [n for n in sys.modules if ours(n)]:
            del sys.modules[name]
        sys.modules.update(saved)


class Peer:
    """The peer implementation (chrischute/real-nvp), imported from a checkout for this run
    only: its model modules, never its training script (which imports torchvision)."""

    def __init__(self, checkout: str | Path) -> None:
        import importlib

        root = Path(checkout).expanduser()
        if not (root / "models" / "real_nvp").is_dir() or not (root / "util").is_dir():
            raise ValueError(
                f"--peer {checkout}: not a checkout of chrischute/real-nvp (it needs "
                "models/real_nvp/ and util/)"
            )
        try:
            with _peer_path(root.resolve()):
                real_nvp = importlib.import_module("models.real_nvp")
                self.util = importlib.import_module("util")
        except Exception as exc:
            raise ValueError(f"--peer {checkout}: its model does not import here ({exc})") from exc
        self.model_class, self.loss_class = real_nvp.RealNVP, real_nvp.RealNVPLoss
        self.checkout = root

    def model(self) -> torch.nn.Module:
        """Its default model, ``RealNVP(num_scales=2, in_channels=3, mid_channels=64,
        num_blocks=8)`` (our ``cifar10`` preset), in training mode.

        Its weight normalization is ``torch.nn.utils.weight_norm``, whose deprecation warning
        is silenced here and nothing else. One adaptation for this torch: its s/t network's
        output is made contiguous, as the torch it was written for returned it. After the
        squeeze its input is channels_last in strides, the convolutions keep that layout,
        and its coupling's ``view`` of ``s`` fails (``view size is not compatible``)."""
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r".*torch\.nn\.utils\.weight_norm.*", category=FutureWarning
            )
            net = self.model_class(num_scales=2, in_channels=3, mid_channels=64, num_blocks=8)
        for module in net.modules():
            if type(module).__name__ == "ResNet":
                module.register_forward_hook(lambda _m, _args, out: out.contiguous())
        return net.train()

    def train_step(self, net: torch.nn.Module) -> Callable[[torch.Tensor], None]:
        """One step as its ``train.py`` runs it: Adam (lr 1e-3) with its L2 on the
        weight-norm scales as weight decay (5e-5 on ``weight_g``), its ``RealNVPLoss``, its
        per-group gradient clipping at 100. Its loss ``view``s the latent, which its model
        returns in a permuted layout on this torch: it gets a contiguous copy."""
        util = self.util
        groups = util.get_param_groups(net, 5e-5, norm_suffix="weight_g")
        optimizer = torch.optim.Adam(groups, lr=1e-3)
        loss_fn = self.loss_class()

        def step(x: torch.Tensor) -> None:
            optimizer.zero_grad()
            z, sldj = net(x, reverse=False)
            loss = loss_fn(z.contiguous(), sldj)
            loss.backward()
            util.clip_grad_norm(optimizer, 100.0)
            optimizer.step()

        return step


def peer_figures(
    peer: Peer | None, device: torch.device, batch: int, quick: bool, budget_s: float = 60.0
) -> dict[str, Any]:
    """Ours against the peer on the same configuration (``cifar10``), in float32, at this
    process's thread count, interleaved call by call: the training step at ``batch`` (ours
    as the trainer runs it, theirs as theirs does, both Adam) and sampling 1 and 16 images
    (ours as ``realnvp sample`` does; theirs ``net(z, reverse=True)`` then a sigmoid, in eval
    mode, as its ``train.py`` samples). ``ratio`` is ours over theirs (below 1: ours is
    faster). Without ``peer``: ``measured`` false and why."""
    if peer is None:
        return {"measured": False, "reason": PEER_NOT_MEASURED}
    from core.flow.inference import sampling_model
    from core.training.step import make_train_step
    from core.training.trainer import TrainConfig

    out: dict[str, Any] = {
        "measured": True,
        "checkout": str(peer.checkout),
        "config": "cifar10",
        "precision": "float32",
        "threads": torch.get_num_threads(),
    }
    torch.manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, device=device)  # images in [0, 1], as both train on
    ours_step = make_train_step(
        RealNVP(PEER_CONFIG).to(device).train(), device, "float32", TrainConfig()
    )
    theirs_net = peer.model().to(device)
    theirs_step = peer.train_step(theirs_net)
    ours_x = x.contiguous(memory_format=torch.channels_last)
    times, first = _interleaved_ms(
        {"ours": lambda: ours_step(ours_x), "peer": lambda: theirs_step(x)},
        1 if quick else 3,
        budget_s,
        device,
    )
    out["train"] = _ratio_entry(
        times, batch=batch, first_step_s={k: round(v / 1000.0, 2) for k, v in first.items()}
    )
    ours_model = sampling_model(core_random_model(PEER_CONFIG).to(device))
    theirs_net.eval()
    generator = torch.Generator(device=device).manual_seed(0)
    for n in (1, 16):

        def theirs(n: int = n) -> torch.Tensor:
            z = torch.randn((n, 3, 32, 32), device=device)
            return torch.sigmoid(theirs_net(z, reverse=True)[0])

        with torch.no_grad():
            runs = {
                "ours": lambda n=n: ours_model.sample(n, 1.0, generator),
                "peer": theirs,
            }
            for fn in runs.values():
                fn()  # warm-up
            repeats = (3 if quick else 10) if n == 1 else (2 if quick else 4)
            times, _ = _interleaved_ms(runs, repeats, budget_s / 2, device)
        out[f"sample_{n}"] = _ratio_entry(times, images=n)
    return out


def _ratio_entry(times: dict[str, list[float]], **facts: Any) -> dict[str, Any]:
    ours, theirs = (p50(times[k]) for k in ("ours", "peer"))
    return {
        **facts,
        "ours_ms": percentiles(times["ours"]),
        "peer_ms": percentiles(times["peer"]),
        "ratio": round(ours / theirs, 3),
    }


def _interleaved_decodes(
    models: dict[str, RealNVP],
    batch: int,
    repeats: int,
    budget_s: float,
    device: torch.device,
) -> tuple[list[torch.Tensor], dict[str, list[float]]]:
    """Full decodes of ``batch`` latents at temperature 0.8 (seeded by the batch size) by
    each model, interleaved call by call: the latents and each model's times in ms. The
    first model's ``sample_latents`` draws them."""
    first = next(iter(models.values()))
    zs = first.sample_latents(batch, 0.8, torch.Generator().manual_seed(batch))
    zs = [z.to(device) for z in zs]
    with torch.inference_mode():
        calls = {name: (lambda m=m: m.decode(zs)) for name, m in models.items()}
        times, _ = _interleaved_ms(calls, repeats, budget_s, device)
    return zs, times


def render_precisions(
    model: RealNVP,
    batches: tuple[int, ...],
    repeats: int,
    device: torch.device,
    budget_s: float = 30.0,
) -> dict[str, Any]:
    """The explorer's full decode of ``model`` (an inference copy) in float32 and with bf16
    s/t networks (:func:`core.flow.inference.bf16_copy`), interleaved, per batch size: p50 of
    each, ``bf16_speedup``, and the picture test of :func:`core.training.precision.same_picture`
    (``same_picture``, ``within_one_grey_level``: the share of pixels within one level)."""
    from core.files.images import to_uint8
    from core.flow.inference import bf16_copy
    from core.training.precision import same_picture

    fast = bf16_copy(model)
    out: dict[str, Any] = {}
    for batch in batches:
        zs, times = _interleaved_decodes(
            {"float32": model, "bf16": fast}, batch, repeats, budget_s, device
        )
        with torch.inference_mode():
            same, share = same_picture(
                to_uint8(model.decode(zs).float().cpu().numpy()),
                to_uint8(fast.decode(zs).float().cpu().numpy()),
            )
        f32, bf16 = (p50(times[p]) for p in ("float32", "bf16"))
        out[f"batch_{batch}"] = {
            "float32_ms": percentiles(times["float32"]),
            "bf16_ms": percentiles(times["bf16"]),
            "bf16_speedup": round(f32 / bf16, 3),
            "same_picture": same,
            "within_one_grey_level": round(share, 5),
        }
    return out


def render_drafts(
    model: RealNVP,
    batches: tuple[int, ...],
    repeats: int,
    device: torch.device,
    budget_s: float = 30.0,
) -> dict[str, Any]:
    """The explorer's draft frames (drawn while something is dragged): a full decode of
    ``model`` (an inference copy) in float32 and by its draft copy
    (:func:`core.flow.inference.draft_copy`), interleaved, per batch size (``batch_<B>``:
    ``float32_ms``, ``draft_ms``, ``ratio``, draft over float32 at p50), and the draft test
    (:func:`core.training.precision.draft_passes`) on the largest batch of standard-normal
    latents, as the explorer's render plan runs it: ``error`` (``within_1``, ``within_4``,
    ``within_16``: shares of pixels; ``max``: grey levels) and ``passes``."""
    import numpy as np

    from core.files.images import to_uint8
    from core.flow.inference import draft_copy
    from core.training.precision import draft_error, draft_passes

    draft = draft_copy(model)
    out: dict[str, Any] = {}
    for batch in batches:
        _, times = _interleaved_decodes(
            {"float32": model, "draft": draft}, batch, repeats, budget_s, device
        )
        f32, fast = (p50(times[p]) for p in ("float32", "draft"))
        out[f"batch_{batch}"] = {
            "float32_ms": percentiles(times["float32"]),
            "draft_ms": percentiles(times["draft"]),
            "ratio": round(fast / f32, 3),
        }
    grid = max(batches)
    rng = np.random.default_rng(grid)  # the render plan's latents for its draft test
    shapes = model.latent_shapes
    zs = [torch.from_numpy(rng.standard_normal((grid, *s), dtype=np.float32)) for s in shapes]
    with torch.inference_mode():
        zs = [z.to(device) for z in zs]
        frames = [to_uint8(m.decode(zs).float().cpu().numpy()) for m in (model, draft)]
    out["error"] = draft_error(*frames)
    out["passes"] = draft_passes(out["error"])
    return out


def describe_drafts(draft: dict[str, Any]) -> str:
    """One line of :func:`render_drafts`' figures."""
    from core.training.precision import describe_draft_error

    times = " | ".join(
        f"{key.removeprefix('batch_')} image{'s' * (key != 'batch_1')} draft "
        f"{f['draft_ms']['p50']:.1f} ms against float32 {f['float32_ms']['p50']:.1f} ms "
        f"({f['ratio']:.2f}x)"
        for key, f in draft.items()
        if key.startswith("batch_")
    )
    verdict = "drawn" if draft["passes"] else "refused"
    return f"drafts: {times}; {describe_draft_error(draft['error'])}: {verdict}"


def latency(model: RealNVP, batch: int, repeats: int, device: torch.device) -> dict[str, Any]:
    cfg = model.config
    x = torch.rand(batch, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)
    with torch.inference_mode():
        zs = model.encode(x)
        enc = _time_ms(lambda: model.encode(x), repeats, device=device)
        dec = _time_ms(lambda: model.decode(zs), repeats, device=device)
    return {"encode_ms": percentiles(enc), "decode_ms": percentiles(dec)}


def fine_level_change(
    model: RealNVP, repeats: int, device: torch.device, batch: int = 1
) -> dict[str, Any]:
    """Decode after a change to the finest level only: from the cached output of the coarser
    levels (what the explorer's level cache does) against a full decode."""
    zs = model.sample_latents(batch, 1.0, torch.Generator().manual_seed(0))
    zs = [z.to(device) for z in zs]
    with torch.inference_mode():
        h = model.inverse_top(zs[-1])
        for level in range(model.num_levels - 2, 0, -1):
            h = model.inverse_level(level, zs[level], h)
        cached = h  # the running tensor that a change to level 0 leaves valid

        def from_cache() -> torch.Tensor:
            return model.to_image(model.inverse_level(0, zs[0], cached))

        full = _time_ms(lambda: model.decode(zs), repeats, device=device)
        fine = _time_ms(from_cache, repeats, device=device)
    return {"cached_ms": percentiles(fine), "full_ms": percentiles(full)}


def likelihood_map_cost(model: RealNVP, repeats: int, device: torch.device) -> dict[str, Any]:
    """One image: a plain encode against the likelihood map with its per-level breakdown
    (what ``realnvp encode --json`` and the explorer compute), timed alternately so both
    see the same machine load."""
    from core.flow.likelihood import likelihood_map

    cfg = model.config
    x = torch.rand(1, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)

    def mapped() -> None:
        m = likelihood_map(model, x)
        m.pixel_bits  # noqa: B018 - the per-pixel total is part of the work
        m.summary(0)

    enc: list[float] = []
    lik: list[float] = []
    with torch.inference_mode():
        _time_ms(lambda: model.encode(x), 0, warmup=3)
        _time_ms(mapped, 0, warmup=3)
        for _ in range(repeats):
            enc += _time_ms(lambda: model.encode(x), 1, warmup=0, device=device)
            lik += _time_ms(mapped, 1, warmup=0, device=device)
    encode, map_ = percentiles(enc), percentiles(lik)
    return {"encode_ms": encode, "map_ms": map_, "ratio_p50": round(map_["p50"] / encode["p50"], 3)}


def random_model(config: FlowConfig, device: torch.device, seed: int = 0) -> RealNVP:
    """:func:`core.flow.model.random_model` on ``device``: for timing, which does not depend on
    the weights."""
    return core_random_model(config, seed).to(device)


def render_figures(
    model: RealNVP, repeats: int, device: torch.device, batches: tuple[int, ...] = (1, 16)
) -> dict[str, Any]:
    """The explorer's rendering work on the folded ``model``: full decodes and the cached
    finest-level change, per batch size (fewer repeats for big batches)."""
    out: dict[str, Any] = {"decode_ms": {}, "fine_level_change": {}}
    for batch in batches:
        n = repeats if batch == 1 else max(2, repeats // 3)
        zs = [z.to(device) for z in model.sample_latents(batch, 1.0, torch.Generator())]
        with torch.inference_mode():
            out["decode_ms"][f"batch_{batch}"] = percentiles(
                _time_ms(lambda zs=zs: model.decode(zs), n, device=device)
            )
        out["fine_level_change"][f"batch_{batch}"] = fine_level_change(model, n, device, batch)
    return out


def train_step_flops(model: RealNVP, batch: int, device: torch.device) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model.config
    x = torch.rand(batch, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        zs, logdet = model(x)
        (-(gaussian_log_prob(zs) + logdet).mean()).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def training_speed(
    config: FlowConfig,
    batch: int,
    steps: int,
    device: torch.device,
    peak: float,
    compile: bool = False,
    cuda_graph: bool = False,
) -> dict[str, Any]:
    """The trainer's own step (:class:`core.training.step.TrainStep`): on CUDA with bf16
    autocast and channels_last as the trainer runs it, optionally ``torch.compile``-d."""
    from core.training.step import TrainStep, make_adam, step_autocast, to_channels_last
    from core.training.trainer import TrainConfig

    torch.manual_seed(0)
    model = RealNVP(config).to(device).train()
    flops = train_step_flops(model, batch, device)
    x = torch.rand(batch, config.in_channels, config.image_size, config.image_size, device=device)
    cuda = device.type == "cuda"
    if cuda:
        to_channels_last(model)
        x = x.contiguous(memory_format=torch.channels_last)
    net: torch.nn.Module = torch.compile(model) if compile else model
    optimizer, fused = make_adam(model.parameters(), 1e-4)
    recipe = TrainConfig()
    step = TrainStep(
        model,
        net,
        optimizer,
        fused,
        recipe.weight_norm_l2,
        recipe.grad_clip,
        lambda: step_autocast(device),
        eager_net=model if compile else None,
        cuda_graph=cuda_graph,
    )
    start = time.perf_counter()
    step(x)  # the first step builds fused state (and compiles)
    if cuda:
        torch.cuda.synchronize(device)
    first_s = time.perf_counter() - start
    # Steps are timed in groups, as the trainer runs them: no synchronisation between them.
    group = 10 if cuda else 1
    times = _time_ms(lambda: [step(x) for _ in range(group)], steps, warmup=1, device=device)
    per_step = p50(times) / 1000.0 / group
    step.read(reset_window=True)
    gflops = flops / per_step / 1e9
    return {
        "batch": batch,
        "compiled": step.compiled,
        "cuda_graph": step.graph is not None,
        "first_step_s": round(first_s, 2),
        "train_images_per_s": _sig(batch / per_step),
        "train_step_gflop": round(flops / 1e9, 4),
        "train_gflops": _sig(gflops),
        "train_peak_fraction": _sig(gflops / peak) if peak else None,
    }


def bench_checkpoint(checkpoint: str | None) -> tuple[Path | None, str]:
    """The model of the ``bundled`` figures and the name of its ``render`` entry: the one
    ``--checkpoint`` names (``checkpoint``), else the bundled model (``bundled``); ``None``
    when the bundled model is not installed."""
    if checkpoint:
        name = "checkpoint" if checkpoint != "bundled" else "bundled"
        return resolve_checkpoint(checkpoint), name
    bundled = bundled_model_path()
    return (bundled if bundled.is_file() else None), "bundled"


def run(
    quick: bool = False,
    checkpoint: str | None = None,
    device_name: str = "auto",
    presets: list[str] | None = None,
    compile: bool = False,
    train_batches: list[int] | None = None,
    render_presets: list[str] | None = None,
    precision_only: bool = False,
    peer: str | Path | None = None,
    peer_batch: int = 16,
) -> dict[str, Any]:
    from core.files.checkpoint import load_checkpoint
    from core.training.precision import bf16_units

    device = pick_device(device_name)
    peer_code = Peer(peer) if peer is not None else None  # a bad checkout fails before the runs
    repeats = 5 if quick else 30
    train_steps = 2 if quick else 5
    peak = matmul_peak_gflops(device, repeats=3 if quick else 10)
    bf16_peak, bf16_size = bf16_matmul_peak_gflops(device, 3 if quick else 10)
    train_batches = train_batches or [64]
    # Training runs in float32 or bf16 (CUDA: bf16 autocast): its ceiling is the higher one.
    train_peak = max(peak, bf16_peak)
    report: dict[str, Any] = {
        "machine": {
            "torch": torch.__version__,
            "device": describe(device),
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "bf16_units": bf16_units() if device.type == "cpu" else None,
        },
        "matmul_peak_gflops": peak,
        "bf16_matmul_peak_gflops": bf16_peak,
        "bf16_matmul_size": bf16_size,
        "train_peak_gflops": train_peak,
        "models": {},
        "render": {},
    }
    # First too, in a fresh process's state; its own models are freed before the rest.
    report["peer"] = peer_figures(peer_code, device, peer_batch, quick)
    names = presets if presets is not None else list(PRESETS)
    models: dict[str, tuple[RealNVP, bool, int]] = {}  # model, train it?, parameters
    bundled, render_name = bench_checkpoint(checkpoint)
    if bundled is None:
        print(
            f"bench: the bundled model is not installed ({bundled_model_path()}): no "
            "'bundled' figures; pass --checkpoint for a model of your own",
            file=sys.stderr,
        )
    else:
        # First, before the long training runs leave the process's thread pool and
        # allocator in another state (later latencies measured up to 2x slower), and
        # folded as the explorer renders it.
        model = load_checkpoint(bundled, device)[0]
        count = sum(p.numel() for p in model.parameters())
        models["bundled"] = (fold_for_inference(model), False, count)
        if not precision_only:
            report["render"][render_name] = _render_entry(
                models["bundled"][0], count, repeats, device
            )
    render_presets = ["cifar10"] if render_presets is None else render_presets
    for name in [] if precision_only else render_presets:
        model = random_model(PRESETS[name], device)
        count = sum(p.numel() for p in model.parameters())
        report["render"][name] = _render_entry(
            fold_for_inference(model), count, 3 if quick else 10, device
        )
    for name in names:
        model = RealNVP(PRESETS[name]).to(device).eval()
        models[name] = (model, True, sum(p.numel() for p in model.parameters()))
    for name, (model, train, count) in models.items():
        entry: dict[str, Any] = {"config": model.config.to_dict(), "parameters": count}
        # The render comparison needs a picture: presets get weights moved off the
        # identity initialization, as the explorer's untrained model does.
        shown = model if not train else fold_for_inference(random_model(model.config, device))
        entry["render_precision"] = render_precisions(shown, (1, 16), 3 if quick else 10, device)
        if train:
            first, *more = train_batches
            entry["train_precision"] = train_precisions(
                model.config, first, train_steps, device, train_peak
            )
        if precision_only:
            report["models"][name] = entry
            continue
        entry["batch_1"] = latency(model, 1, repeats, device)
        entry["batch_64"] = latency(model, 64, 2 if quick else 10, device)
        if not train:
            entry["fine_level_change"] = fine_level_change(model, repeats, device)
            entry["likelihood_map"] = likelihood_map_cost(model, repeats, device)
        if train:
            if device.type == "cuda":
                entry.update(training_speed(model.config, first, train_steps, device, train_peak))
            else:  # the trainer's default step there is the float32 one just measured
                figures = entry["train_precision"]
                entry.update(figures["float32"], batch=first, compiled=False, cuda_graph=False)
                entry["train_step_gflop"] = figures["train_step_gflop"]
            for b in more:
                entry[f"train_batch_{b}"] = training_speed(
                    model.config, b, train_steps, device, train_peak
                )
            if device.type == "cuda":
                entry["train_cuda_graph"] = {
                    str(b): training_speed(
                        model.config, b, train_steps, device, train_peak, cuda_graph=True
                    )
                    for b in train_batches
                }
            if compile:
                entry["train_compiled"] = {
                    str(b): training_speed(
                        model.config, b, train_steps, device, train_peak, compile=True
                    )
                    for b in train_batches
                }
        report["models"][name] = entry
    return report


def _render_entry(
    model: RealNVP, parameters: int, repeats: int, device: torch.device
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "parameters": parameters,  # of the model as trained (folding merges some)
        "threads": torch.get_num_threads(),
        **render_figures(model, repeats, device),
    }
    if device.type == "cpu":  # draft frames are a CPU matter (bf16 units)
        entry["draft"] = render_drafts(model, (1, 16), repeats, device)
    if device.type == "cuda":
        entry.update(_graphed_render_figures(model, repeats, device))
    return entry


def _graphed_render_figures(model: RealNVP, repeats: int, device: torch.device) -> dict[str, Any]:
    """The same figures with the decode steps replayed from CUDA graphs (the explorer's
    GPU path); the status says why not when they could not be captured."""
    from core.flow.graphs import GraphedDecoder, agreement

    decoder = GraphedDecoder(model, batches=(1, 16))
    status = decoder.build()
    out: dict[str, Any] = {"cuda_graphs_status": status}
    if decoder.ready:
        out["cuda_graphs"] = render_figures(decoder.as_model(), repeats, device)
        decoder.release()
        out["cuda_graphs_agreement"] = agreement(model, repeats=repeats)
    return out


def _print_precisions(report: dict[str, Any]) -> None:
    """The float32 / bf16 table: both ceilings, training and rendering side by side."""
    units = report["machine"].get("bf16_units")
    print(
        f"ceilings: float32 matmul {report['matmul_peak_gflops']} GFLOP/s, bf16 matmul "
        f"{report['bf16_matmul_peak_gflops']} GFLOP/s ({report['bf16_matmul_size']}^2)"
        + ("" if units is None else f"; bf16 units: {', '.join(units) or 'none'}")
    )
    print(f"{'':34}{'float32':>22}{'bf16':>22}{'bf16 speed-up':>15}")
    for name, e in report["models"].items():
        t = e.get("train_precision")
        if t:
            cells = [
                f"{t[p]['train_images_per_s']} img/s "
                f"({100 * (t[p]['train_peak_fraction'] or 0):.1f}%)"
                for p in ("float32", "bf16")
            ]
            label = f"{name} training, batch {t['batch']}"
            print(f"{label:34}{cells[0]:>22}{cells[1]:>22}{t['bf16_speedup']:>14.2f}x")
        for batch, r in e.get("render_precision", {}).items():
            n = batch.removeprefix("batch_")
            cells = [f"{r[p + '_ms']['p50']:.1f} ms" for p in ("float32", "bf16")]
            label = f"{name} render, {n} image{'s' * (n != '1')}"
            print(
                f"{label:34}{cells[0]:>22}{cells[1]:>22}{r['bf16_speedup']:>14.2f}x"
                f"  same picture: {'yes' if r['same_picture'] else 'no'} "
                f"({100 * r['within_one_grey_level']:.2f}% within one grey level)"
            )
    print("(training: images/s and the share of the higher ceiling; render: p50)")


def _print_peer(peer: dict[str, Any]) -> None:
    if not peer.get("measured"):
        print(f"peer (chrischute/real-nvp): {peer.get('reason', 'not measured')}")
        return
    print(
        f"peer (chrischute/real-nvp, {peer['config']}, {peer['precision']}, {peer['threads']} "
        "threads, interleaved; ratio = ours / peer's time):"
    )
    rows = [(f"training step, batch {peer['train']['batch']}", peer["train"])]
    rows += [(f"sampling {n} image{'s' * (n > 1)}", peer[f"sample_{n}"]) for n in (1, 16)]
    for label, e in rows:
        print(
            f"  {label:26} ours p50 {e['ours_ms']['p50']:.1f} ms | peer p50 "
            f"{e['peer_ms']['p50']:.1f} ms | {e['ratio']:.2f}x (n={e['ours_ms']['n']})"
        )


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"torch {m['torch']} on {m['device']}")
    if "peer" in report:
        _print_peer(report["peer"])
    _print_precisions(report)
    for name, e in report["models"].items():
        if "batch_1" not in e:
            continue
        print(f"\n{name}: {e['parameters']:,} parameters")
        for batch in ("batch_1", "batch_64"):
            enc, dec = e[batch]["encode_ms"], e[batch]["decode_ms"]
            print(
                f"  {batch:>8}: encode p50 {enc['p50']:.1f} ms p95 {enc['p95']:.1f} ms | "
                f"decode p50 {dec['p50']:.1f} ms p95 {dec['p95']:.1f} ms"
            )
        if "fine_level_change" in e:
            c, f = e["fine_level_change"]["cached_ms"], e["fine_level_change"]["full_ms"]
            print(
                f"  finest-level change: from cache p50 {c['p50']:.1f} ms p95 {c['p95']:.1f} ms"
                f" | full decode p50 {f['p50']:.1f} ms p95 {f['p95']:.1f} ms"
            )
        if "likelihood_map" in e:
            lm = e["likelihood_map"]
            print(
                f"  likelihood map + breakdown, one image: p50 {lm['map_ms']['p50']:.1f} ms "
                f"against a plain encode's {lm['encode_ms']['p50']:.1f} ms "
                f"({lm['ratio_p50']:.2f}x, timed alternately)"
            )
        if "train_images_per_s" in e:
            print(
                f"  training (batch 64): {e['train_images_per_s']} images/s, "
                f"{e['train_gflops']} GFLOP/s = {100 * e['train_peak_fraction']:.0f}% of peak"
            )
    for name, e in report.get("render", {}).items():
        d1, d16 = e["decode_ms"]["batch_1"], e["decode_ms"]["batch_16"]
        c16 = e["fine_level_change"]["batch_16"]["cached_ms"]
        print(
            f"\nrender {name} ({e['parameters']:,} parameters, {e['threads']} threads): decode "
            f"1 image p50 {d1['p50']:.1f} ms p95 {d1['p95']:.1f} ms | 16 images p50 "
            f"{d16['p50']:.1f} ms p95 {d16['p95']:.1f} ms | finest-level change, 16 images, "
            f"from cache p50 {c16['p50']:.1f} ms"
        )
        if "draft" in e:
            print("  " + describe_drafts(e["draft"]))


def main(
    args: argparse.Namespace | None = None,
    more: Callable[[dict[str, Any], argparse.Namespace], None] | None = None,
    printer: Callable[[dict[str, Any]], None] = print_report,
) -> int:
    """``realnvp bench``: the report of :func:`run` for ``args``, as JSON or lines.
    ``more(report, args)`` adds figures of a caller's own before it is shown (``python -m
    explorer_bench`` adds the explorer's), and ``printer`` writes the lines."""
    if args is None:
        parser = argparse.ArgumentParser(prog="python -m core.bench", description=__doc__)
        parser.add_argument("--json", action="store_true")
        parser.add_argument("--quick", action="store_true")
        parser.add_argument("--checkpoint")
        args = parser.parse_args()
        use_threads(None)  # realnvp bench: main applied --threads or the default
    report = run(
        quick=args.quick,
        checkpoint=args.checkpoint,
        device_name=getattr(args, "device", "auto"),
        presets=getattr(args, "presets", None),
        compile=getattr(args, "compile", False),
        train_batches=getattr(args, "train_batch", None),
        render_presets=getattr(args, "render_presets", None),
        precision_only=getattr(args, "precision_only", False),
        peer=getattr(args, "peer", None),
        peer_batch=getattr(args, "peer_batch", 16),
    )
    if more is not None:
        more(report, args)
    if args.json:
        print(json.dumps(report))
    else:
        printer(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

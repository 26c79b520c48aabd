"""Make a trained checkpoint the bundled model, with everything that depends on it.

    python tools/bundle_model.py RUN/best.pt --data-dir DIR [--out resources] [--force]

1. exports the checkpoint's weights (the averaged ones, with their own batch-norm statistics,
   where the run kept an average) to ``OUT/default_model.pt`` with its test bits/dim,
   typicality and class statistics (``realnvp export --data-dir``), but only where it beats
   the bundled model on the full test set in float32, unless ``--force``;
2. writes ``samples_t0.7.png`` and ``samples_t1.0.png`` (``realnvp sample bundled --n 64
   --seed 0``);
3. judges ``realnvp sample bundled --class K`` for every digit with the nearest-neighbour
   judge (:mod:`core.stats.judge`) and prints the shares, with the class mixtures
   (``--class-components`` and ``--class-limit``, passed to export) and,
   for comparison, with each class's single Gaussian;
4. draws the learning curve of every run that led to the model (test bits/dim against
   images seen, from the checkpoint's lineage, which the runs' evaluation events also hold)
   into ``learning_curve.png``;
5. prints the facts the model card needs as JSON (``--json-out`` writes them to a file).

The README screenshots are taken by ``tools/readme_screenshots.sh`` afterwards.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from core.files.checkpoint import load_checkpoint, read_checkpoint
from core.flow.model import mean_bits_per_dim
from core.stats.class_stats import ClassStats, level_mask, stats_from_meta
from core.stats.judge import NearestNeighbourJudge
from core.stats.measure import class_samples
from core.training.data import load_mnist

ROOT = Path(__file__).resolve().parents[1]
# The run behind the first bundled model (resources/MODEL_CARD.md before it was replaced):
# mnist-small, 7,286 steps of 64 on one H200 in 124 s; its test bits/dim every 2,000 steps
# (evaluated under bf16 autocast, about 0.005 high) and the float32 figure of its export.
FIRST_BUNDLED = {
    "out": "runs/gpu (first bundled model, H200)",
    "init_from": None,
    "images_start": 0,
    "images_end": 466_304,
    "wall_time_s": 124.0,
    "device": "cuda:0 (NVIDIA H200)",
    "cpu": None,
    "evals": [[128_000, 1.5318], [256_000, 1.4639], [384_000, 1.3970], [466_304, 1.3522]],
}
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def realnvp(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"realnvp {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def test_bpd(path: Path, data_dir: str) -> float:
    model, _ = load_checkpoint(path)
    test = load_mnist(data_dir, train=False)
    return float(mean_bits_per_dim(model.eval(), test.images, torch.device("cpu")))


def class_shares(path: Path, data_dir: str, n: int = 100, single: bool = False) -> dict[int, float]:
    """The share of ``n`` class samples of each digit that the judge calls that digit;
    ``single``: drawn from each class's single Gaussian instead of its mixture."""
    model, meta = load_checkpoint(path)
    stats = stats_from_meta(meta)
    if single:
        stats = ClassStats(stats.names, stats.counts, stats.means, stats.stds, stats.source)
    train = load_mnist(data_dir, train=True)
    judge = NearestNeighbourJudge(train.images[:20000].numpy(), np.asarray(train.labels[:20000]))
    levels = level_mask("all", model.num_levels)
    shares = {}
    for k in range(10):
        x = class_samples(model, stats, k, n, 0.7, levels, torch.Generator().manual_seed(k))
        shares[k] = judge.share_as(x.numpy(), k)
    return shares


def draw_curve(lineage: list[dict], path: Path, size=(900, 520)) -> None:
    """Test bits/dim against images seen, one colour per run, on a log x axis."""
    points = [(x, y) for run in lineage for x, y in run.get("evals", []) if x > 0]
    if not points:
        return
    w, h = size
    left, right, top, bottom = 80, 20, 40, 60
    xs = np.log10([p[0] for p in points])
    ys = [p[1] for p in points]
    x0, x1 = float(np.floor(xs.min())), float(np.ceil(xs.max()))
    y0, y1 = min(ys) - 0.02, min(max(ys), min(ys) + 1.0) + 0.02
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)

    def at(x: float, y: float) -> tuple[float, float]:
        px = left + (np.log10(x) - x0) / max(x1 - x0, 1e-9) * (w - left - right)
        py = top + (y1 - min(y, y1)) / max(y1 - y0, 1e-9) * (h - top - bottom)
        return float(px), float(py)

    for e in range(int(x0), int(x1) + 1):
        px, _ = at(10.0**e, y0)
        d.line([px, h - bottom, px, h - bottom + 5], fill="black")
        d.text((px - 12, h - bottom + 8), f"1e{e}", fill="black")
    for i in range(6):
        y = y0 + (y1 - y0) * i / 5
        _, py = at(10.0**x0, y)
        d.line([left - 5, py, left, py], fill="black")
        d.line([left, py, w - right, py], fill=(225, 225, 225))
        d.text((left - 48, py - 6), f"{y:.3f}", fill="black")
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    d.text((w // 2 - 80, h - 24), "training images seen (log scale)", fill="black")
    d.text((8, 12), "test bits/dim (MNIST, float32, 10,000 images)", fill="black")
    for i, run in enumerate(lineage):
        colour = COLOURS[i % len(COLOURS)]
        pts = [at(x, y) for x, y in run.get("evals", []) if x > 0]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for px, py in pts:
            d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        label = f"run {i + 1}: {Path(run.get('out', '?')).name}"
        d.text((w - right - 260, top + 10 + 16 * i), label, fill=colour)
    img.save(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", default=str(ROOT / "resources"))
    p.add_argument("--force", action="store_true", help="bundle it even if it is not better")
    p.add_argument("--json-out")
    p.add_argument("--class-limit", help="export's --class-limit (default: export's)")
    p.add_argument("--class-components", help="export's --class-components (default: export's)")
    args = p.parse_args()
    out = Path(args.out)
    target = out / "default_model.pt"
    facts: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / "candidate.pt"
        export = ["export", args.checkpoint, str(candidate), "--data-dir", args.data_dir]
        for flag, value in (
            ("--class-limit", args.class_limit),
            ("--class-components", args.class_components),
        ):
            export += [flag, value] if value is not None else []
        print(realnvp(*export))
        new = read_checkpoint(candidate)["meta"]["test_bpd"]
        old = test_bpd(target, args.data_dir) if target.exists() else float("inf")
        facts.update(candidate_bpd=new, bundled_bpd=old)
        print(f"candidate {new:.4f} bits/dim, bundled {old:.4f}")
        if new >= old and not args.force:
            print("not better than the bundled model: nothing replaced")
            print(json.dumps(facts))
            return 1
        shutil.copyfile(candidate, target)
    for t in ("0.7", "1.0"):
        realnvp(
            "sample", str(target), "--n", "64", "--seed", "0", "--temperature", t,
            "--out", str(out / f"samples_t{t}.png"),
        )  # fmt: skip
    meta = read_checkpoint(target)["meta"]
    facts["class_shares"] = class_shares(target, args.data_dir)
    print("class samples judged as their digit:", facts["class_shares"])
    facts["class_shares_single"] = class_shares(target, args.data_dir, single=True)
    print("the same from single Gaussians:", facts["class_shares_single"])
    lineage = meta.get("lineage", [])
    if lineage and lineage[0].get("init_from") == "bundled" and lineage[0]["images_start"] > 0:
        lineage = [FIRST_BUNDLED, *lineage]
    draw_curve(lineage, out / "learning_curve.png")
    facts["lineage"] = [
        {k: v for k, v in run.items() if k not in ("train_config", "model_config")}
        | {"evals": run.get("evals", [])[-3:]}
        for run in lineage
    ]
    facts["meta"] = {
        k: meta.get(k)
        for k in ("step", "images_seen", "wall_time_s", "device", "weights", "init_from")
    }
    text = json.dumps(facts, indent=1, default=str)
    if args.json_out:
        Path(args.json_out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

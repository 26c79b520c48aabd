"""The completion check: erase the bottom half of test digits and let the flow fill it.

``python -m explorer_bench.completion [CHECKPOINT] --data-dir DIR [--count 100]
[--temperature 0.7] [--seed 0] [--json]`` (default checkpoint: the bundled model) takes
the first ``count`` MNIST test digits, erases rows ``H/2..H-1`` and completes each once with
:func:`core.flow.completion.complete` (all digits as one batch of chains, on the CPU). It
reports:

- **judged original**: the share of completed digits that a 1-nearest-neighbour pixel
  classifier on the first 10,000 training digits assigns to the original digit's label
  (chance 10%; the originals themselves score about 93%, a black bottom half about 52%);
- **bits/dim** of the completed digits against the originals (both at the pixel centres);
- **brightness ratio**: mean brightness of the completed bottom halves over the originals'
  (a fill with black scores 0);
- **time per completion**: the whole batch's wall time over ``count``.

Figures only: nothing here asserts a target. Run it on a quiet machine for the timing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from explorer_bench import bench_parser

JUDGE_SIZE = 10_000


def nearest_neighbour_labels(
    queries: np.ndarray, references: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """1-NN labels of uint8 images by Euclidean pixel distance, in chunks (memory)."""
    ref = references.reshape(len(references), -1).astype(np.float32)
    ref_sq = (ref**2).sum(1)
    out = []
    for start in range(0, len(queries), 256):
        q = queries[start : start + 256].reshape(-1, ref.shape[1]).astype(np.float32)
        d = ref_sq[None, :] - 2.0 * q @ ref.T  # |q|^2 is the same along a row
        out.append(labels[d.argmin(1)])
    return np.concatenate(out) if out else np.zeros(0, labels.dtype)


def run(args: argparse.Namespace) -> dict:
    from core.files.checkpoint import load_checkpoint
    from core.files.resources import resolve_checkpoint
    from core.flow.completion import bits_per_dim_at_centres, complete
    from core.training.data import load_mnist

    torch.set_num_threads(args.threads)
    model, _meta = load_checkpoint(resolve_checkpoint(args.checkpoint))
    test = load_mnist(args.data_dir, train=False)
    train = load_mnist(args.data_dir, train=True)
    if test.labels is None or train.labels is None:
        raise SystemExit("the completion check needs the MNIST label files beside the images")
    originals = test.images[: args.count].numpy()  # (N, 1, 28, 28)
    labels = np.asarray(test.labels[: args.count])
    size = originals.shape[-1]
    masks = np.zeros(originals.shape, bool)
    masks[:, :, size // 2 :, :] = True
    erased = np.where(masks, 0, originals).astype(np.uint8)
    start = time.perf_counter()
    result = complete(
        model,
        erased,
        masks,
        temperature=args.temperature,
        seed=args.seed,
        steps=args.steps,
        step_size=args.step_size,
        sigma_end=args.sigma_end,
    )
    seconds = time.perf_counter() - start
    judge_images = train.images[:JUDGE_SIZE].numpy()
    judge_labels = np.asarray(train.labels[:JUDGE_SIZE])
    judged = nearest_neighbour_labels(result.images, judge_images, judge_labels)
    judged_originals = nearest_neighbour_labels(originals, judge_images, judge_labels)
    judged_black = nearest_neighbour_labels(erased, judge_images, judge_labels)
    bottom = (slice(None), slice(None), slice(size // 2, None), slice(None))
    # Both at the pixel centres, as the figures below were always measured (the
    # completions' own bits_per_dim carry the encode seed's noise, as the app shows them).
    original_bpd = bits_per_dim_at_centres(model, originals)
    completed_bpd = bits_per_dim_at_centres(model, result.images)
    figures = {
        "checkpoint": str(args.checkpoint),
        "count": int(args.count),
        "temperature": float(args.temperature),
        "seed": int(args.seed),
        "steps": int(args.steps),
        "step_size": float(args.step_size),
        "sigma_end": float(args.sigma_end),
        "threads": int(torch.get_num_threads()),
        "judged_original": float((judged == labels).mean()),
        "judged_original_originals": float((judged_originals == labels).mean()),
        "judged_original_black_half": float((judged_black == labels).mean()),
        "bits_per_dim_completed": float(completed_bpd.mean()),
        "bits_per_dim_originals": float(original_bpd.mean()),
        "brightness_ratio": float(
            result.images[bottom].astype(np.float64).mean()
            / max(originals[bottom].astype(np.float64).mean(), 1e-9)
        ),
        "seconds_per_completion": seconds / max(args.count, 1),
    }
    if args.save:
        from core.files.images import make_grid, save_png

        rows = np.concatenate([originals[:16], erased[:16], result.images[:16]])
        save_png(make_grid(rows, nrow=16), args.save)
    return figures


def build_parser() -> argparse.ArgumentParser:
    parser = bench_parser("completion", __doc__.splitlines()[0])
    parser.set_defaults(checkpoint="bundled")
    parser.add_argument(
        "--data-dir", required=True, help="folder with the MNIST files (test and training sets)"
    )
    parser.add_argument("--count", type=int, default=100, help="test digits to complete")
    parser.add_argument("--temperature", type=float, default=0.7, help="of the latent prior")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the chains")
    parser.add_argument(
        "--steps", type=int, default=None, help="Langevin steps (default: the app's)"
    )
    parser.add_argument(
        "--step-size", type=float, default=None, help="the first step (default: the app's)"
    )
    parser.add_argument(
        "--sigma-end", type=float, default=None, help="the final tie (default: the app's)"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    parser.add_argument("--save", help="a PNG of 16 originals, erased and completed digits")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from core.flow import completion

    if args.steps is None:
        args.steps = completion.DEFAULT_STEPS
    if args.sigma_end is None:
        args.sigma_end = completion.SIGMA_END
    if args.step_size is None:
        args.step_size = completion.DEFAULT_STEP_SIZE
    figures = run(args)
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:28s} {value:.4g}" if isinstance(value, float) else f"{key:28s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

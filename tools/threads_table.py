"""Print the thread table of issue 35: each compute command's wall time on a quiet machine
and beside a busy process, with torch's old default and with the new one.

- old: ``--threads`` every core, libgomp's own spinning wait (``GOMP_SPINCOUNT=300000``,
  its documented default when ``OMP_WAIT_POLICY`` is unset);
- new: no ``--threads``, nothing in the environment: the default of
  :mod:`core.training.threads` (passive wait, one core fewer per busy one);
- busy: one ``while True: pass`` process beside the command (``--pin``: on the last core),
  started before it and ended after it;
- the render plan: what the explorer's plan measurement chooses for the bundled model
  (threads and median decode ms per thread count) under each condition, with the
  explorer's own environment and with the passive wait.

Each command is a short fixed workload, run ``--repeat`` times, old and new interleaved,
under this script's own niceness (the busy process shares it). Run it when nothing else
runs: the header shows the runnable threads and load it found, and every row's figure is
the median wall time in seconds, start-up included. A run past ``--timeout`` shows as
``>T``. Example::

    python tools/threads_table.py --data-dir /work/shared/data/mnist
    python tools/threads_table.py --only sample --repeat 1   # one row
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.files.images import save_png  # noqa: E402
from core.training.threads import SPIN_COUNT, WAIT_POLICY, others_running, usable_cores  # noqa: E402

COMMANDS = ("sample", "encode", "eval", "complete", "train", "plan")
CONDITIONS = ("quiet", "busy")
CONFIGS = ("old", "new")

PLAN_CODE = """
import json
from core.files.resources import bundled_model_path
from explorer.engine.render import RenderEngine
engine = RenderEngine(device="cpu", threaded=False, measure_plan=True)
engine.open_checkpoint(bundled_model_path())
plan = engine.measure_plan_now()
print(json.dumps({"threads": plan.threads, "decode_ms": plan.decode_ms}))
"""


def mnist_digits(data_dir: Path, n: int) -> np.ndarray:
    """The first ``n`` MNIST test digits, ``(n, 28, 28)`` uint8, read from the idx file."""
    with gzip.open(data_dir / "t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = f.read(16 + n * 28 * 28)
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, 28, 28)


def workloads(tmp: Path, data_dir: str) -> dict[str, list[str]]:
    """Each command's argv after ``python -m core`` (``plan``: a Python snippet)."""
    digits = mnist_digits(Path(data_dir), 8)
    images = []
    for k, digit in enumerate(digits):
        images.append(str(save_png(digit, tmp / "in" / f"digit_{k}.png")))
    mask = np.zeros((28, 28), np.uint8)
    mask[14:] = 255  # complete the lower half
    save_png(mask, tmp / "mask.png")
    slots = {"tmp": str(tmp), "data": data_dir}
    templates = {
        "sample": "sample bundled --n 16 --out {tmp}/s.png",
        "encode": "encode bundled IMAGES --out {tmp}/enc",
        "eval": "eval bundled --data-dir {data} --limit 500",
        "complete": "complete bundled IMAGE --mask {tmp}/mask.png --out {tmp}/done --samples 2 "
        "--steps 30 --json",
        "train": "train --dataset mnist --data-dir {data} --preset mnist-small --batch-size 32 "
        "--max-steps 30 --eval-every 1000 --eval-limit 64 --class-limit 5 --log-every 10 "
        "--progress none --out {tmp}/run --overwrite",
    }
    work = {}
    for name, template in templates.items():
        words = []
        for word in template.split():  # each word filled in alone: paths may hold spaces
            if word == "IMAGES":
                words += images
            elif word == "IMAGE":
                words.append(images[0])
            else:
                words.append(word.format(**slots))
        work[name] = words
    work["plan"] = ["-c", PLAN_CODE]
    return work


def environment(config: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (WAIT_POLICY, SPIN_COUNT)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env["QT_QPA_PLATFORM"] = "offscreen"
    if config == "old":
        env[SPIN_COUNT] = "300000"  # libgomp's default: the wait as torch had it
    return env


def argv(command: str, words: list[str], config: str) -> list[str]:
    if command == "plan":  # the explorer's own environment (old) or the passive wait (new)
        return [sys.executable, *words]
    extra = ["--threads", str(usable_cores())] if config == "old" else []
    return [sys.executable, "-m", "core", *words, *extra]


def run_once(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[float, str]:
    """Wall seconds (``inf`` past ``timeout``) and the last line printed."""
    start = time.perf_counter()
    try:
        out = subprocess.run(
            cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return float("inf"), ""
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({out.returncode}):\n{out.stderr}")
    lines = out.stdout.strip().splitlines()
    return seconds, lines[-1] if lines else ""


def busy_process(pin: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "while True: pass"]
    if pin:
        cmd = ["taskset", "-c", str(max(os.sched_getaffinity(0))), *cmd]
    return subprocess.Popen(cmd)


def shown(seconds: list[float], timeout: float, plan: list[str]) -> str:
    if plan:  # the render plan: chosen threads and the last run's decode figures
        last = json.loads(plan[-1])
        figures = "; ".join(
            f"{t}: " + "/".join(f"{ms:.0f}" for ms in by_batch.values())
            for t, by_batch in last["decode_ms"].items()
        )
        chosen = ",".join(str(json.loads(p)["threads"]) for p in plan)
        return f"{chosen} thr ({figures} ms)"
    if any(s == float("inf") for s in seconds):
        return f">{timeout:.0f}"
    return f"{statistics.median(seconds):.1f}"


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data", help="folder with MNIST's four .gz files")
    parser.add_argument("--only", help=f"comma-separated commands (default: {','.join(COMMANDS)})")
    parser.add_argument("--conditions", default="quiet,busy", help="quiet, busy or both")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each figure")
    parser.add_argument("--pin", action="store_true", help="pin the busy process to one core")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    opts = parser.parse_args(args)
    commands = opts.only.split(",") if opts.only else list(COMMANDS)
    conditions = opts.conditions.split(",")
    unknown = set(commands) - set(COMMANDS) or set(conditions) - set(CONDITIONS)
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")

    print(
        f"{usable_cores()} cores; at the start {others_running()} other runnable threads, "
        f"load average {os.getloadavg()[0]:.2f}; busy process {'pinned' if opts.pin else 'free'}"
        f"; median of {opts.repeat} wall times in s, start-up included\n"
    )
    header = [f"{c} {k}" for c in conditions for k in CONFIGS]
    print("| command | " + " | ".join(header) + " |")
    print("|---" * (len(header) + 1) + "|")
    with tempfile.TemporaryDirectory(prefix="threads-table-") as folder:
        work = workloads(Path(folder), opts.data_dir)
        for command in commands:
            cells = []
            for condition in conditions:
                busy = busy_process(opts.pin) if condition == "busy" else None
                try:
                    times: dict[str, list[float]] = {k: [] for k in CONFIGS}
                    plans: dict[str, list[str]] = {k: [] for k in CONFIGS}
                    for _ in range(opts.repeat):
                        for config in CONFIGS:  # interleaved: both see the same machine
                            env = environment(config)
                            if command == "plan" and config == "new":
                                env[WAIT_POLICY] = "PASSIVE"
                            s, last = run_once(
                                argv(command, work[command], config), env, opts.timeout
                            )
                            times[config].append(s)
                            if command == "plan" and last:
                                plans[config].append(last)
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
                cells += [shown(times[k], opts.timeout, plans[k]) for k in CONFIGS]
            print(f"| {command} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

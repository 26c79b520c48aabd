#!/usr/bin/env bash
# The README's screenshots, each page of the real window at 1366x768, from the repository
# root (offscreen: no display needed):
#
#   bash tools/readme_screenshots.sh MNIST_DIR [STEPS]
#
# writes resources/screenshot_explorer.png (the explorer page on the bundled model),
# resources/screenshot_images.png (two MNIST test digits dropped: the Images tab) and
# resources/screenshot_training.png (the training page following a real MNIST run of
# STEPS steps, default 400, trained here on the CPU and photographed once its third
# evaluation is in, then stopped). MODEL (default "--preset mnist-small"), BATCH (default
# 64) and THREADS (default: torch's choice) size that run: a small model on one thread
# keeps it to minutes on a busy CPU.
#
# Everything runs with HOME set to a fresh temporary folder holding the run and a link to
# the data, so the window shows "~/..." and no path of this machine.
set -eu
DATA=$(cd "${1:?usage: tools/readme_screenshots.sh MNIST_DIR [STEPS]}" && pwd)
STEPS=${2:-400}
PY=${PY:-python3}
SIZE=${SIZE:-1366x768}
MODEL=${MODEL:---preset mnist-small}
BATCH=${BATCH:-64}
THREADS=${THREADS:+--threads $THREADS}
OUT=$(pwd)/resources
export PYTHONUNBUFFERED=1 QT_QPA_PLATFORM=offscreen
HOME=$(mktemp -d)
export HOME
trap 'rm -rf "$HOME"' EXIT
mkdir -p "$HOME/data" "$HOME/digits"
ln -s "$DATA" "$HOME/data/mnist"

# Two test-set digits as PNG files, as a user would drop them.
"$PY" - "$HOME/data/mnist" "$HOME/digits" <<'EOF'
import sys
from pathlib import Path

from core.training.data import load_mnist
from core.files.images import save_png

images = load_mnist(Path(sys.argv[1]), train=False).images
for name, index in (("seven.png", 0), ("two.png", 1)):
    save_png(images[index][0].numpy(), Path(sys.argv[2]) / name)
EOF

"$PY" -m explorer --screenshot "$OUT/screenshot_explorer.png" --size "$SIZE"
"$PY" -m explorer --screenshot "$OUT/screenshot_images.png" --size "$SIZE" \
    --images "$HOME/digits/seven.png" "$HOME/digits/two.png" --tab images

# A real run, started from the command the training page shows, followed by the page.
RUN="$HOME/realnvp-runs/run-mnist"
mkdir -p "$RUN"
# shellcheck disable=SC2086  # MODEL is several arguments
(cd "$RUN" && exec "$PY" -m core train --progress json --dataset mnist \
    --data-dir "$HOME/data/mnist" $MODEL --batch-size "$BATCH" --lr 0.001 \
    --seed 0 --eval-limit 1000 --out "$RUN" --max-steps "$STEPS" --device cpu \
    --eval-every $((STEPS / 4)) --log-every 5 $THREADS >>events.jsonl 2>>trainer.log) &
TRAINER=$!
until [ "$(grep -c '"event": *"samples"' "$RUN/events.jsonl" 2>/dev/null || true)" -ge 3 ]; do
    kill -0 "$TRAINER" 2>/dev/null || { echo "the trainer ended early:" >&2; cat "$RUN/trainer.log" >&2; exit 1; }
    sleep 2
done
sleep 5  # a few more steps after the evaluation: the ETA has steps to go by
"$PY" -m explorer --screenshot "$OUT/screenshot_training.png" --size "$SIZE" --run "$RUN"
kill -TERM "$TRAINER"  # it saves latest.pt and ends
wait "$TRAINER" || true

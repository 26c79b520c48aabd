#!/usr/bin/env bash
# The CUDA checks for the speed work, in one run on a machine with an NVIDIA GPU, from the
# repository root (nothing is installed: it needs torch, numpy, pillow and pytest in $PY):
#
#   bash tools/gpu_check.sh OUT_DIR MNIST_DIR [SECONDS]
#
# Within SECONDS (default 500) it writes to OUT_DIR:
#   log.txt            GPU and torch versions, the CUDA tests (training, model, the render
#                      engine's CUDA graphs against eager), stderr of the steps below
#   bench.json         realnvp bench on CUDA: latencies; training eager and from a CUDA graph
#                      at batch 64 and 256; render figures for the bundled and the cifar10
#                      models, eager and replayed from CUDA graphs, with their agreement
#   gui_bundled.json   the explorer's slider-to-pixels on CUDA (when PySide6 is installed):
#   gui_cifar10.json   first pixels and whole grid, 1 and 16 images; *_no_graphs.json the
#                      same with --graphs off
#   bench_compile.json with COMPILE_BENCH=1: the torch.compile-d training step (CIFAR-10)
#   train.jsonl        events of an MNIST training run (mnist-small, bf16, CUDA graph) given
#                      the time that is left, stopped with SIGTERM (it saves and ends cleanly)
#   latest.pt best.pt  that run's checkpoints; samples.png its newest sample grid
#
# A dry run of the commands on a CPU: DEV=cpu SKIP_BENCH=1 bash tools/gpu_check.sh ...
set -u
OUT=${1:?usage: tools/gpu_check.sh OUT_DIR MNIST_DIR [SECONDS]}
DATA=${2:?usage: tools/gpu_check.sh OUT_DIR MNIST_DIR [SECONDS]}
BUDGET=${3:-500}
PY=${PY:-python3}
DEV=${DEV:-cuda}
TRAIN_ARGS=${TRAIN_ARGS:-}  # e.g. --compile or --no-cuda-graph
export PYTHONUNBUFFERED=1 REALNVP_MNIST_DIR="$DATA"
mkdir -p "$OUT"
T0=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - T0))); }
LOG="$OUT/log.txt"
section() { echo "== $1 (t=$(($(date +%s) - T0)) s)" >>"$LOG"; }

section env
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
  $PY -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda)"
  nproc; } >>"$LOG" 2>&1

section "CUDA tests"
TESTS="tests/test_train.py tests/test_model.py tests/test_graphs.py"
# The engine's tests need Qt; without PySide6 only the core ones run.
if $PY -c "import PySide6" 2>/dev/null; then
  TESTS="$TESTS tests/test_render_graphs.py"
  export QT_QPA_PLATFORM=offscreen
fi
timeout 150 $PY -m pytest -q -p no:cacheprovider $TESTS -k "cuda or autocast" -rs >>"$LOG" 2>&1
echo "pytest exit $?" >>"$LOG"

if [ -z "${SKIP_BENCH:-}" ]; then
  section "bench"
  timeout 180 $PY -m core bench --json --quick --device "$DEV" --train-batch 64 256 \
    --render-presets cifar10 >"$OUT/bench.json" 2>>"$LOG"
  echo "bench exit $?" >>"$LOG"
  if $PY -c "import PySide6" 2>/dev/null; then
    for graphs in on off; do
      section "GUI bench on $DEV, graphs $graphs (bundled, cifar10)"
      sfx=$([ "$graphs" = on ] && echo "" || echo "_no_graphs")
      timeout 120 $PY -m explorer_bench.gui --json --quick --device "$DEV" --graphs "$graphs" \
        >"$OUT/gui_bundled$sfx.json" 2>>"$LOG"
      echo "gui bench bundled graphs $graphs exit $?" >>"$LOG"
      timeout 180 $PY -m explorer_bench.gui --json --quick --device "$DEV" --graphs "$graphs" \
        --preset cifar10 >"$OUT/gui_cifar10$sfx.json" 2>>"$LOG"
      echo "gui bench cifar10 graphs $graphs exit $?" >>"$LOG"
    done
  fi
  if [ -n "${COMPILE_BENCH:-}" ]; then
    section "bench, compiled training step (cifar10)"
    timeout 300 $PY -m core bench --json --quick --device "$DEV" --presets cifar10 \
      --compile >"$OUT/bench_compile.json" 2>>"$LOG"
    echo "bench --compile exit $?" >>"$LOG"
  fi
fi

T=$(($(left) - 15))
section "training mnist-small for ${T} s"
if [ "$T" -gt 20 ]; then
  timeout -s TERM -k 30 "$T" $PY -m core train --dataset mnist --data-dir "$DATA" \
    --out /tmp/gpu_run --preset mnist-small --device "$DEV" --epochs 1000 \
    --eval-every 2000 --log-every 200 --progress json --seed 0 $TRAIN_ARGS \
    >"$OUT/train.jsonl" 2>>"$LOG"
  echo "train exit $?" >>"$LOG"
  cp /tmp/gpu_run/latest.pt /tmp/gpu_run/best.pt "$OUT/" 2>>"$LOG"
  last=$(ls /tmp/gpu_run/samples/*.png 2>/dev/null | tail -1)
  [ -n "$last" ] && cp "$last" "$OUT/samples.png"
fi
section done

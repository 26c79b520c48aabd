#!/usr/bin/env bash
# The CUDA checks for the speed work, in one run on a machine with an NVIDIA GPU, from the
# repository root (nothing is installed: it needs torch, numpy and pillow in $PY):
#
#   bash tools/gpu_check.sh OUT_DIR MNIST_DIR [SECONDS]
#
# Within SECONDS (default 500) it writes to OUT_DIR:
#   log.txt            GPU and torch versions, the CUDA tests, stderr of the steps below
#   bench.json         realnvp bench on CUDA: latencies, eager training at batch 64 and 256
#   bench_compile.json the same with the torch.compile-d training step (CIFAR-10 preset)
#   train.jsonl        events of an MNIST training run (mnist-small, bf16, compiled) given
#                      the time that is left, stopped with SIGTERM (it saves and ends cleanly)
#   latest.pt best.pt  that run's checkpoints; samples.png its newest sample grid
set -u
OUT=${1:?usage: tools/gpu_check.sh OUT_DIR MNIST_DIR [SECONDS]}
DATA=${2:?usage: tools/gpu_check.sh OUT_DIR MNIST_DIR [SECONDS]}
BUDGET=${3:-500}
PY=${PY:-python3}
DEV=${DEV:-cuda}          # DEV=cpu SKIP_BENCH=1 COMPILE= : a dry run of the commands on a CPU
COMPILE=${COMPILE---compile}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
T0=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - T0))); }
LOG="$OUT/log.txt"
section() { echo "== $1 (t=$(($(date +%s) - T0)) s)" >>"$LOG"; }

section env
{ nvidia-smi -L; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
  $PY -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
  nproc; } >>"$LOG" 2>&1

section "CUDA tests and the trainer's step tests"
timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_train.py tests/test_model.py \
  -k "cuda or skipped_step or resume or train_step or compile_failure" >>"$LOG" 2>&1
echo "pytest exit $?" >>"$LOG"

if [ -z "${SKIP_BENCH:-}" ]; then
section "bench, eager"
timeout 150 $PY -m core bench --json --device "$DEV" --no-gui --train-batch 64 256 \
  >"$OUT/bench.json" 2>>"$LOG"
echo "bench exit $?" >>"$LOG"

section "bench, compiled training step (cifar10)"
timeout 200 $PY -m core bench --json --quick --device "$DEV" --no-gui --presets cifar10 --compile \
  >"$OUT/bench_compile.json" 2>>"$LOG"
echo "bench --compile exit $?" >>"$LOG"
fi

T=$(($(left) - 15))
section "training mnist-small for ${T} s"
if [ "$T" -gt 30 ]; then
  timeout -s TERM -k 60 "$T" $PY -m core train --dataset mnist --data-dir "$DATA" \
    --out /tmp/gpu_run --preset mnist-small --device "$DEV" $COMPILE --epochs 1000 \
    --eval-every 2000 --log-every 200 --progress json --seed 0 \
    >"$OUT/train.jsonl" 2>>"$LOG"
  echo "train exit $?" >>"$LOG"
  cp /tmp/gpu_run/latest.pt /tmp/gpu_run/best.pt "$OUT/" 2>>"$LOG"
  last=$(ls /tmp/gpu_run/samples/*.png 2>/dev/null | tail -1)
  [ -n "$last" ] && cp "$last" "$OUT/samples.png"
fi
section done

#!/usr/bin/env bash
# The GPU checks of issue 11, as one script for a device machine (one GPU). About 6-8 minutes:
#   1. benchmarks/gpu_throughput.py: ResNet-50 and ResNet-18, bf16, channels_last, batch 256:
#      synthetic ceiling, CPU-decode and GPU-decode pipelines from local shards;
#   2. jobs/train_imagenet.py --use-gpu --num-workers 1 for 2 epochs on generated shards, with
#      --decode gpu and with --decode cpu (NCCL/AMP/channels_last through Ray Train): each epoch's
#      img/s and data wait are in the printed epoch lines.
# Usage: benchmarks/gpu_session.sh [OUT_DIR]      (make install first)
# The logs land in OUT_DIR; generated images, shards and checkpoints in WORK (default OUT_DIR/work).
# Each stage has its own time limit, so a stage that hangs still leaves the others' figures.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-gpu-session}}"
WORK="${WORK:-$OUT/work}"
mkdir -p "$OUT" "$WORK"
PY="${PYTHON:-.venv/bin/python}"
export RAY_USAGE_STATS_ENABLED=0 RAY_DATA_DISABLE_PROGRESS_BARS=1 MLFLOW_DISABLE_TELEMETRY=true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

timeout "${THROUGHPUT_TIMEOUT_S:-330}" "$PY" benchmarks/gpu_throughput.py --workdir "$WORK" --images 8000 \
    --steps 40 --warmup 8 2>&1 | tee "$OUT/gpu_throughput.txt"

# 2 epochs of ResNet-50 on the 8,000 generated images (train) + 512 of them (val), through the real job.
"$PY" - "$WORK" <<'PY'
import shutil, sys
from pathlib import Path
root = Path(sys.argv[1]) / "jpeg"
for i, path in enumerate(sorted((root / "train").glob("*/*.JPEG"))[:512]):
    (root / "val" / path.parent.name).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, root / "val" / path.parent.name / path.name)
PY
"$PY" jobs/prepare_imagenet.py --source "$WORK/jpeg" --output "$WORK/e2e-shards" --shard-size-mb 32 2>&1 |
    tail -3
for decode in gpu cpu; do
    timeout "${E2E_TIMEOUT_S:-150}" "$PY" jobs/train_imagenet.py --data "$WORK/e2e-shards" --arch resnet50 \
        --use-gpu --num-workers 1 --cpus-per-worker 1 --epochs 2 --batch-size 256 --decode "$decode" \
        --storage "$WORK/runs" --name "e2e-$decode" --no-mlflow 2>&1 | tee "$OUT/train_$decode.txt"
done
grep -h "epoch " "$OUT"/train_*.txt || true

#!/usr/bin/env bash
# The GPU checks of issue 26, as one script for a one-GPU machine that reaches no package index.
# About 8 minutes (at most 8.5: 60 + 280 + 2 x 70 s of stage limits, plus the shard preparation) (each stage has its own time limit, so a stage that hangs still leaves the
# others' figures). It prints, for the card it runs on:
#   0. nvImageCodec and nvJPEG installed from benchmarks/wheels/ (built here beforehand with
#      `python benchmarks/slim_wheels.py`: git-ignored, about 13 MiB, carried to the device);
#   1. benchmarks/decode_backends.py: whether the hardware JPEG engines are usable inside this VM;
#      decode-only img/s per backend (hardware, CUDA, CPU) with and without region decode, against
#      the decoder it replaced (torchvision's batched nvJPEG + per-image crops);
#   2. benchmarks/gpu_throughput.py: ResNet-50 and ResNet-18, bf16, channels_last, batch 256: the
#      synthetic ceiling, --decode cpu and --decode gpu (crop windows and whole images) feeding them,
#      then the ceiling and --decode gpu again with torch.compile (and its compile time);
#   3. jobs/train_imagenet.py --use-gpu --num-workers 1, 2 epochs of ResNet-50 per decode mode:
#      each epoch's img/s and data wait are in the printed epoch lines.
# Usage: benchmarks/gpu_session.sh [OUT_DIR]
# On the device tool: run(command="benchmarks/gpu_session.sh $OUT", carry=["benchmarks/wheels"],
# timeout_s=540). PYTHON picks the interpreter (default: .venv/bin/python if present, else python3).
# The logs land in OUT_DIR; generated images, shards and checkpoints in WORK (/tmp/gpu-session-work).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-gpu-session}}"
WORK="${WORK:-/tmp/gpu-session-work}"  # not under $OUT: only logs come back from the device
mkdir -p "$OUT" "$WORK"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PY="$PYTHON"
export RAY_USAGE_STATS_ENABLED=0 RAY_DATA_DISABLE_PROGRESS_BARS=1 MLFLOW_DISABLE_TELEMETRY=true
export PYTHONPATH="$PWD/platform${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/gpu.txt"

# 0. The decoder's wheels, from the working tree (no index on this machine).
if ! "$PY" -c "import nvidia.nvimgcodec" 2>/dev/null; then
    if ls benchmarks/wheels/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps benchmarks/wheels/*.whl 2>&1 | tail -2
    else
        echo "no nvImageCodec and no benchmarks/wheels/: run 'python benchmarks/slim_wheels.py' where pip reaches an index, and carry benchmarks/wheels" >&2
    fi
fi
"$PY" -c "import nvidia.nvimgcodec as n; print('nvImageCodec', n.__version__)" 2>/dev/null | tee -a "$OUT/gpu.txt"

# 1. Decode only, per backend (about 1 minute).
timeout "${DECODE_TIMEOUT_S:-60}" "$PY" benchmarks/decode_backends.py --workdir "$WORK" --images 2048 \
    --batch 256 2>&1 | tee "$OUT/decode_backends.txt"

# 2. Training throughput, both models, both decode paths, compile off and on (about 4 minutes).
timeout "${THROUGHPUT_TIMEOUT_S:-280}" "$PY" benchmarks/gpu_throughput.py --workdir "$WORK" --images 6000 \
    --steps 25 --warmup 6 --decode-ahead 2 --compile-modes off,on 2>&1 | tee "$OUT/gpu_throughput.txt"

# 3. 2 epochs of ResNet-50 on the 6,000 generated images (train) + 512 of them (val), through the real job.
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
    timeout "${E2E_TIMEOUT_S:-70}" "$PY" jobs/train_imagenet.py --data "$WORK/e2e-shards" --arch resnet50 \
        --use-gpu --num-workers 1 --cpus-per-worker 1 --epochs 2 --batch-size 256 --decode "$decode" \
        --storage "$WORK/runs" --name "e2e-$decode" --no-mlflow 2>&1 | tee "$OUT/train_$decode.txt"
done
grep -h "epoch \|decode:" "$OUT"/train_*.txt || true

#!/usr/bin/env bash
# The GPU check: the one command to run on a lent GPU machine (JAX and PyTorch there, no TensorFlow or Keras),
# from the project root, within 8 minutes. It writes to $OUT:
#   bench-float32.json, bench-mixed_bfloat16.json  scripts/bench.py at 150 px on JAX, 4,000 synthetic 500x375
#                        JPEGs: host stages, extract cold and warm, a frozen epoch with device augmentation, a
#                        finetune epoch, predict; each against the classic ImageDataGenerator recipe on the same
#                        GPU (run once, in float32), tlkit in float32 and in bfloat16
#   gpu-samples.csv      nvidia-smi's utilisation and memory every 200 ms meanwhile
#   tests.txt            the test files of device augmentation, distribution and resume, run on JAX there
#   gpu_check.json, gpu_check.md   all of it as one report and one table (scripts/gpu_report.py)
#
# Here, once, with the package registry at hand (the wheels the GPU machine lacks, into .whl):
#   scripts/gpu_check.sh --prepare
# There (the device tool, carrying .whl):
#   bash scripts/gpu_check.sh
# Anywhere, in a few minutes on a CPU, with tiny sizes (CI runs it so that it cannot rot):
#   OUT=/tmp/check bash scripts/gpu_check.sh --dry-run
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-run}
WHEELS=.whl
PYTHON=${PYTHON:-python3}  # the interpreter (tests give their own)

if [ "$MODE" = --prepare ]; then
    grep -qx '/.whl/' .git/info/exclude 2> /dev/null || echo /.whl/ >> .git/info/exclude
    sh ../shared/tools/device-wheels.sh "$WHEELS"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        -d "$WHEELS" pytest pluggy iniconfig packaging pygments pytest-xdist execnet
    ls "$WHEELS"
    exit 0
fi

OUT=${OUT:?set OUT to the folder the results go to}
mkdir -p "$OUT"
if ! "$PYTHON" -c "import keras" 2> /dev/null; then  # the GPU machine: the carried wheels
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false  # GPU memory as used, not as reserved
TEST_FILES="tests/test_train.py tests/test_distribute.py tests/test_resume.py"
if [ "$MODE" = --dry-run ]; then
    SIZES=(--images 16 --image-size 32 --batch-size 8 --host-images 64 --predict-images 8 --repeat 1 --weights none)
    TESTS=(--collect-only -q -p no:cacheprovider)
    LIMITS=(600 300 120)
else
    SIZES=(--images 4000 --image-size 150 --batch-size 64 --host-images 4000 --predict-images 1000 --repeat 1)
    TESTS=(-q -p no:cacheprovider -n 4 -x)
    LIMITS=(270 110 70)
fi

SAMPLER=
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 \
        > "$OUT/gpu-samples.csv" &
    SAMPLER=$!
    nvidia-smi > "$OUT/nvidia-smi.txt" || true
fi
trap '[ -n "$SAMPLER" ] && kill "$SAMPLER" 2> /dev/null || true' EXIT

WORK=$(mktemp -d)
STAGES=feed,decode,transfer,extract,frozen,finetune,predict
timeout "${LIMITS[0]}" "$PYTHON" scripts/bench.py "${SIZES[@]}" --stages "$STAGES" --workdir "$WORK" \
    --json "$OUT/bench-float32.json" > "$OUT/bench-float32.txt" 2>&1 || echo "bench float32: exit $?"
if [ -f "$OUT/bench-float32.json" ]; then
    timeout "${LIMITS[1]}" "$PYTHON" scripts/bench.py "${SIZES[@]}" --stages extract,frozen,finetune \
        --precision mixed_bfloat16 --classic-from "$OUT/bench-float32.json" --workdir "$WORK" \
        --json "$OUT/bench-mixed_bfloat16.json" > "$OUT/bench-mixed_bfloat16.txt" 2>&1 \
        || echo "bench mixed_bfloat16: exit $?"
fi
# shellcheck disable=SC2086
timeout "${LIMITS[2]}" "$PYTHON" -m pytest $TEST_FILES "${TESTS[@]}" > "$OUT/tests.txt" 2>&1 || echo "tests: exit $?"
rm -rf "$WORK"

BENCHES=()
for precision in float32 mixed_bfloat16; do
    [ -f "$OUT/bench-$precision.json" ] && BENCHES+=(--bench "$precision=$OUT/bench-$precision.json")
done
[ ${#BENCHES[@]} -gt 0 ] || { echo "no benchmark finished: see $OUT/bench-float32.txt"; exit 1; }
"$PYTHON" scripts/gpu_report.py "${BENCHES[@]}" --samples "$OUT/gpu-samples.csv" --tests "$OUT/tests.txt" --out "$OUT"

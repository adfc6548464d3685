#!/usr/bin/env bash
# One command for a machine with a CUDA GPU (e.g. an H100 with torch 2.11 + Triton 3.6):
#   bash scripts/gpu_check.sh
# 1. installs fastsrnn in place (no dependency changes), 2. builds the CUDA extension,
# 3. runs the GPU tests (tests/test_gpu.py) and the CUDA source checks, 4. benchmarks the
# GPU backends with fastsrnn.tools.bench (graphs on/off, fp32/bf16).
# Logs go to $GPU_CHECK_OUT (default ./gpu_check_out). Exit status: the tests' status.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${GPU_CHECK_OUT:-gpu_check_out}"
mkdir -p "$OUT"

echo "== install"
python -m pip install -q --no-deps -e . || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"
python - <<'PY' | tee "$OUT/versions.txt"
import torch
try:
    import triton
    tv = triton.__version__
except ImportError:
    tv = "absent"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {tv}, "
      f"device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
PY

echo "== build the CUDA extension"
python -m fastsrnn.ops.build cuda 2>&1 | tee "$OUT/build.txt"

echo "== GPU tests"
python -m pytest -q -rs tests/test_gpu.py tests/test_cuda_sources.py 2>&1 | tee "$OUT/tests.txt"
TESTS=${PIPESTATUS[0]}

echo "== benchmarks (correctness against eager first, then the table)"
python -m fastsrnn.tools.bench --device cuda --presets ${GPU_CHECK_PRESETS:-dadabots-2tier tiny} --n-seq 1 8 32 128 \
    --backends eager triton triton:nograph cuda cuda:nograph triton:bf16 cuda:bf16 \
    --json "$OUT/bench.json" ${GPU_CHECK_BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.txt"
BENCH=${PIPESTATUS[0]}
echo "== done: tests exit $TESTS, bench exit $BENCH; logs in $OUT (paste bench.txt's table into BENCHMARKS.md)"
[ "$TESTS" -eq 0 ] && [ "$BENCH" -eq 0 ]

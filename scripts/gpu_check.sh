#!/usr/bin/env bash
# One command for a machine with a CUDA GPU (e.g. a bare H100 image with torch 2.11 + Triton 3.6,
# no network, no soundfile/soxr/cffi), in under 10 minutes:
#   GPU_CHECK_OUT=DIR bash scripts/gpu_check.sh
# first measures the latencies that step 2 of the GPU work rests on, in about half a minute
#    (benchmarks/gpu_latency.py builds csrc/cuda/microbench/latency.cu for sm_90a; latency.json), then
# 0. wheels placed beside the project in .whl/ (../shared/gpu/wheels.sh: soundfile, soxr, ...)
#    are installed into /tmp/site first; generation, the GPU tests and the bench need none of them,
# 1. installs fastsrnn in place, offline (--no-deps --no-build-isolation: nothing is downloaded),
# 2. records versions and nvidia-smi, 3. builds the CUDA extension, 4. runs the GPU tests,
# 5. benchmarks the GPU backends with fastsrnn.tools.bench at n_seq 1, 16, 128 (graphs on/off,
#    fp32/bf16; correctness against eager first), 6. times training steps (fastsrnn bench --train:
#    dadabots-2tier, B 128 x 1,024 samples; fp32, amp bf16, torch.compile; first-step loss checked),
# 7. profiles the GPU backends (benchmarks/gpu_profile.py: the n_seq sweep behind auto's crossover,
#    then each kernel's device time per frame) with whatever time is left.
# Every step runs under `timeout` within one overall budget (GPU_CHECK_BUDGET seconds, default
# 570); a failed or timed-out step is reported and the next one still runs. Each step's output
# goes to $GPU_CHECK_OUT/<step>.txt (default ./gpu_check_out), the bench's results to bench.json
# (the training bench's to train_bench.json),
# and a summary of every step's status to summary.txt. Exit status: 0 when every step passed.
# GPU_CHECK_PRESETS and GPU_CHECK_BENCH_ARGS change the bench's presets and add arguments;
# GPU_CHECK_PYTEST_ARGS adds pytest arguments to both test runs (the GPU cases, then the rest);
# GPU_CHECK_WORKERS sets pytest-xdist's workers where it is installed (default 8);
# GPU_CHECK_CPU_TESTS=0 skips the second run (the same files' CPU cases, which CI runs anyway) to
# leave a short lease's seconds to the bench.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${GPU_CHECK_OUT:-gpu_check_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
BUDGET="${GPU_CHECK_BUDGET:-570}"
PY="$(command -v python || command -v python3)"
# The test files with GPU cases (the `gpu` mark) and the GPU compile checks; missing ones are skipped.
GPU_TESTS="tests/test_backends.py tests/test_ops.py tests/test_graph_chunks.py
    tests/test_frame_step.py tests/test_golden.py tests/test_cuda_sources.py tests/test_triton_compile.py"
SUMMARY=()
FAILED=0

# step NAME CAP RESERVE CMD...: run CMD under `timeout`, at most CAP seconds and never into the
# RESERVE seconds kept for the steps after it; output to $OUT/NAME.txt; status into the summary.
step() {
    local name="$1" cap="$2" reserve="$3"
    shift 3
    local left=$((BUDGET - SECONDS - reserve))
    local limit=$((cap < left ? cap : left))
    ((limit < 10)) && limit=10
    echo "== $name (at most ${limit} s)"
    local t0=$SECONDS
    # `timeout` runs programs, not shell functions: a function runs in a child bash (export -f below).
    if declare -F "$1" >/dev/null; then set -- bash -c "$1"; fi
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]} status
    case $rc in
        0) status="ok" ;;
        124 | 137) status="TIMEOUT after ${limit} s" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    ((rc != 0)) && FAILED=1
    SUMMARY+=("$(printf '%-10s %-26s %4d s' "$name" "$status" $((SECONDS - t0)))")
    return "$rc"
}

install_wheels() {  # the audio libraries, if wheels.sh put their wheels here (not needed for the GPU work)
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
}

install() {
    # --no-build-isolation: pip would otherwise fetch setuptools into a fresh build environment.
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . && return 0
    echo "== retrying with PIP_BREAK_SYSTEM_PACKAGES=1 (an externally managed Python?)"
    PIP_BREAK_SYSTEM_PACKAGES=1 "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e .
}

versions() {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv || true
    "$PY" - <<'PY'
import platform
from importlib.metadata import PackageNotFoundError, version

import torch

print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda})")
for name in ("triton", "numpy", "ninja", "soundfile", "soxr", "pytest", "fastsrnn"):
    try:
        print(f"{name} {version(name)}")
    except PackageNotFoundError:
        print(f"{name} absent")
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none (no CUDA device)")
PY
}

gpu_tests() {
    local files=() rc1 rc2
    for f in $GPU_TESTS; do
        [ -f "$f" ] && files+=("$f")
    done
    if ! "$PY" -c "import pytest" 2>/dev/null; then
        echo "pytest is not installed here: put its wheels in .whl/ first, from the project's root:"
        echo "  bash ../shared/gpu/wheels.sh pytest pluggy iniconfig packaging"
        return 1
    fi
    # In parallel where pytest-xdist is installed (the GPU image has it; tests/conftest.py gives
    # each worker its share of the cores), each test under pytest-timeout's thread method where
    # that is installed: a hung test is named, its stacks dumped, and the others still run.
    local extra=()
    "$PY" -c "import xdist" 2>/dev/null && extra+=(-n "${GPU_CHECK_WORKERS:-8}")
    "$PY" -c "import pytest_timeout" 2>/dev/null && extra+=(--timeout 120 --timeout-method thread)
    # The cases that need the GPU first (the `gpu` mark), then the rest of the same files (CPU cases,
    # compile checks) with whatever time is left. --continue-on-collection-errors: one test file
    # broken by work in progress must not hide the others' results.
    # shellcheck disable=SC2086  # extra arguments are a word list
    "$PY" -m pytest -v -rs -p no:cacheprovider --continue-on-collection-errors -m "gpu and not interpret" \
        "${extra[@]}" "${files[@]}" ${GPU_CHECK_PYTEST_ARGS:-}
    rc1=$?
    ((rc1 == 5)) && rc1=0  # no test selected
    if [ "${GPU_CHECK_CPU_TESTS:-1}" = 0 ]; then
        echo "(GPU_CHECK_CPU_TESTS=0: the CPU cases of these files are left to CI)"
        return $((rc1 != 0))
    fi
    # shellcheck disable=SC2086
    "$PY" -m pytest -q -rs -p no:cacheprovider --continue-on-collection-errors -m "not gpu and not interpret" \
        "${extra[@]}" "${files[@]}" ${GPU_CHECK_PYTEST_ARGS:-}
    rc2=$?
    ((rc2 == 5)) && rc2=0
    return $((rc1 != 0 || rc2 != 0))
}

bench() {
    # shellcheck disable=SC2086  # the presets and extra arguments are word lists
    "$PY" -m fastsrnn.tools.bench --device cuda --presets ${GPU_CHECK_PRESETS:-dadabots-2tier tiny samplernn-pytorch-3tier} \
        --n-seq 1 16 128 --backends eager triton triton:nograph cuda cuda:nograph triton:bf16 cuda:bf16 \
        --json "$OUT/bench.json" ${GPU_CHECK_BENCH_ARGS:-}
}

train_bench() {
    # compile's first step compiles forward and backward (tens of seconds): the fp32 and bf16 rows print first.
    "$PY" -m fastsrnn.tools.bench --train --device cuda --presets dadabots-2tier --variants fp32 bf16 compile \
        --steps 10 --warmup 3 --json "$OUT/train_bench.json"
}

export PY OUT GPU_TESTS
export -f install_wheels install versions gpu_tests bench train_bench
# First: needs only nvcc and the Python standard library (no install); killed at 60 s.
step latency 90 480 "$PY" -m benchmarks.gpu_latency --out "$OUT" --timeout 60
if compgen -G ".whl/*.whl" >/dev/null; then
    step wheels 60 480 install_wheels && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
step install 90 400 install
step versions 30 380 versions
step build 150 300 "$PY" -m fastsrnn.ops.build cuda
step tests 120 200 gpu_tests
step bench 600 120 bench
step train_bench 70 45 train_bench
# Where each backend's frame time goes and auto's crossover (BENCHMARKS.md), with what time is left.
step profile 120 0 "$PY" -m benchmarks.gpu_profile --json "$OUT/profile.json"

{
    echo "== summary ($SECONDS s in all, budget $BUDGET s; logs in $OUT)"
    printf '%s\n' "${SUMMARY[@]}"
    ((FAILED)) || echo "all steps passed (paste bench.txt's and train_bench.txt's tables into BENCHMARKS.md)"
} | tee "$OUT/summary.txt"
exit "$FAILED"

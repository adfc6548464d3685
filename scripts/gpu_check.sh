#!/usr/bin/env bash
# One command for a machine with a CUDA GPU (e.g. an H100 with torch 2.11 + Triton 3.6):
#   bash scripts/gpu_check.sh
# 1. installs fastsrnn in place (no dependency changes), 2. builds the CUDA extension,
# 3. runs the GPU tests (tests/test_gpu.py) and the CUDA source checks, 4. benchmarks the
# GPU backends (fastsrnn.bench when it exists, plus this script's own samples/s table).
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
python -m fastsrnn.build cuda 2>&1 | tee "$OUT/build.txt"

echo "== GPU tests"
python -m pytest -q -rs tests/test_gpu.py tests/test_cuda_sources.py 2>&1 | tee "$OUT/tests.txt"
TESTS=${PIPESTATUS[0]}

echo "== benchmarks"
if python -c "import fastsrnn.bench" 2>/dev/null; then
    python -m fastsrnn.bench --device cuda ${GPU_CHECK_BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.txt"
else
    echo "(fastsrnn.bench not present: only the table below)"
fi
python - <<'PY' 2>&1 | tee "$OUT/backends.txt"
# samples/s of each GPU backend on the paper's preset (random weights), after a warm-up;
# a backend is timed only if its first frames draw the eager reference's integers.
import time
import torch
from fastsrnn import SampleRNN, SampleRNNConfig
from fastsrnn.backends import DecodeState, make_backend

cfg = SampleRNNConfig.from_name("dadabots-2tier")
torch.manual_seed(0)
model = SampleRNN(cfg).eval().cuda()
F, Q = cfg.frame_size, cfg.q_levels

def run(be, B, frames, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    st = DecodeState(model.initial_state(B), torch.randint(0, Q, (B, F), device="cuda", generator=g))
    inv_t = torch.ones(B, device="cuda")
    us = torch.rand(frames, B, F, device="cuda", generator=g)
    outs = [be.step_frame(st, us[n], inv_t) for n in range(frames)]
    return torch.cat(outs, 1)

print(f"{'backend':28s} {'B':>4s} {'samples/s':>12s} {'x realtime':>10s}  check")
for B in (1, 16, 128):
    eager = make_backend("eager", model, "cuda")
    want = run(eager, B, 2)
    for name, opts in [("eager", {}), ("triton", dict(graphs=False)), ("triton", dict(graphs=True)),
                       ("cuda", dict(graphs=False)), ("cuda", dict(graphs=True)),
                       ("triton", dict(dtype=torch.bfloat16)), ("cuda", dict(dtype=torch.bfloat16))]:
        label = name + "".join(f" {k}={str(v).replace('torch.', '')}" for k, v in opts.items())
        try:
            be = make_backend(name, model, "cuda", **opts)
            got = run(be, B, 2)
            ok = "same draws" if torch.equal(got, want) else f"{(got != want).float().mean():.1%} draws differ"
            if name != "eager" and "dtype" not in opts and not torch.equal(got, want):
                print(f"{label:28s} {B:4d} {'-':>12s} {'-':>10s}  REFUSED: {ok}")
                continue
            run(be, B, 3)  # warm-up (graph capture, compilation)
            frames = 20 if name == "eager" else 100
            torch.cuda.synchronize(); t0 = time.perf_counter()
            run(be, B, frames)
            torch.cuda.synchronize(); dt = time.perf_counter() - t0
            sps = B * F * frames / dt
            print(f"{label:28s} {B:4d} {sps:12,.0f} {sps / cfg.sample_rate:10.1f}  {ok}")
        except Exception as e:  # report and go on: the table shows every backend's fate
            print(f"{label:28s} {B:4d} {'-':>12s} {'-':>10s}  FAILED: {type(e).__name__}: {str(e)[:200]}")
PY
echo "== logs in $OUT; tests exit status $TESTS"
exit "$TESTS"

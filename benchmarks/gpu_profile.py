"""Where a GPU backend's frame time goes, and where the auto choice should switch backends.

    python -m benchmarks.gpu_profile [--preset dadabots-2tier] [--json PATH]

Two parts, both on one CUDA device, in one process:
1. a sweep of ms/frame over n_seq (1 2 4 8 16 32 64 128) for cuda and triton, fp32 and bf16
   (fastsrnn.tools.bench_measure.time_frames: the bench's own timer), so that
   fastsrnn/backends/__init__.py's auto rule can follow the measured crossover;
2. (--paths) the Triton backend's two sample-tier paths, "small" and "split", against each other
   over the same n_seq, so that kernels/sample_frame.py's SPLIT_MIN_B / SPLIT_MIN_H follow them;
3. torch.profiler over ``step_frames`` of a few (n_seq, variant) pairs: each CUDA kernel's device
   time per frame, largest first, so the next optimisation aims at the kernel that costs most.
No correctness gate here (``fastsrnn bench`` has it); this is a diagnostic, not a benchmark row.
"""
from __future__ import annotations

import argparse
import json

import torch
from torch.autograd import DeviceType

from fastsrnn.backends import make_backend
from fastsrnn.config import SampleRNNConfig
from fastsrnn.model import SampleRNN
from fastsrnn.ops.sampling import Sampling
from fastsrnn.tools.bench_measure import fresh_state, parse_variant, time_frames

DEVICE = "cuda"
SWEEP_N_SEQ = (1, 2, 4, 8, 16, 32, 64, 128)
SWEEP_VARIANTS = ("cuda", "triton", "cuda:bf16", "triton:bf16")
# Without graphs, so that the profiler sees each kernel (the kernels are the same ones a graph replays).
PROFILED = ((1, "cuda:nograph"), (1, "triton:nograph"), (16, "cuda:nograph"), (128, "cuda:nograph"),
            (128, "triton:nograph"), (128, "triton:bf16,nograph"))


def backend(model, variant: str, n_seq: int):
    name, opts = parse_variant(variant)
    return make_backend(name, model, DEVICE, n_seq=n_seq, **opts)


def _row(model, make, frames: int, repeats: int, what: str) -> dict:
    """ms/frame of the backends ``make(n_seq)`` gives, over SWEEP_N_SEQ: {n_seq: ms, or None where
    making or timing it failed (a path that does not compile for a shape: said, and the sweep goes on)}."""
    row = {}
    for n in SWEEP_N_SEQ:
        try:
            row[n] = time_frames(model, make(n), n, DEVICE, frames=frames, repeats=repeats).seconds_per_frame * 1e3
        except Exception as e:  # noqa: BLE001  (a diagnostic: report any failure, keep sweeping)
            print(f"  {what} n_seq {n} failed: {type(e).__name__}: {str(e)[:200]}")
            row[n] = None
    return row


def _cells(row: dict) -> str:
    return " | ".join("fail" if row[n] is None else f"{row[n]:.3f}" for n in SWEEP_N_SEQ)


def sweep(model, frames: int, repeats: int) -> dict:
    out = {}
    print("ms/frame (median of", repeats, "repeats of", frames, "frames)")
    print("| variant | " + " | ".join(f"n_seq {n}" for n in SWEEP_N_SEQ) + " |")
    for variant in SWEEP_VARIANTS:
        out[variant] = _row(model, lambda n: backend(model, variant, n), frames, repeats, variant)
        print(f"| {variant} | {_cells(out[variant])} |", flush=True)
    return out


def path_sweep(model, frames: int, repeats: int) -> dict:
    out = {}
    print("triton sample-tier paths, ms/frame")
    print("| dtype | path | " + " | ".join(f"n_seq {n}" for n in SWEEP_N_SEQ) + " |")
    for dtype in (torch.float32, torch.bfloat16):
        for path in ("small", "split"):
            key = f"{dtype} {path}"
            out[key] = _row(model, lambda n: make_backend("triton", model, DEVICE, n_seq=n, dtype=dtype,
                                                          frame_dtype=dtype, sample_path=path),
                            frames, repeats, f"{path} {dtype}")
            print(f"| {str(dtype)[6:]} | {path} | {_cells(out[key])} |", flush=True)
    return out


def profile(model, n_seq: int, variant: str, frames: int, top: int) -> list:
    be = backend(model, variant, n_seq)
    F = model.cfg.frame_size
    state = fresh_state(model, n_seq, "cuda", 3)
    u = torch.rand(frames, n_seq, F, device="cuda")
    sampling = Sampling(torch.ones(n_seq, device="cuda"))
    be.step_frames(state, u, sampling)  # builds, compiles, graph captures
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        be.step_frames(state, u, sampling)
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():  # device-side events only: the kernels themselves
        if e.device_type != DeviceType.CUDA:
            continue
        us = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        rows.append({"kernel": e.key[:90], "us_per_frame": us / frames, "calls_per_frame": e.count / frames})
    rows.sort(key=lambda r: -r["us_per_frame"])
    total = sum(r["us_per_frame"] for r in rows)
    print(f"\n{variant} n_seq {n_seq}: {total:.1f} us of kernels per frame")
    for r in rows[:top]:
        print(f"  {r['us_per_frame']:9.1f} us  x{r['calls_per_frame']:6.1f}  {r['kernel']}")
    return rows[:top]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="dadabots-2tier", help="model preset [default: dadabots-2tier]")
    p.add_argument("--frames", type=int, default=16, help="frames per timed call [default: 16]")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats, median kept [default: 5]")
    p.add_argument("--top", type=int, default=8, help="kernels listed per profile [default: 8]")
    p.add_argument("--no-sweep", action="store_true", help="skip the backend sweep")
    p.add_argument("--paths", action="store_true", help="also sweep the Triton sample-tier paths")
    p.add_argument("--no-profile", action="store_true", help="skip the kernel profiles")
    p.add_argument("--json", default=None, help="write the sweep and the profiles here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu_profile needs a CUDA device")
    model = SampleRNN(SampleRNNConfig.from_name(args.preset)).eval().to("cuda")
    result = {"device": torch.cuda.get_device_name(), "preset": args.preset}
    if not args.no_sweep:
        result["sweep_ms_per_frame"] = sweep(model, args.frames, args.repeats)
    if args.paths:
        result["triton_paths_ms_per_frame"] = path_sweep(model, args.frames, args.repeats)
    if not args.no_profile:
        result["profiles"] = {f"{v} n_seq {n}": profile(model, n, v, args.frames, args.top)
                              for n, v in PROFILED}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What each generation precision costs a trained model: teacher-forced test NLL against fp32.

    python -m benchmarks.precision_quality CHECKPOINT DATA [--seconds 8] [--n-seq 8] [--backend cpu]

DATA is the prepared dataset the checkpoint was trained on; its test split (the first --n-seq
chunks, --seconds each) is fed to the model through --backend with fp32 weights and with each
lower precision's (fastsrnn/generation/precision.py), and the table gives each NLL, the delta
against fp32 and the guard's verdict (MAX_NLL_DELTA_BITS). Also one variant outside the
precisions: the int8 frame tier with an fp32 sample tier (the int8 precision's is bf16).
"""
from __future__ import annotations

import argparse
import time

import torch

import fastsrnn
from fastsrnn.generation.precision import (
    MAX_NLL_DELTA_BITS,
    PRECISIONS,
    dataset_test_levels,
    precision_options,
    teacher_forced_nll,
)

EXTRA = {"int8 frame tier, fp32 sample tier": {"frame_dtype": torch.int8}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a fastsrnn checkpoint (.pt)")
    p.add_argument("data", help="the prepared dataset it was trained on (its test split is used)")
    p.add_argument("--seconds", type=float, default=8.0, help="seconds of each test chunk [default: 8]")
    p.add_argument("--n-seq", type=int, default=8, help="test chunks [default: 8]")
    p.add_argument("--backend", default="cpu", help="generation backend that runs the teacher forcing [default: cpu]")
    args = p.parse_args(argv)
    model = fastsrnn.load(args.checkpoint)
    levels = dataset_test_levels(args.data, model.cfg, args.n_seq, args.seconds)
    seconds = levels.shape[1] / model.cfg.sample_rate
    print(f"{args.checkpoint}: test split of {args.data}: {levels.shape[0]} chunks x {seconds:.1f} s, "
          f"backend {args.backend}")
    variants = {name: precision_options(name) for name in PRECISIONS} | EXTRA
    rows, ref = [], None
    for name, opts in variants.items():
        t = time.perf_counter()
        nll = teacher_forced_nll(model, levels, args.backend, **opts)
        ref = nll if ref is None else ref
        rows.append((name, nll, nll - ref, time.perf_counter() - t))
    print("| weights | test NLL, bits/sample | vs fp32 | guard | seconds |")
    print("|---|---:|---:|---|---:|")
    for name, nll, delta, sec in rows:
        verdict = "reference" if name == "fp32" else ("passes" if delta <= MAX_NLL_DELTA_BITS else "refused")
        print(f"| {name} | {nll:.5f} | {delta:+.5f} | {verdict} | {sec:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The cpu backend's two parts at 1 and 2 threads, and a projection to 8 and 16 cores.

    python -m benchmarks.thread_projection [--preset dadabots-2tier] [--bandwidth 60 100]

Measured here, one sequence: the fused frame step (streams the frame tier's weights from DRAM)
and the F fused sample steps (W3, Wo from cache), each at 1 and 2 OpenMP threads, per weight
format. Projected (a model, not a measurement): on n cores with DRAM bandwidth BW GB/s,

    frame step  = max(bytes / BW, frame step at 1 thread / n)   (a stream: cores until BW binds)
    sample steps = sample steps at 2 threads x 2 / n, but no less than at 2 threads x 0.5
                   (per-step thread barriers: 16 steps of 1.3 M multiply-adds split n ways
                   stop paying; halving again past 4 cores is all this assumes)

and samples/s = F / (frame step + sample steps). BW defaults to 60 and 100 GB/s (a dual-channel
DDR5 desktop or laptop; a quad-channel workstation).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from fastsrnn.config import SampleRNNConfig
from fastsrnn.model import RNNState, SampleRNN
from fastsrnn.ops.export import export_inference
from fastsrnn.ops.frame_step import frame_step_cpu
from fastsrnn.ops.sample_frame import sample_frame_cpu
from fastsrnn.ops.sampling import Sampling

FORMATS = {"fp32": (torch.float32, torch.float32), "bf16": (torch.bfloat16, torch.bfloat16),
           "int8frame": (torch.float32, torch.int8), "int8": (torch.bfloat16, torch.int8)}  # bench's variant names


def frame_bytes(w) -> int:
    mats = w.w_ih + w.w_hh + w.skip_w + [w.up_w]
    return sum(m.numel() * m.element_size() for m in mats)


def time_parts(w, nt: int, frames: int):
    """Median seconds of the frame step and of the F sample steps, alternated as generation runs them."""
    cfg = w.cfg
    g = torch.Generator().manual_seed(0)
    window = torch.randint(0, cfg.q_levels, (1, cfg.frame_size), generator=g)
    st = RNNState(torch.zeros(cfg.n_rnn, 1, cfg.dim), torch.zeros(cfg.n_rnn, 1, cfg.dim))
    out = torch.empty(1, cfg.frame_size, dtype=torch.long)
    sampling = Sampling(torch.ones(1))
    fs, ss = [], []
    for _ in range(frames + 2):
        t0 = time.perf_counter()
        cond = frame_step_cpu(w, window, st, nt)
        t1 = time.perf_counter()
        sample_frame_cpu(w.table, cond, w.w3, w.b3, w.wo, w.bo, window, torch.rand(1, cfg.frame_size, generator=g),
                         sampling, out, num_threads=nt)
        t2 = time.perf_counter()
        fs.append(t1 - t0), ss.append(t2 - t1)
    return statistics.median(fs[2:]), statistics.median(ss[2:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="dadabots-2tier", help="model preset [default: dadabots-2tier]")
    p.add_argument("--frames", type=int, default=16, help="timed frames per case [default: 16]")
    p.add_argument("--bandwidth", type=float, nargs="+", default=[60.0, 100.0],
                   help="DRAM GB/s of the projected machines [default: 60 100]")
    args = p.parse_args(argv)
    cfg = SampleRNNConfig.from_name(args.preset)
    model = SampleRNN(cfg).eval()
    F = cfg.frame_size
    print(f"{args.preset}, one sequence; measured ms (median of {args.frames} frames) and projected samples/s")
    head = "| weights | MB/frame | frame step 1t | 2t | sample steps 1t | 2t | samples/s 1t | 2t |"
    head += "".join(f" 8 cores {bw:g} GB/s | 16 cores {bw:g} GB/s |" for bw in args.bandwidth)
    print(head)
    print("|---|" + "---:|" * (7 + 2 * len(args.bandwidth)))
    for name, (dtype, frame_dtype) in FORMATS.items():
        w = export_inference(model).to("cpu", dtype, frame_dtype)
        mb = frame_bytes(w) / 1e6
        (f1, s1), (f2, s2) = time_parts(w, 1, args.frames), time_parts(w, 2, args.frames)
        cells = [f"{mb:.0f}", f"{f1 * 1e3:.2f}", f"{f2 * 1e3:.2f}", f"{s1 * 1e3:.2f}", f"{s2 * 1e3:.2f}",
                 f"{F / (f1 + s1):,.0f}", f"{F / (f2 + s2):,.0f}"]
        for bw in args.bandwidth:
            for n in (8, 16):
                frame = max(mb / 1e3 / bw, f1 / n)
                sample = max(s2 * 2 / n, s2 * 0.5)
                cells.append(f"{F / (frame + sample):,.0f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Does hiding the frame step's W_hh h behind the sample steps pay on this CPU?

    python -m benchmarks.overlap [--preset dadabots-2tier] [--precision fp32 bf16 int8] [--frames 16]

For every layer, W_hh h_t depends only on the state after frame t's frame step, not on the
samples frame t draws: it could stream while frame t's F sample steps run, leaving the next frame
step only its W_ih products and the gates. This times, per frame at one sequence, in one process:

  serial   the cpu backend's order: the fused C++ frame step, then the F sample steps (threads T);
  split    the same work with W_hh h as its own product (linear_cpu) before the rest of the step;
  overlap  W_hh h for the next frame on a second host thread (1 OpenMP thread) while the sample
           steps run on 1 thread, then the rest of the frame step on T threads.

and checks that the three give the same conditioning, state and samples. A diagnostic for the
overlap question of the CPU-floor issue, not a backend: see BENCHMARKS.md for what it showed.
"""
from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from fastsrnn.config import SampleRNNConfig
from fastsrnn.model import RNNState, SampleRNN
from fastsrnn.ops.export import export_inference
from fastsrnn.ops.frame_step import _scale, frame_step_cpu, frame_step_ref, linear_cpu
from fastsrnn.ops.sample_frame import sample_frame_cpu
from fastsrnn.ops.sampling import Sampling

FRAME_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}


def recurrent_products(w, h, nt):
    """W_hh h + b_hh for every layer: what the next frame step needs of the current state."""
    return [linear_cpu(h[i], w.w_hh[i], w.b_hh[i], nt, scale=_scale(w, "w_hh", i)) for i in range(w.cfg.n_rnn)]


def frame_step_rest(w, window, rnn, gh, nt):
    """frame_step_ref with the recurrent products ``gh`` already computed: its W_hh products are
    looked up, every other product runs in linear_cpu."""
    given = {id(w.w_hh[i]): gh[i] for i in range(w.cfg.n_rnn)}

    def mm(x, m, b, scale=None):
        return given[id(m)] if id(m) in given else linear_cpu(x, m, b, nt, scale=scale)
    return frame_step_ref(w, window, rnn, mm=mm)


def run(w, mode, frames, nt, seed=0):
    """``frames`` frames of one sequence in ``mode``; returns (seconds per frame list, samples, h)."""
    cfg = w.cfg
    g = torch.Generator().manual_seed(seed)
    window = torch.randint(0, cfg.q_levels, (1, cfg.frame_size), generator=g)
    rnn = RNNState(torch.randn(cfg.n_rnn, 1, cfg.dim, generator=g) * 0.1,
                   torch.randn(cfg.n_rnn, 1, cfg.dim, generator=g) * 0.1)
    u = torch.rand(frames, 1, cfg.frame_size, generator=g)
    sampling = Sampling(torch.ones(1))
    out = torch.empty(1, cfg.frame_size, dtype=torch.long)
    drawn, times = [], []
    pool = ThreadPoolExecutor(1)
    pending = pool.submit(recurrent_products, w, rnn.h, 1) if mode == "overlap" else None
    for f in range(frames):
        t = time.perf_counter()
        if mode == "serial":
            cond = frame_step_cpu(w, window, rnn, nt)
        elif mode == "split":
            cond = frame_step_rest(w, window, rnn, recurrent_products(w, rnn.h, nt), nt)
        else:
            cond = frame_step_rest(w, window, rnn, pending.result(), nt)
            pending = pool.submit(recurrent_products, w, rnn.h.clone(), 1)
        sample_frame_cpu(w.table, cond, w.w3, w.b3, w.wo, w.bo, window, u[f], sampling, out,
                         num_threads=1 if mode == "overlap" else nt)
        times.append(time.perf_counter() - t)
        drawn.append(out.clone())
    if pending is not None:
        pending.result()
    pool.shutdown()
    return times, torch.cat(drawn, 1), rnn.h


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="dadabots-2tier", help="model preset, an LSTM one [default: dadabots-2tier]")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16", "int8"], choices=list(FRAME_DTYPES),
                   help="frame-tier weights [default: all three]")
    p.add_argument("--frames", type=int, default=16, help="timed frames per mode [default: 16]")
    p.add_argument("--threads", type=int, default=2, help="OpenMP threads of the serial parts [default: 2]")
    args = p.parse_args(argv)
    cfg = SampleRNNConfig.from_name(args.preset)
    if cfg.gates != 4:
        raise SystemExit(f"benchmarks.overlap: --preset {args.preset} is not an LSTM model")
    model = SampleRNN(cfg).eval()
    print(f"{args.preset}, n_seq 1, {args.threads} threads; ms per frame, median of {args.frames} frames")
    print("| frame weights | serial | split | overlap | overlap vs serial | same samples |")
    print("|---|---:|---:|---:|---:|---|")
    for name in args.precision:
        w = export_inference(model).to("cpu", torch.float32, FRAME_DTYPES[name])
        res = {m: run(w, m, args.frames + 2, args.threads) for m in ("serial", "split", "overlap")}
        ms = {m: statistics.median(r[0][2:]) * 1e3 for m, r in res.items()}  # 2 warm-up frames
        same = all(torch.equal(res["serial"][1], res[m][1]) for m in ("split", "overlap"))
        print(f"| {name} | {ms['serial']:.2f} | {ms['split']:.2f} | {ms['overlap']:.2f} | "
              f"{ms['serial'] / ms['overlap']:.2f}x | {'yes' if same else 'NO'} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

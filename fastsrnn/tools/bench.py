"""``fastsrnn bench``: samples per second of each generation backend against the eager reference.

Correctness first (llm.c): every backend generates a few frames from the same model, state and
uniforms as eager and must draw the same integers (a mismatch is accepted only at a CDF near-tie,
and reported); a backend that disagrees is refused, not timed. Then per (preset, n_seq, backend):
median seconds per frame over repeats, after warm-up, synchronised on GPUs. Units: samples/s per
sequence and in aggregate, real-time factor, speedup over eager in the same run, achieved GB/s,
and the fraction of this machine's floor (a matrix product and a memory copy measured in the
same run), and peak memory while timing. Variants: ``cpu:bf16`` (bf16 weights, fp32
accumulation), ``cuda:nograph``. Last, a length check: the real generation driver makes 50 and
500 frames of one sequence, and its peak memory must not grow with the length.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

import torch

from fastsrnn.atomic import atomic_write_text
from fastsrnn.backends import DecodeState, available_backends, make_backend
from fastsrnn.config import SampleRNNConfig
from fastsrnn.model import SampleRNN
from fastsrnn.ops.export import export_inference
from fastsrnn.ops.sampling import cdf_margin

NEAR_TIE = 1e-4  # a CDF margin below this explains a differing draw (fp32 summation order)


@dataclass
class Row:
    preset: str
    n_seq: int
    backend: str
    ms_per_frame: float
    samples_per_s_per_seq: float
    samples_per_s: float
    realtime_factor: float
    speedup_vs_eager: Optional[float]
    gb_per_s: float
    floor_fraction: float
    peak_mib: Optional[float]  # CUDA: max_memory_allocated; CPU: the process's peak RSS (VmHWM)
    check: str


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> bool:
    """Start a fresh peak-memory window; False where this OS cannot (then no peak is reported)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:  # Linux: writing 5 to clear_refs resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mib(device: torch.device) -> Optional[float]:
    """Peak memory since :func:`reset_peak_memory`: CUDA allocations, or the process's RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def measure_floor(device: torch.device, quick: bool = False) -> dict:
    """This machine's limits, measured now: fp32 matmul GFLOP/s and copy GB/s (read + write)."""
    n = 1024 if quick else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    src = torch.randn((64 if quick else 256) * 2**20 // 4, device=device)
    dst = torch.empty_like(src)

    def best(fn, reps=5):
        fn()
        _sync(device)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t)
        return min(times)

    gflops = 2 * n**3 / best(lambda: torch.mm(a, b)) / 1e9
    gbs = 2 * src.numel() * 4 / best(lambda: dst.copy_(src)) / 1e9
    return {"matmul_gflops": gflops, "copy_gb_per_s": gbs}


def frame_cost(cfg: SampleRNNConfig, n_seq: int, weight_bytes: int) -> dict:
    """Multiply-adds and the fewest bytes of one frame for n_seq sequences (after the folds)."""
    F, H, Q, L, G = cfg.frame_size, cfg.dim, cfg.q_levels, cfg.n_rnn, cfg.gates
    frame_macs = L * G * H * (2 * H + F) + (L * H * H if cfg.skip and L > 1 else 0) + F * H * H
    sample_macs = F * (H * H + Q * H + F * H)  # W3, Wo, F table rows per step
    return {"flops": 2 * n_seq * (frame_macs + sample_macs), "bytes": weight_bytes}


def _parse_variant(variant: str):
    name, _, opts = variant.partition(":")
    kw = {}
    for opt in filter(None, opts.split(",")):
        if opt == "bf16":
            kw.update(dtype=torch.bfloat16, frame_dtype=torch.bfloat16)
        elif opt == "nograph":
            kw["graphs"] = False
        else:
            raise ValueError(f"backend variant {variant!r}: unknown option {opt!r} (bf16, nograph)")
    return name, kw


def _fresh_state(model, n_seq: int, device, seed: int) -> DecodeState:
    g = torch.Generator().manual_seed(seed)
    window = torch.randint(0, model.cfg.q_levels, (n_seq, model.cfg.frame_size), generator=g)
    return DecodeState(model.initial_state(n_seq, "random", g), window).to(device)


def check_against_eager(model, be, eager_be, n_seq: int, device, frames: int = 3) -> str:
    """Generate ``frames`` frames with both; 'match', 'near-tie (margin m)' or raise."""
    F, Q = model.cfg.frame_size, model.cfg.q_levels
    g = torch.Generator().manual_seed(1234)
    us = [torch.rand(n_seq, F, generator=g).to(device) for _ in range(frames)]
    inv_t = torch.ones(n_seq, device=device)
    s_ref, s_be = _fresh_state(model, n_seq, device, 7), _fresh_state(model, n_seq, device, 7)
    for u in us:
        logits = torch.empty(n_seq, F, Q, device=device)
        x_ref = eager_be.step_frame(s_ref, u, inv_t, logits_out=logits)
        x_be = be.step_frame(s_be, u, inv_t)
        bad = (x_ref != x_be).nonzero()
        if len(bad):
            b, j = bad[0].tolist()
            margin = float(cdf_margin(logits[b, j][None].cpu(), u[b, j][None].cpu(), inv_t[b][None].cpu())[0])
            if margin > NEAR_TIE:
                raise RuntimeError(f"backend {be.name} draws {int(x_be[b, j])} where eager draws {int(x_ref[b, j])} "
                                   f"(sequence {b}, step {j}, CDF margin {margin:.2e}): refusing to time it")
            return f"near-tie (margin {margin:.1e})"
    return "match"


def check_low_precision(model, be, eager_be, n_seq: int, device, frames: int = 2, limit: float = 1e-2) -> str:
    """Teacher-forced logits of a bf16-weight backend against fp32 eager: ||diff|| / ||ref|| <= limit."""
    F, Q = model.cfg.frame_size, model.cfg.q_levels
    g = torch.Generator().manual_seed(4321)
    inv_t = torch.ones(n_seq, device=device)
    s_ref, s_be = _fresh_state(model, n_seq, device, 7), _fresh_state(model, n_seq, device, 7)
    num = den = 0.0
    for _ in range(frames):
        u = torch.rand(n_seq, F, generator=g).to(device)
        ref, got = torch.empty(n_seq, F, Q, device=device), torch.empty(n_seq, F, Q, device=device)
        x = eager_be.step_frame(s_ref, u, inv_t, logits_out=ref)
        be.step_frame(s_be, u, inv_t, forced=x, logits_out=got)
        num += float((got - ref).double().pow(2).sum())
        den += float(ref.double().pow(2).sum())
    err = (num / den) ** 0.5
    if not err <= limit:  # NaN fails too
        raise RuntimeError(f"backend {be.name} (bf16): logits relative error {err:.1e} > {limit:.0e}: refusing to time it")
    return f"bf16: logits rel. err {err:.1e}"


def time_backend(model, be, n_seq: int, device, frames: int, repeats: int):
    """(median seconds per frame, peak MiB while timing or None); state and uniforms made untimed."""
    F = model.cfg.frame_size
    state = _fresh_state(model, n_seq, device, 3)
    us = [torch.rand(n_seq, F, device=device) for _ in range(frames)]
    inv_t = torch.ones(n_seq, device=device)
    for u in us[:2]:  # warm-up: builds, graph captures, caches
        be.step_frame(state, u, inv_t)
    _sync(device)
    can_peak = reset_peak_memory(device)
    per_frame = []
    for _ in range(repeats):
        t = time.perf_counter()
        for u in us:
            be.step_frame(state, u, inv_t)
        _sync(device)
        per_frame.append((time.perf_counter() - t) / frames)
    return statistics.median(per_frame), peak_memory_mib(device) if can_peak else None


def _weight_bytes(model, variant_kw) -> int:
    w = export_inference(model).to("cpu", variant_kw.get("dtype"), variant_kw.get("frame_dtype"))
    return w.nbytes_frame_tier() + w.nbytes_sample_tier()


def _ordered(variants: List[str]) -> List[str]:
    """Eager first, so every later row of the same run has its speedup."""
    return sorted(dict.fromkeys(variants), key=lambda v: _parse_variant(v)[0] != "eager")


def checked_backends(model, n_seq: int, variants: List[str], device):
    """Correctness first: build every variant and check it against eager; nothing is timed before."""
    eager = make_backend("eager", model, device)
    backends, checks = {}, {}
    for variant in variants:
        name, kw = _parse_variant(variant)
        backends[variant] = eager if name == "eager" else make_backend(name, model, device, **kw)
        checks[variant] = "reference" if name == "eager" else (
            check_low_precision(model, backends[variant], eager, n_seq, device) if "dtype" in kw
            else check_against_eager(model, backends[variant], eager, n_seq, device))
    return backends, checks


def _row(model, preset, n_seq, variant, t, peak, t_eager, floor, check) -> Row:
    cfg = model.cfg
    cost = frame_cost(cfg, n_seq, _weight_bytes(model, _parse_variant(variant)[1]))
    floor_t = max(cost["flops"] / (floor["matmul_gflops"] * 1e9), cost["bytes"] / (floor["copy_gb_per_s"] * 1e9))
    per_seq = cfg.frame_size / t
    return Row(preset, n_seq, variant, t * 1e3, per_seq, per_seq * n_seq, per_seq / cfg.sample_rate,
               (t_eager / t) if t_eager else None, cost["bytes"] / t / 1e9, floor_t / t, peak, check)


def bench_preset(preset: str, n_seqs: List[int], variants: List[str], device, frames: int, repeats: int,
                 floor: dict, progress=None) -> List[Row]:
    torch.manual_seed(0)
    model = SampleRNN(SampleRNNConfig.from_name(preset)).eval().to(device)
    rows = []
    for n_seq in n_seqs:
        backends, checks = checked_backends(model, n_seq, _ordered(variants), device)
        if progress is not None:
            progress.write(f"{preset} n_seq={n_seq}: All results match ({', '.join(f'{v}: {c}' for v, c in checks.items())}). "
                           "Starting benchmarks.")
        t_eager = None
        for variant, be in backends.items():
            name = _parse_variant(variant)[0]  # eager and folded run torch ops per sample: a quarter of the frames
            n_frames = max(2, frames // (4 if name in ("eager", "folded") else 1))
            t, peak = time_backend(model, be, n_seq, device, n_frames, repeats)
            t_eager = t if name == "eager" else t_eager
            rows.append(_row(model, preset, n_seq, variant, t, peak, t_eager, floor, checks[variant]))
            if progress is not None:
                progress.update(1)
                progress.set_postfix_str(f"{preset} B={n_seq} {variant}: {rows[-1].samples_per_s_per_seq:,.0f} samples/s/seq")
    return rows


def length_check(preset: str, variants: List[str], device, frame_counts=(50, 500)) -> List[dict]:
    """Time and peak memory of the real driver (:class:`fastsrnn.generation.generator.Generator`, chunks streamed
    and dropped as a writer would) making each count of frames of one sequence, per variant."""
    from fastsrnn.generation.generator import Generator

    torch.manual_seed(0)
    model = SampleRNN(SampleRNNConfig.from_name(preset)).eval().to(device)
    out = []
    for variant in _ordered(variants):
        name, kw = _parse_variant(variant)
        for n in frame_counts:
            gen = Generator(model, 1, backend=name, device=device, seed=0, **kw)
            before = peak_memory_mib(device) if reset_peak_memory(device) else None
            t = time.perf_counter()
            for _ in gen.stream(n * model.cfg.frame_size, chunk_samples=16 * model.cfg.frame_size):
                pass
            _sync(device)
            took, peak = time.perf_counter() - t, peak_memory_mib(device) if before is not None else None
            out.append({"preset": preset, "backend": variant, "frames": n, "seconds": took,
                        "samples_per_s_per_seq": n * model.cfg.frame_size / took,
                        "peak_growth_mib": None if peak is None else peak - before})
    return out


def machine_info(device) -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from fastsrnn import __version__

    v = {"python": platform.python_version(), "torch": torch.__version__, "fastsrnn": __version__, "triton": None}
    with contextlib.suppress(PackageNotFoundError):
        v["triton"] = version("triton")
    v["git_commit"] = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        v["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                         cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    return v


def format_table(rows: List[Row]) -> str:
    head = ("| preset | n_seq | backend | ms/frame | samples/s/seq | samples/s total | x real time | vs eager "
            "| GB/s | of floor | peak MiB | check |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    lines = [head]
    for r in rows:
        speed = f"{r.speedup_vs_eager:.1f}x" if r.speedup_vs_eager else "-"
        peak = "-" if r.peak_mib is None else f"{r.peak_mib:,.0f}"
        lines.append(f"| {r.preset} | {r.n_seq} | {r.backend} | {r.ms_per_frame:.2f} | {r.samples_per_s_per_seq:,.0f} | "
                     f"{r.samples_per_s:,.0f} | {r.realtime_factor:.3f} | {speed} | {r.gb_per_s:.1f} | "
                     f"{100 * r.floor_fraction:.0f}% | {peak} | {r.check} |")
    return "\n".join(lines)


def format_length(rows: List[dict]) -> str:
    lines = ["| preset | backend | frames | seconds | samples/s/seq | peak growth MiB |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        growth = "-" if r["peak_growth_mib"] is None else f"{r['peak_growth_mib']:+.1f}"
        lines.append(f"| {r['preset']} | {r['backend']} | {r['frames']} | {r['seconds']:.3f} | "
                     f"{r['samples_per_s_per_seq']:,.0f} | {growth} |")
    return "\n".join(lines)


EPILOG = """examples:
  fastsrnn bench                                   # tiny + dadabots-2tier, every backend available here
  fastsrnn bench --backends eager cpu cpu:bf16 --json bench.json
  fastsrnn bench --device cuda --backends eager triton cuda cuda:nograph
  fastsrnn bench --presets tiny --n-seq 1 --quick  # a smoke run in seconds

"peak MiB" is the process's peak RSS on the CPU (it includes torch and every backend's weights)
and the peak of torch's allocations on CUDA. The length check runs the generation driver for
each --length-frames count and reports how much its peak rose during that run."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "Samples per second of each generation backend against the eager reference. " \
                    "Correctness is checked first; results print as a table."
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--presets", nargs="+", default=["tiny", "dadabots-2tier"], metavar="PRESET",
                   help="model presets to time [default: tiny dadabots-2tier]")
    p.add_argument("--n-seq", nargs="+", type=int, default=None, metavar="N", help="sequences in parallel [default: 1 8 32; 1 8 32 128 on GPU]")
    p.add_argument("--backends", nargs="+", default=None, metavar="BACKEND",
                   help="backends (variants: cpu:bf16, cuda:nograph, triton:bf16) [default: every backend available here]")
    p.add_argument("--device", default="cpu", help="cpu or cuda [default: cpu]")
    p.add_argument("--frames", type=int, default=16, help="frames per timed repeat (eager and folded use a quarter) [default: 16]")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported [default: 5]")
    p.add_argument("--length-frames", nargs="*", type=int, default=[50, 500], metavar="N",
                   help="frame counts for the length check (tiny if timed, else the first preset; n_seq 1); "
                        "none to skip [default: 50 500]")
    p.add_argument("--quick", action="store_true", help="smaller floor measurement, 2 repeats (a smoke run)")
    p.add_argument("--json", metavar="PATH", help="write machine, versions, config, floor and rows to this JSON file")


def _check_args(args, variants: List[str], n_seqs: List[int]) -> None:
    for flag, values in (("--n-seq", n_seqs), ("--frames", [args.frames]), ("--repeats", [args.repeats]),
                         ("--length-frames", args.length_frames)):
        if any(v < 1 for v in values):
            raise SystemExit(f"fastsrnn bench: {flag} must be >= 1, got {values}")
    for preset in args.presets:
        SampleRNNConfig.from_name(preset)  # an unknown name fails here, before minutes of timing
    try:
        [_parse_variant(v) for v in variants]
    except ValueError as e:
        raise SystemExit(f"fastsrnn bench: --backends {e}") from None


def run(args) -> int:
    from tqdm.auto import tqdm

    device = torch.device(args.device)
    if device.type == "cuda":  # fp32 means fp32: TF32 would make eager and the kernels disagree
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    n_seqs = args.n_seq or ([1, 8, 32, 128] if device.type == "cuda" else [1, 8, 32])
    variants = args.backends or ["eager"] + [n for n, (ok, _) in available_backends(device).items()
                                             if ok and n != "eager"]
    _check_args(args, variants, n_seqs)
    variants = _ordered(variants)
    repeats = 2 if args.quick else args.repeats
    floor = measure_floor(device, args.quick)
    print(f"floor on this machine: {floor['matmul_gflops']:.1f} GFLOP/s fp32 matmul, {floor['copy_gb_per_s']:.1f} GB/s copy")
    rows = []
    with tqdm(total=len(args.presets) * len(n_seqs) * len(variants), desc="bench", unit="row") as bar:
        for preset in args.presets:
            rows += bench_preset(preset, n_seqs, variants, device, args.frames, repeats, floor, bar)
    print(format_table(rows))
    small = "tiny" if "tiny" in args.presets else args.presets[0]  # the length check needs no big model
    length = length_check(small, variants, device, args.length_frames) if args.length_frames else []
    if length:
        print(f"\nlength check (generation driver, n_seq 1):\n{format_length(length)}")
    if args.json:
        payload = {"machine": machine_info(device), "versions": versions(), "floor": floor,
                   "config": {"presets": args.presets, "n_seq": n_seqs, "backends": variants, "frames": args.frames,
                              "repeats": repeats, "length_frames": args.length_frames, "device": str(device)},
                   "rows": [asdict(r) for r in rows], "length": length}
        atomic_write_text(args.json, json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastsrnn bench")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""``fastsrnn bench``: samples per second of each generation backend against the eager reference
(``--train``: training throughput instead, fastsrnn/tools/bench_train.py).

Correctness first (llm.c): every backend generates a few frames from the same model, state and
uniforms as eager and must draw the same integers (a mismatch is accepted only at a CDF near-tie,
and reported); a backend that disagrees is refused, not timed. Then per (preset, n_seq, backend):
median seconds per frame over repeats, after warm-up, synchronised on GPUs. Units: samples/s per
sequence and in aggregate, real-time factor, speedup over eager in the same run, achieved GB/s,
and the fraction of this machine's floor (a matrix product and a memory copy measured in the
same run), and peak memory while timing. On a known GPU each GPU row also shows the calibrated
performance model's prediction (fastsrnn/tools/perf_model.py), pred/meas and the largest predicted
term; ``--predict`` prints the predictions without a GPU. Variants: ``cpu:bf16`` (bf16 weights,
fp32 accumulation), ``cuda:nograph``. Last, a length
check: the real generation driver makes 50 and 500 frames of one sequence, and its peak memory
must not grow with the length.

Beside each low-precision row (bf16, int8 weights), "NLL Δ bits": its teacher-forced NLL minus
fp32's on the same samples through the same backend (fastsrnn/generation/precision.py, the
measurement ``fastsrnn generate --precision`` guards with), on 4 x 1 s that the benched model
generates itself in fp32. The bench's weights are random (NLL near 8 bits), so the delta shows how
far the rounding moves the model's distribution, not what a trained model's test loss would do.

The measuring itself (timing, peak memory, the correctness gate, the floor) lives in
fastsrnn/tools/bench_measure.py (parse_variant, fresh_state, measured, frame_stepper, time_frames,
checked_backends, check_against_eager, check_low_precision: import them from there), the argument
checks in fastsrnn/tools/bench_args.py.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import torch

from fastsrnn.atomic import atomic_write_text
from fastsrnn.backends import available_backends
from fastsrnn.config import SampleRNNConfig
from fastsrnn.generation.precision import nll_pair
from fastsrnn.model import SampleRNN
from fastsrnn.ops.export import export_inference
from fastsrnn.tools import perf_model
from fastsrnn.tools.bench_args import _check_args, _check_device
from fastsrnn.tools.bench_measure import (
    canonical_variant,
    checked_backends,
    frame_cost,
    machine_info,
    measure_floor,
    measured,
    ordered,
    parse_variant,
    time_frames,
    versions,
)


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
    pred_ms_per_frame: Optional[float] = None  # perf_model's prediction on a known GPU
    pred_largest_term: Optional[str] = None
    nll_delta_bits: Optional[float] = None  # low-precision rows: NLL minus fp32's, same samples (see nll_deltas)


def _weight_bytes(model, variant_kw) -> float:
    """Weight bytes per (bottom) frame: the floor's traffic (n tiers: upper tiers amortized)."""
    w = export_inference(model).to("cpu", variant_kw.get("dtype"), variant_kw.get("frame_dtype"))
    return w.nbytes_per_frame()


def gpu_model_name(device) -> Optional[str]:
    """The perf_model GPU of a CUDA device (None on the CPU or an unknown GPU): no prediction then."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return perf_model.gpu_for_device_name(torch.cuda.get_device_name(device))


def prediction(preset: str, n_seq: int, variant: str, gpu: Optional[str]) -> Optional[perf_model.Prediction]:
    """perf_model's prediction for a bench row, where the GPU and the backend are modelled."""
    if gpu is None or parse_variant(variant)[0] not in perf_model.BACKENDS:
        return None
    p = perf_model.predict(preset, n_seq, canonical_variant(variant), gpu=gpu)
    return None if math.isinf(p.time_per_frame_s) else p


PRECISION_OPTIONS = ("dtype", "frame_dtype")


def nll_deltas(model, variants: List[str], device) -> Dict[str, float]:
    """Per low-precision variant (one whose options set dtype or frame_dtype), its NLL minus fp32's
    in bits per sample: precision.py's paired measurement (:func:`nll_pair`) through the variant's
    own backend, on samples the model generates itself in fp32 (measured once per model)."""
    out = {}
    for variant in variants:
        name, kw = parse_variant(variant)
        low = {k: v for k, v in kw.items() if k in PRECISION_OPTIONS}
        if name != "eager" and low:
            rest = {k: v for k, v in kw.items() if k not in PRECISION_OPTIONS}
            nll32, nll, _, _ = nll_pair(model, low, name, device, None, rest)
            out[variant] = nll - nll32
    return out


def _row(model, preset, n_seq, variant, t, peak, t_eager, floor, check, gpu=None) -> Row:
    cfg = model.cfg
    cost = frame_cost(cfg, n_seq, _weight_bytes(model, parse_variant(variant)[1]))
    floor_t = max(cost["flops"] / (floor["matmul_gflops"] * 1e9), cost["bytes"] / (floor["copy_gb_per_s"] * 1e9))
    per_seq = cfg.frame_size / t
    pred = prediction(preset, n_seq, variant, gpu)
    return Row(preset, n_seq, variant, t * 1e3, per_seq, per_seq * n_seq, per_seq / cfg.sample_rate,
               (t_eager / t) if t_eager else None, cost["bytes"] / t / 1e9, floor_t / t, peak, check,
               pred and pred.time_per_frame_s * 1e3, pred and pred.largest_term)


def bench_preset(preset: str, n_seqs: List[int], variants: List[str], device, frames: int, repeats: int,
                 floor: dict, progress=None) -> List[Row]:
    torch.manual_seed(0)
    model = SampleRNN(SampleRNNConfig.from_name(preset)).eval().to(device)
    gpu = gpu_model_name(device)
    rows = []
    deltas = None
    for n_seq in n_seqs:
        backends, checks = checked_backends(model, n_seq, variants, device)
        if deltas is None:  # after the first correctness gate: nothing is measured on a refused backend
            deltas = nll_deltas(model, list(backends), device)
        if progress is not None:
            progress.write(f"{preset} n_seq={n_seq}: All results match "
                           f"({', '.join(f'{v}: {c}' for v, c in checks.items())}). Starting benchmarks.")
        t_eager = None
        for variant, be in backends.items():
            name = parse_variant(variant)[0]  # eager and folded run torch ops per sample: a quarter of the frames
            n_frames = max(2, frames // (4 if name in ("eager", "folded") else 1))
            timing = time_frames(model, be, n_seq, device, n_frames, repeats)
            t = timing.seconds_per_frame
            t_eager = t if name == "eager" else t_eager
            rows.append(_row(model, preset, n_seq, variant, t, timing.peak_mib, t_eager, floor, checks[variant], gpu))
            rows[-1].nll_delta_bits = deltas.get(variant)
            if progress is not None:
                progress.update(1)
                progress.set_postfix_str(f"{preset} B={n_seq} {variant}: "
                                         f"{rows[-1].samples_per_s_per_seq:,.0f} samples/s/seq")
    return rows


def length_check(preset: str, variants: List[str], device, frame_counts=(50, 500)) -> List[dict]:
    """Time and peak memory (:func:`measured`) of the real driver (:class:`fastsrnn.generation.generator.
    Generator`, chunks streamed and dropped as a writer would) making each count of frames of one
    sequence, per variant."""
    from fastsrnn.generation.generator import Generator

    torch.manual_seed(0)
    model = SampleRNN(SampleRNNConfig.from_name(preset)).eval().to(device)
    out = []
    for variant in ordered(variants):
        name, kw = parse_variant(variant)
        for n in frame_counts:
            gen = Generator(model, 1, backend=name, device=device, seed=0, **kw)
            with measured(device) as m:
                for _ in gen.stream(n * model.cfg.frame_size, chunk_samples=16 * model.cfg.frame_size):
                    pass
            out.append({"preset": preset, "backend": variant, "frames": n, "seconds": m.seconds,
                        "samples_per_s_per_seq": n * model.cfg.frame_size / m.seconds,
                        "peak_growth_mib": m.growth_mib})
    return out


def format_table(rows: List[Row]) -> str:
    """The bench table; with "pred ms/frame" and "pred/meas" columns when any row has a prediction."""
    pred = any(r.pred_ms_per_frame is not None for r in rows)
    head = ("| preset | n_seq | backend | ms/frame | samples/s/seq | samples/s total | x real time | vs eager "
            "| GB/s | of floor | peak MiB | check | NLL Δ bits |"
            + (" pred ms/frame | pred/meas | largest predicted term |" if pred else "")
            + "\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|" + ("---:|---:|---|" if pred else ""))
    lines = [head]
    for r in rows:
        speed = f"{r.speedup_vs_eager:.1f}x" if r.speedup_vs_eager else "-"
        peak = "-" if r.peak_mib is None else f"{r.peak_mib:,.0f}"
        delta = "-" if r.nll_delta_bits is None else f"{r.nll_delta_bits:+.4f}"
        line = (f"| {r.preset} | {r.n_seq} | {r.backend} | {r.ms_per_frame:.2f} | {r.samples_per_s_per_seq:,.0f} | "
                f"{r.samples_per_s:,.0f} | {r.realtime_factor:.3f} | {speed} | {r.gb_per_s:.1f} | "
                f"{100 * r.floor_fraction:.0f}% | {peak} | {r.check} | {delta} |")
        if pred:
            line += (" - | - | - |" if r.pred_ms_per_frame is None else
                     f" {r.pred_ms_per_frame:.3f} | {r.pred_ms_per_frame / r.ms_per_frame:.2f} | "
                     f"{r.pred_largest_term} |")
        lines.append(line)
    return "\n".join(lines)


def format_length(rows: List[dict]) -> str:
    lines = ["| preset | backend | frames | seconds | samples/s/seq | peak growth MiB |",
             "|---|---|---:|---:|---:|---:|"]
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
  fastsrnn bench --predict --gpu H100-SXM --presets dadabots-2tier --n-seq 1 16 128   # no GPU needed
  fastsrnn bench --train                           # training steps/s: fp32, amp bf16, torch.compile (tiny on CPU)
  fastsrnn bench --train --device cuda --variants fp32 bf16 compile --json train_bench.json

"peak MiB" is the process's peak RSS on the CPU (it includes torch and every backend's weights)
and the peak of torch's allocations on CUDA. The length check runs the generation driver for
each --length-frames count and reports how much its peak rose during that run. On an H100 SXM
or H200, GPU rows also show fastsrnn/tools/perf_model.py's prediction and pred/meas.

"NLL Δ bits" (low-precision rows; "-" for fp32 and eager): the row's teacher-forced NLL minus
fp32's on the same 4 x 1 s that the benched model generates itself in fp32, through the same
backend (fastsrnn/generation/precision.py; 'fastsrnn generate --precision' refuses a precision
whose delta exceeds 0.01 bits on the trained model). The bench's weights are random, so this
shows how far the rounding moves the model's distribution, not a trained model's test loss. It
costs three passes over 4 x 1 s per low-precision variant (about 15 s for dadabots-2tier on cpu
on a 2-core CPU; minutes on folded, whose torch ops run per sample)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "Samples per second of each generation backend against the eager reference. " \
                    "Correctness is checked first; results print as a table."
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--presets", nargs="+", default=None, metavar="PRESET",
                   help="model presets to time [default: tiny dadabots-2tier; with --train: tiny on the CPU, "
                        "dadabots-2tier on a GPU]")
    p.add_argument("--n-seq", nargs="+", type=int, default=None, metavar="N",
                   help="sequences in parallel [default: 1 8 32; 1 8 32 128 on GPU; 1 16 128 with --predict]")
    p.add_argument("--backends", nargs="+", default=None, metavar="BACKEND",
                   help="backends (variants: cpu:bf16, cuda:nograph, triton:bf16) [default: every backend "
                        "available here; with --predict every modelled GPU backend, fp32 and bf16]")
    p.add_argument("--device", default="cpu", help="cpu or cuda [default: cpu]")
    p.add_argument("--frames", type=int, default=16,
                   help="frames per timed repeat (eager and folded use a quarter) [default: 16]")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported [default: 5]")
    p.add_argument("--length-frames", nargs="*", type=int, default=[50, 500], metavar="N",
                   help="frame counts for the length check (tiny if timed, else the first preset; n_seq 1); "
                        "none to skip [default: 50 500]")
    p.add_argument("--quick", action="store_true", help="smaller floor measurement, 2 repeats (a smoke run)")
    p.add_argument("--json", metavar="PATH", help="write machine, versions, config, floor and rows to this JSON file")
    p.add_argument("--predict", action="store_true",
                   help="print the calibrated performance model's predictions (fastsrnn/tools/perf_model.py: "
                        "time per frame and its largest term per backend and shape) and time nothing")
    p.add_argument("--gpu", default="H100-SXM", choices=sorted(perf_model.GPUS),
                   help="GPU of --predict [default: H100-SXM]")
    t = p.add_argument_group("training throughput (--train; fastsrnn/tools/bench_train.py)")
    t.add_argument("--train", action="store_true",
                   help="time training steps instead of generation: the plain fp32 loop and each --variants, "
                        "on a synthetic batch, after a first-step loss check against fp32")
    t.add_argument("--variants", nargs="+", default=None, metavar="VARIANT",
                   help="fp32, bf16 (amp autocast), compile (torch.compile), bf16+compile "
                        "[default: fp32 bf16 compile]")
    t.add_argument("--steps", type=int, default=20, help="timed training steps; the median is reported [default: 20]")
    t.add_argument("--warmup", type=int, default=3, help="untimed steps after the checked first one [default: 3]")
    t.add_argument("--batch-size", type=int, default=None,
                   help="chunks per batch [default: 8 for tiny, 128 for dadabots-2tier (the paper)]")
    t.add_argument("--tbptt", type=int, default=None,
                   help="frames per sub-sequence [default: 8 for tiny, 64 for dadabots-2tier (the paper)]")


def run_predict(args) -> int:
    """--predict: the model's table for the presets, n_seq and backends asked (fp32 and bf16 unless a
    variant names its weights), on --gpu; nothing is timed and no GPU is needed."""
    n_seqs = args.n_seq or [1, 16, 128]
    _check_args(args, [], n_seqs)
    preds = []
    for preset in args.presets:
        for b in args.backends or [f"{b}{d}" for b in perf_model.BACKENDS for d in ("", ":bf16")]:
            try:
                preds += [perf_model.predict(preset, n, b, gpu=args.gpu) for n in n_seqs]
            except ValueError as e:
                raise SystemExit(f"fastsrnn bench --predict: {e}") from None
    print(perf_model.describe_gpu(args.gpu))
    print(perf_model.format_predictions(preds))
    if args.json:
        atomic_write_text(args.json, json.dumps({"gpu": args.gpu, "predictions": [asdict(p) for p in preds]},
                                                indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


def run(args) -> int:
    if getattr(args, "train", False):
        from fastsrnn.tools.bench_train import run_train

        return run_train(args)
    args.presets = args.presets or ["tiny", "dadabots-2tier"]
    if getattr(args, "predict", False):
        return run_predict(args)
    from tqdm.auto import tqdm

    device = _check_device(args.device)
    if device.type == "cuda":  # fp32 means fp32: TF32 would make eager and the kernels disagree
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    n_seqs = args.n_seq or ([1, 8, 32, 128] if device.type == "cuda" else [1, 8, 32])
    variants = args.backends or ["eager"] + [n for n, (ok, _) in available_backends(device).items()
                                             if ok and n != "eager"]
    _check_args(args, variants, n_seqs)
    variants = ordered(variants)
    repeats = 2 if args.quick else args.repeats
    floor = measure_floor(device, args.quick)
    print(f"floor on this machine: {floor['matmul_gflops']:.1f} GFLOP/s fp32 matmul, "
          f"{floor['copy_gb_per_s']:.1f} GB/s copy")
    gpu = gpu_model_name(device)
    if gpu:
        print(f"predictions: fastsrnn/tools/perf_model.py on {perf_model.describe_gpu(gpu)}")
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
        payload = {"machine": machine_info(device), "versions": versions(), "floor": floor, "prediction_gpu": gpu,
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

"""A performance model of GPU generation: latency chains, calibrated on the H100 rows.

One frame = the frame tier (L RNN layers, skip sum, upsampling) + F sample steps. For a GPU
backend, a config and n_seq sequences, :func:`predict` adds up named terms (seconds per frame)
and names the largest. Each kernel's time is a chain of dependent steps (loop iterations that wait
on their own loads, grid barriers, draws, graph nodes) or the bytes it streams, whichever is
longer (tools/perf_chains.py: per kernel, its counts from the code's launch configs). The step
costs are :class:`Calibration`'s named constants, fitted to the 36 measured fused rows of
benchmarks/results/gpu-h100-e25b753.json (H100 SXM, commit e25b753) by
benchmarks/fit_perf_model.py, which prints each row's pred/meas (all within 0.8-1.25; the test
tests/test_perf_model.py checks the committed constants, it fits nothing). The fit and the
kernel-by-kernel reasons: the H100 review of 2026-12-08 (issue 19; its §1.6 and App. B).

Backends (what the code does today):
- ``triton``: the fused frame tier (ops/frame_step.frame_step_triton), then below
  TRITON_SAMPLE_SPLIT_MIN_B sequences and TRITON_SAMPLE_SPLIT_MIN_H units (ops/thresholds.py)
  kernels/sample_frame.py (one launch per frame), else kernels/sample_frame_split.py (2F + 1);
- ``cuda``: the same frame tier, then csrc/cuda/sample_frame.cu (one cooperative launch per frame).
With CUDA graphs (the default) every kernel costs a graph node on top of its chain. Without
(``:nograph``) the host issues every launch: the frame takes the longer of the host's time
(Python per frame + per launch) and the device's (chains + a gap per launch).
Not modelled: the eager backend (torch ops, cuBLAS) and the CPU backends (see BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional

from fastsrnn.config import SampleRNNConfig
from fastsrnn.tools import perf_chains as pc


@dataclass(frozen=True)
class Calibration:
    """The step costs of the chains (seconds, bytes/s). [fit]: fitted by benchmarks/fit_perf_model.py
    to the 36 fused rows of benchmarks/results/gpu-h100-e25b753.json (minimax of |log pred/meas|
    within the physical ranges of its BOUNDS); "review": the review's own fit (App. B), for
    comparison. [SASS]: read from the compiled code by the review, not fitted."""
    # [fit] one dependent L2 round trip: a loop iteration that waits on its own load; review 0.29-0.33 us
    t_rt: float = 0.377e-6
    # [fit] one grid barrier of the persistent CUDA kernel, with the block syncs around it; review 1.35-2.0 us
    t_bar: float = 2.60e-6
    # [fit] one kernel inside a replayed CUDA graph; at the fit's lower bound (not what limits); review 0.65-1.7 us
    t_node: float = 0.30e-6
    # [fit] SM time per warp-instruction of a loop body (IPC ~0.75 at ~1.75 GHz); review 0.76-0.80 ns
    c_sm: float = 0.764e-9
    # [SASS] warp-instructions per loop iteration besides the products (review §1.4: 80, of them 32 FFMA)
    loop_instr: float = 48.0
    # [fit] the Triton softmax + inverse-CDF draw (_emit_step: 3 scans, ~25 block barriers); review 2.5-5 us
    t_draw_triton: float = 3.15e-6
    # [fit] the CUDA warp_draw of one sequence after its logits load; review 2.6-3.0 us (its fit gave the
    # row products below no cost of their own)
    t_draw_cuda: float = 1.08e-6
    # [fit] one multiply-add of the CUDA kernel's row products, per block (a shared load + FFMA)
    cuda_mac_fp32: float = 68e-12
    # [fit] the same with bf16 weights (load, unpack, FFMA): slower per multiply-add than fp32, as measured
    cuda_mac_bf16: float = 75e-12
    # [fit] one __syncthreads round of the CUDA kernel's tile phases; review 0.2-0.48 us
    t_sync: float = 0.477e-6
    # [fit] aggregate L2 read rate where it binds (the bf16 layers' tiles at n_seq 128); review ~8.8 TB/s
    l2_bytes_per_s: float = 7.9e12
    # [fit] host time per frame without graphs (Python, argument checks); review 0.45-0.49 ms
    host_frame: float = 0.42e-3
    # [fit] host time per launch without graphs (Triton's launcher, the extension call); review 35-38 us
    host_launch: float = 42e-6
    # [fit] device idle between two host-issued launches; review 11.5-11.6 us
    launch_gap: float = 6.6e-6


@dataclass(frozen=True)
class GPU:
    name: str
    hbm_bytes_per_s: float  # streamed weights: what the n_seq 1 LSTM layer achieves
    l2_bytes: float
    sms: int
    cal: Calibration = Calibration()


# HBM: 33.8 MB per fp32 LSTM layer in 14 us at n_seq 1 [measured, BENCHMARKS.md profile table], 89% of
# the measured copy rate (2.72 TB/s, the JSON's floor.copy_gb_per_s). H200: the H100's step costs with
# its HBM scaled by 4.8 / 3.35 (not measured).
H100_SXM = GPU("H100-SXM", hbm_bytes_per_s=2.4e12, l2_bytes=50e6, sms=pc.SMS)
GPUS: Dict[str, GPU] = {"H100-SXM": H100_SXM,
                        "H200": replace(H100_SXM, name="H200", hbm_bytes_per_s=2.4e12 * 4.8 / 3.35)}
BACKENDS = ("triton", "cuda")
# The frame tier each backend runs: "fused" (ops/frame_step.frame_step_triton, what the triton and
# cuda backends run on a CUDA device: backends/fused_frame.py).
FRAME_TIER = {"triton": "fused", "cuda": "fused"}
MEASURED_ROWS = "benchmarks/results/gpu-h100-e25b753.json"  # what Calibration is fitted to


def gpu_for_device_name(device_name: str) -> Optional[str]:
    """torch.cuda.get_device_name() -> a key of GPUS, or None: 'NVIDIA H100 80GB HBM3' -> 'H100-SXM'."""
    n = device_name.upper()
    if "H200" in n:
        return "H200"
    if "H100" in n and "PCIE" not in n and "NVL" not in n:
        return "H100-SXM"
    return None


@dataclass
class Prediction:
    preset: str
    backend: str
    n_seq: int
    weights_dtype: str
    gpu: str
    time_per_frame_s: float
    samples_per_s: float  # all sequences together
    samples_per_s_per_seq: float
    bytes: float  # moved per frame: HBM + L2
    hbm_bytes: float
    l2_bytes: float
    flops: float
    kernels: int  # launched per frame (graph nodes included)
    terms: Dict[str, float] = field(default_factory=dict)  # seconds per frame; they add up to the time
    largest_term: str = ""
    note: str = ""


# --- counts ----------------------------------------------------------------------------------------

def _tier_params(cfg: SampleRNNConfig, n_in: int, n_out: int, conditioned: bool) -> int:
    H, L, G = cfg.dim, cfg.n_rnn, cfg.gates
    skip = cfg.skip and L > 1
    first = n_in + (H if conditioned else 0)
    rnn = sum(G * H * ((first if i == 0 else H + n_in if skip else H) + H) for i in range(L))
    return rnn + (L * H * H if skip else 0) + n_out * H * H


def frame_tier_params(cfg: SampleRNNConfig) -> int:
    """Weights the frame tiers read per bottom frame (2 tiers: InferenceWeights.nbytes_frame_tier()
    / element size; n tiers: each upper tier's over the bottom frames between its steps, rounded down)."""
    F, n_up = cfg.frame_size, cfg.n_tiers - 2
    total = _tier_params(cfg, F, F, n_up > 0)
    for k in range(1, n_up + 1):
        S = cfg.tier_samples(k)
        total += _tier_params(cfg, S, cfg.frame_sizes[k], k < n_up) * F // S
    return total


def frame_tier_bytes(cfg: SampleRNNConfig, weights_dtype: str = "fp32") -> int:
    return frame_tier_params(cfg) * _wsize(weights_dtype)


def torch_frame_kernels(cfg: SampleRNNConfig, weights_dtype: str = "fp32") -> int:
    """Kernels ops/frame_step.frame_step_ref launches: input scaling 4; per LSTM layer 2 products,
    the gate maths (12 elementwise incl. the state copies, LSTM or GRU); with skips a concat, a skip
    product, a zero bias and a sum; the upsampling product. A bf16 product is 4 (cast, mm, cast, bias)."""
    L = cfg.n_rnn
    skip = cfg.skip and L > 1
    per_product = 1 if weights_dtype == "fp32" else 4
    gates = 12  # LSTM: gi + gh, 9 gate ops, 2 copies; GRU: 11 gate ops, 1 copy
    n = 4 + L * (2 * per_product + gates) + per_product
    if skip:
        n += (L - 1) + L * per_product + 2 * (L - 1)  # concats, skip products, zeros_like + sum for i > 0
    return n


def _wsize(weights_dtype: str) -> int:
    if weights_dtype not in ("fp32", "bf16"):
        raise ValueError(f"weights_dtype must be 'fp32' or 'bf16', got {weights_dtype!r}")
    return 4 if weights_dtype == "fp32" else 2


# --- the chains ------------------------------------------------------------------------------------

def _iter_time(k: pc.Kernel, lp: pc.Loop, c: Calibration, overlapped: bool) -> float:
    """One loop iteration: its round trip (shared by the tiles in flight) against the SM's issue."""
    issue = k.per_sm * k.warps * (lp.instr + c.loop_instr) * c.c_sm
    return max(c.t_rt / lp.in_flight, issue) if overlapped else c.t_rt + issue


def _frame_tier(cfg, B, bf16, g: GPU, terms, acc) -> None:
    """Each kernel: the longest of its K-loop chain, its weights from HBM, its tiles from L2."""
    c = g.cal
    for k in pc.frame_kernels(cfg, B, bf16):
        bounds = {"K-loop round trips and issue": sum(lp.iterations * _iter_time(k, lp, c, True) for lp in k.loops),
                  "weights from HBM": k.hbm_bytes / g.hbm_bytes_per_s,
                  "tiles from L2": k.l2_bytes / c.l2_bytes_per_s}
        bound = max(bounds, key=bounds.get)
        kind = k.name.rsplit(" ", 1)[0] + "s" if "layer" in k.name else k.name
        terms[f"{kind}: {bound}"] += k.per_frame * bounds[bound]
        acc["hbm"] += k.per_frame * k.hbm_bytes
        acc["l2"] += k.per_frame * k.l2_bytes
        acc["launches"] += k.per_frame


def _sample_split(cfg, B, bf16, g: GPU, terms, acc) -> str:
    c = g.cal
    a, b, launches, n = pc.split_kernels(cfg, B, bf16)
    # single-buffered: each iteration's round trip, then its products (nothing overlapped)
    terms["sample tier: stage A loop round trips"] += a.per_frame * sum(lp.iterations for lp in a.loops) * c.t_rt
    terms["sample tier: stage A issue"] += a.per_frame * sum(
        lp.iterations * (_iter_time(a, lp, c, False) - c.t_rt) for lp in a.loops)
    chain = (n["sum_loads"] + pc.STAGE_B_OTHER_RT) * c.t_rt + c.t_draw_triton
    terms["sample tier: stage B sum and draw"] += cfg.frame_size * b.per_sm * chain
    terms["sample tier: stage B gather round trips"] += b.per_frame * b.per_sm * n["gather"] * c.t_rt
    acc["l2"] += a.per_frame * a.l2_bytes + b.per_frame * b.l2_bytes
    acc["launches"] += launches
    return f"split path: {a.grid} x {b.grid} programs"


def _sample_small(cfg, B, bf16, g: GPU, terms, acc) -> str:
    c, n = g.cal, pc.small_counts(cfg, B)
    waves = max(1.0, n["grid"] / g.sms)
    terms["sample tier: small-path round trips"] += cfg.frame_size * waves * n["round_trips"] * c.t_rt
    terms["sample tier: draws"] += cfg.frame_size * waves * c.t_draw_triton
    acc["launches"] += 1
    return "small path: one launch per frame"


def _sample_cuda(cfg, B, bf16, g: GPU, terms, acc) -> str:
    c, n = g.cal, pc.cuda_step_counts(cfg, B, bf16)
    if not n:
        return "does not fit in shared memory"
    F = cfg.frame_size
    terms["sample tier: grid barriers (2 per step)"] += F * 2 * c.t_bar
    draws = F * n["draws_per_warp"] * (c.t_rt + c.t_draw_cuda)
    terms["sample tier: draws (each warp ceil(B / warps) in turn)"] += draws
    terms["sample tier: staging round trips"] += F * 2 * n["tiles"] * n["stage_round_trips"] * c.t_rt
    mac = c.cuda_mac_bf16 if bf16 else c.cuda_mac_fp32
    terms["sample tier: row products from shared memory"] += F * n["tiles"] * n["macs_per_tile"] * mac
    terms["sample tier: block syncs"] += F * 2 * n["tiles"] * c.t_sync
    terms["sample tier: next P round trips"] += F * n["p_round_trips"] * c.t_rt
    acc["launches"] += 1
    return f"persistent: {n['plan']['grid']} blocks, tile {n['plan']['tile']}"


# --- the prediction ----------------------------------------------------------------------------------

def _backend(backend: str, weights_dtype: str, graphs: bool):
    name, _, opts = backend.partition(":")
    for opt in filter(None, opts.split(",")):
        if opt == "bf16":
            weights_dtype = "bf16"
        elif opt == "nograph":
            graphs = False
        else:
            raise ValueError(f"backend {backend!r}: unknown option {opt!r}")
    if name not in BACKENDS:
        raise ValueError(f"no model for backend {name!r}; modelled: {', '.join(BACKENDS)}")
    return name, weights_dtype, graphs


def _host(terms: Dict[str, float], launches: float, graphs: bool, c: Calibration) -> Dict[str, float]:
    """Graphs: a node per kernel on the device. Without: the longer of the host and the device."""
    if graphs:
        terms["graph nodes"] = launches * c.t_node
        return terms
    device = dict(terms, **{"device gaps between launches": launches * c.launch_gap})
    host = {"host: Python per frame": c.host_frame, "host: launches": launches * c.host_launch}
    return host if sum(host.values()) > sum(device.values()) else device


def predict(cfg, n_seq: int, backend: str, weights_dtype: str = "fp32", gpu: str = "H100-SXM",
            graphs: bool = True, cal: Optional[Calibration] = None) -> Prediction:
    """Predicted time per frame of ``backend`` (one of BACKENDS; a bench variant such as
    'cuda:bf16' or 'triton:nograph' is read too) for ``n_seq`` sequences of ``cfg`` (a config or
    a preset name) on ``gpu`` (a key of GPUS). weights_dtype: 'fp32' or 'bf16', both tiers (as
    the bench's ':bf16' variants). graphs: replay frames as CUDA graphs. cal: other step costs
    than the GPU's (benchmarks/fit_perf_model.py fits them)."""
    from fastsrnn.config import PRESETS

    preset = cfg if isinstance(cfg, str) else next((k for k, v in PRESETS.items() if v == cfg), "-")
    cfg = SampleRNNConfig.from_name(cfg) if isinstance(cfg, str) else cfg
    name, wd, graphs = _backend(backend, weights_dtype, graphs)
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; known: {', '.join(GPUS)}")
    if n_seq < 1:
        raise ValueError(f"n_seq must be >= 1, got {n_seq}")
    g = GPUS[gpu] if cal is None else replace(GPUS[gpu], cal=cal)
    B, bf16 = n_seq, _wsize(wd) == 2
    terms: Dict[str, float] = defaultdict(float)
    acc = {"hbm": 0.0, "l2": 0.0, "launches": 0.0}
    _frame_tier(cfg, B, bf16, g, terms, acc)
    if name == "cuda":
        note = _sample_cuda(cfg, B, bf16, g, terms, acc)
    else:
        note = (_sample_split if pc.triton_path(cfg, B) == "split" else _sample_small)(cfg, B, bf16, g, terms, acc)
    label = name + (":bf16" if wd == "bf16" else "") + ("" if graphs else ":nograph")
    flops = 2.0 * B * (frame_tier_params(cfg) + cfg.frame_size * (cfg.dim + cfg.q_levels) * cfg.dim)
    if note.startswith("does not fit"):
        return Prediction(preset, label, B, wd, gpu, math.inf, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, {}, "-", note)
    terms = _host(dict(terms), acc["launches"], graphs, g.cal)
    t = sum(terms.values())
    per_seq = cfg.frame_size / t
    return Prediction(preset=preset, backend=label, n_seq=B, weights_dtype=wd, gpu=gpu, time_per_frame_s=t,
                      samples_per_s=per_seq * B, samples_per_s_per_seq=per_seq, bytes=acc["hbm"] + acc["l2"],
                      hbm_bytes=acc["hbm"], l2_bytes=acc["l2"], flops=flops, kernels=round(acc["launches"]),
                      terms=terms, largest_term=max(terms, key=terms.get), note=note)


def predict_table(presets: List[str], n_seqs: List[int], backends=BACKENDS, dtypes=("fp32", "bf16"),
                  gpu: str = "H100-SXM") -> List[Prediction]:
    return [predict(p, n, b, d, gpu) for p in presets for b in backends for d in dtypes for n in n_seqs]


def format_predictions(preds: List[Prediction]) -> str:
    lines = [f"predictions on {preds[0].gpu if preds else '-'}: the calibrated latency-chain model "
             f"(fitted to {MEASURED_ROWS}), not a measurement",
             "| preset | backend | weights | n_seq | pred ms/frame | samples/s/seq | samples/s total | "
             "HBM MB | L2 MB | kernels | largest term (share) | note |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for p in preds:
        if math.isinf(p.time_per_frame_s):
            lines.append(f"| {p.preset} | {p.backend} | {p.weights_dtype} | {p.n_seq} | - | - | - | - | - | - "
                         f"| - | {p.note} |")
            continue
        share = p.terms[p.largest_term] / p.time_per_frame_s
        lines.append(f"| {p.preset} | {p.backend} | {p.weights_dtype} | {p.n_seq} | {p.time_per_frame_s * 1e3:.3f} | "
                     f"{p.samples_per_s_per_seq:,.0f} | {p.samples_per_s:,.0f} | {p.hbm_bytes / 1e6:.0f} | "
                     f"{p.l2_bytes / 1e6:.0f} | {p.kernels} | {p.largest_term} ({100 * share:.0f}%) | {p.note} |")
    return "\n".join(lines)


def describe_gpu(gpu: str) -> str:
    g, c = GPUS[gpu], GPUS[gpu].cal
    return (f"{g.name}: {g.sms} SMs, weights from HBM at {g.hbm_bytes_per_s / 1e12:.2f} TB/s, L2 at "
            f"{c.l2_bytes_per_s / 1e12:.1f} TB/s; fitted steps: round trip {c.t_rt * 1e6:.2f} us, grid barrier "
            f"{c.t_bar * 1e6:.2f} us, graph node {c.t_node * 1e6:.2f} us, {c.c_sm * 1e9:.2f} ns per "
            f"warp-instruction per SM, draw {c.t_draw_triton * 1e6:.1f} us (Triton) / {c.t_draw_cuda * 1e6:.1f} us "
            f"(CUDA), without graphs host {c.host_frame * 1e3:.2f} ms per frame + {c.host_launch * 1e6:.0f} us "
            f"per launch")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastsrnn.tools.perf_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["dadabots-2tier"])
    p.add_argument("--n-seq", nargs="+", type=int, default=[1, 16, 128])
    p.add_argument("--backends", nargs="+", default=list(BACKENDS))
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--gpu", default="H100-SXM", choices=sorted(GPUS))
    args = p.parse_args(argv)
    print(describe_gpu(args.gpu))
    print(format_predictions(predict_table(args.presets, args.n_seq, args.backends, args.dtypes, args.gpu)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A performance model of GPU generation: bytes, FLOPs, kernels and predicted time per frame.

One frame = the frame tier (L RNN layers, skip projections, upsampling) + F sample steps. For a
GPU backend, a config and n_seq sequences, :func:`predict` adds up named terms (each a time in
seconds per frame) and names the largest. A roofline term is ``max(bytes / bandwidth,
FLOPs / peak)`` at the table's peak rates: predictions are optimistic, and ``pred/meas`` in
``fastsrnn bench --device cuda`` says by how much.

Backends (what the code does today, read from its sources):
- ``triton``: the fused frame tier (ops/frame_step.frame_step_triton: L + 2 Triton launches, L + 1
  without skip connections; n tiers: each upper tier's once per its period), then
  ops/sample_frame.sample_frame_triton: below 16 sequences kernels/sample_frame.py (one launch of
  cdiv(B, 4) programs, each streaming all of W3 and Wo every step on fp32 CUDA cores), from 16
  kernels/sample_frame_split.py (per step stage A over sequence tiles x W3 row slices, fp32 "ieee"
  dots or three bf16 tensor-core products, and stage B per sequence: 2F + 1 launches);
- ``cuda``: the same fused frame tier, then csrc/cuda/sample_frame.cu: one cooperative launch of
  min(SMs, H/4) blocks with W3/Wo row slices in shared memory, 2 grid barriers per sample step
  (1 + 2F per frame), row products fed from shared memory (one 4-byte shared load per
  multiply-add), every block drawing every sequence from all the logits, P (the table rows known
  a step early) computed distributed, the one new table row gathered by every block.
Per-SM rates: a program (block) runs on one SM and reads L2 at l2_bytes_per_s / SMs; that is the
limit of any stage with fewer programs than SMs. After the frame tier has streamed its weights
through L2 (more than the L2 for dadabots-2tier), the sample tier's W3, Wo and table rows come
from HBM once per frame ("sample weights reload"), and from L2 for the other F - 1 steps.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional

from fastsrnn.backends.graphs import FRAMES_PER_GRAPH
from fastsrnn.config import SampleRNNConfig
from fastsrnn.ops.thresholds import TRITON_SAMPLE_SPLIT_MIN_B, TRITON_SAMPLE_SPLIT_MIN_H


@dataclass(frozen=True)
class GPU:
    name: str
    hbm_bytes_per_s: float
    l2_bytes: float
    l2_bytes_per_s: float  # aggregate L2 read bandwidth (an estimate; NVIDIA does not publish it)
    sms: int
    smem_per_sm: int  # bytes of shared memory a block may use
    smem_bytes_per_clk: int  # per SM
    clock_hz: float  # sustained SM clock under load
    bf16_flops: float  # dense tensor-core peak
    tf32_flops: float
    fp32_flops: float  # CUDA cores, an FMA counted as 2
    launch_s: float = 3e-6  # a plain kernel launch from the host (torch op or extension call)
    graph_node_s: float = 1.5e-6  # one kernel inside a replayed CUDA graph
    grid_sync_s: float = 1e-6  # one cooperative grid-wide barrier
    phase_latency_s: float = 0.5e-6  # dependent L2 round trips + reductions in one kernel phase

    @property
    def sm_l2_bytes_per_s(self) -> float:
        return self.l2_bytes_per_s / self.sms

    @property
    def sm_fp32_macs_per_s(self) -> float:
        return self.fp32_flops / 2 / self.sms

    @property
    def sm_smem_bytes_per_s(self) -> float:
        return self.smem_bytes_per_clk * self.clock_hz


H100_SXM = GPU("H100-SXM", hbm_bytes_per_s=3.35e12, l2_bytes=50e6, l2_bytes_per_s=10e12, sms=132,
               smem_per_sm=227 * 1024, smem_bytes_per_clk=128, clock_hz=1.755e9,
               bf16_flops=990e12, tf32_flops=495e12, fp32_flops=67e12)
GPUS: Dict[str, GPU] = {"H100-SXM": H100_SXM, "H200": replace(H100_SXM, name="H200", hbm_bytes_per_s=4.8e12)}
BACKENDS = ("triton", "cuda")
# The frame tier each backend runs: "torch" (ops/frame_step.frame_step_ref, cuBLAS + torch
# elementwise ops) or "fused" (ops/frame_step.frame_step_triton: L + 2 Triton launches, what
# the triton and cuda backends run on a CUDA device: backends/fused_frame.py).
FRAME_TIER = {"triton": "fused", "cuda": "fused"}


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


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def _roof(terms: Dict[str, float], candidates: Dict[str, float]) -> None:
    """Add the largest of ``candidates`` (alternative bounds of one stage) to ``terms``."""
    name = max(candidates, key=candidates.get)
    terms[name] = terms.get(name, 0.0) + candidates[name]


# --- the two tiers ---------------------------------------------------------------------------------

def _frame_tier(cfg, B, wd, gpu: GPU, fused: bool, graphs: bool, terms, acc) -> None:
    F, H, L, G = cfg.frame_size, cfg.dim, cfg.n_rnn, cfg.gates
    w = frame_tier_bytes(cfg, wd)
    flops = 2 * B * frame_tier_params(cfg)
    act = B * 4 * ((L * 6 * H + F * H) if fused else (L * (5 * G * H + 33 * H) + 2 * F * H))
    peak, unit = (gpu.fp32_flops, "fp32 CUDA cores") if wd == "fp32" else (gpu.bf16_flops, "bf16 tensor cores")
    weights_from = "HBM" if w > gpu.l2_bytes else "L2"
    _roof(terms, {f"frame tier: weights from {weights_from}":
                  w / (gpu.hbm_bytes_per_s if weights_from == "HBM" else gpu.l2_bytes_per_s),
                  f"frame tier: FLOPs on {unit}": flops / peak,
                  "frame tier: activations via L2": act / gpu.l2_bytes_per_s})
    # n tiers: each upper tier's launches once per its period (P_k bottom frames), per frame on average
    fused_k = L + (2 if cfg.skip and L > 1 else 1)  # layers, the skip sum, the upsampling
    k = (fused_k if fused else torch_frame_kernels(cfg, wd)) * (1 + sum(
        F / cfg.tier_samples(t) for t in range(1, cfg.n_tiers - 1)))
    terms["frame tier: launches"] = k * (gpu.graph_node_s if graphs else gpu.launch_s)
    acc["hbm"] += w if weights_from == "HBM" else 0
    acc["l2"] += act + (w if weights_from == "L2" else 0)
    acc["flops"] += flops
    acc["kernels"] += round(k)


def _sample_reload(cfg, B, wd, gpu, terms, acc) -> None:
    """W3, Wo and the touched table rows come back from HBM once per frame (the frame tier evicted them)."""
    F, H, Q = cfg.frame_size, cfg.dim, cfg.q_levels
    ws = _wsize(wd)
    frame_w = frame_tier_bytes(cfg, wd)
    if frame_w + (H * H + Q * H + F * Q * H) * ws <= gpu.l2_bytes:
        return  # everything stays in L2
    b = (H * H + Q * H) * ws + min(F * Q * H, B * F * F * H) * ws
    terms["sample tier: weights reload from HBM"] = b / gpu.hbm_bytes_per_s
    acc["hbm"] += b


def _sample_triton_small(cfg, B, wd, gpu, terms, acc) -> None:
    """kernels/sample_frame.py: cdiv(B, BLOCK_B) programs, each streams W3 + Wo per step (CUDA cores)."""
    F, H, Q = cfg.frame_size, cfg.dim, cfg.q_levels
    ws = _wsize(wd)
    bb = min(_pow2(B), 4)
    programs = math.ceil(B / bb)
    waves = math.ceil(programs / gpu.sms)
    prog_bytes = (H * H + Q * H) * ws + bb * F * H * ws + bb * H * 4
    prog_flops = 2 * bb * (H * H + Q * H)
    per_step = {"sample tier: per-program L2 reads (each program streams W3 + Wo)":
                waves * prog_bytes / gpu.sm_l2_bytes_per_s,
                "sample tier: per-program fp32 FMAs": waves * prog_flops / (2 * gpu.sm_fp32_macs_per_s),
                "sample tier: L2 bandwidth": programs * prog_bytes / gpu.l2_bytes_per_s}
    _roof(terms, {k: F * v for k, v in per_step.items()})
    acc["l2"] += F * programs * prog_bytes
    acc["flops"] += F * 2 * B * (H * H + Q * H)
    acc["kernels"] += 1


def _cuda_today_tile(cfg, B, ws, gpu) -> Optional[tuple]:
    H, Q, F = cfg.dim, cfg.q_levels, cfg.frame_size
    grid = max(1, min(gpu.sms, math.ceil(H / 4)))
    r3, ro = math.ceil(H / grid), math.ceil(Q / grid)
    for tile in range(min(B, 8), 0, -1):  # as sample_frame_launch: shrink the activation tile to fit
        a16 = lambda n: (n + 15) // 16 * 16  # noqa: E731
        smem = a16((r3 + ro) * H * ws) + a16(tile * H * 4) + a16(F * 4) + 2 * 8 * 4
        if smem <= gpu.smem_per_sm:
            return grid, r3, ro, tile
    return None


def _sample_cuda_today(cfg, B, wd, gpu, terms, acc) -> str:
    """csrc/cuda/sample_frame.cu: 2 grid barriers per step (1 + 2F per frame). Phase 1: every block
    draws every sequence (reads all logits), builds a2 from P and one table row per sequence, W3 rows
    from shared memory; phase 2: Wo rows, and P_{j+1} for the block's columns (F - 1 table rows)."""
    F, H, Q = cfg.frame_size, cfg.dim, cfg.q_levels
    ws = _wsize(wd)
    fit = _cuda_today_tile(cfg, B, ws, gpu)
    if fit is None:
        return "does not fit in shared memory"
    grid, r3, ro, tile = fit
    tiles = math.ceil(B / tile)
    smem_rate, l2_rate = gpu.sm_smem_bytes_per_s, gpu.sm_l2_bytes_per_s
    row_phases = sum((rows * H * B * 4 + rows * H * ws * tiles) / smem_rate for rows in (r3, ro))
    sm_reads = B * (Q * 4 + H * 4 + H * ws + H * 4 + (F - 1) * r3 * ws)  # logits, P, row, a3, P's rows
    terms["sample tier: grid barriers (2 per step)"] = (2 * F + 1) * gpu.grid_sync_s
    terms["sample tier: row products from shared memory"] = F * row_phases
    terms["sample tier: per-block L2 reads (all logits, P, a3, table rows)"] = F * sm_reads / l2_rate
    terms["sample tier: phase latency"] = F * 2 * gpu.phase_latency_s
    acc["l2"] += F * grid * sm_reads
    acc["flops"] += F * 2 * B * (H * H + Q * H)
    acc["kernels"] += 1  # one cooperative launch, no memset
    return "" if B <= 8 * grid else "more sequences than 8 per block"


def _stage(programs, prog_bytes, prog_flops, peak, unit, gpu) -> Dict[str, float]:
    waves = math.ceil(programs / gpu.sms)
    return {"per-program L2 reads": waves * prog_bytes / gpu.sm_l2_bytes_per_s,
            "L2 bandwidth": programs * prog_bytes / gpu.l2_bytes_per_s,
            f"FLOPs on {unit}": max(waves * prog_flops / (peak / gpu.sms), programs * prog_flops / peak)}


def split_config(B: int, H: int) -> tuple:
    """(BLOCK_B, BLOCK_N, NS) of kernels/sample_frame_split.launch_config (stage A aims at 128 programs)."""
    bb = 16 if B <= 32 else 32 if B < 256 else 64
    bn = 16
    while bn < 128 and math.ceil(B / bb) * math.ceil(H / (2 * bn)) >= 128:
        bn *= 2
    return bb, bn, math.ceil(H / bn)


def _sample_triton_split(cfg, B, wd, gpu, terms, acc) -> str:
    """kernels/sample_frame_split.py: per step stage A over (sequence tile x W3 row slice) programs
    (W3 slice, then its share of the logits through Wo's columns), stage B one program per sequence
    (sums the NS partial logits, draws, gathers the next a2); a prologue; 2F + 1 launches."""
    F, H, Q = cfg.frame_size, cfg.dim, cfg.q_levels
    ws = _wsize(wd)
    bb, bn, ns = split_config(B, H)
    if wd == "bf16":  # three bf16 products per tile (the activations split in three bf16 terms)
        peak, unit, mult = gpu.bf16_flops, "bf16 tensor cores (x3 split)", 3
    else:  # tl.dot with input_precision="ieee": fp32 FMAs, no TF32
        peak, unit, mult = gpu.fp32_flops, "fp32 CUDA cores (ieee dot)", 1
    na = math.ceil(B / bb) * ns
    a_bytes = bn * H * ws + bb * H * 4 + Q * bn * ws + bb * Q * 4
    st_a = _stage(na, a_bytes, mult * 2 * bb * bn * (H + Q), peak, unit, gpu)
    b_bytes = ns * Q * 4 + F * H * ws + 2 * H * 4 + Q * 4
    st_b = _stage(B, b_bytes, 0.0, peak, unit, gpu)
    _roof(terms, {f"sample tier: stage A (W3 + Wo slices) {k}": F * v for k, v in st_a.items()})
    _roof(terms, {f"sample tier: stage B (sum, draw, gather) {k}": F * v for k, v in st_b.items()})
    terms["sample tier: stage latency"] = F * 2 * gpu.phase_latency_s
    acc["l2"] += F * (na * a_bytes + B * b_bytes)
    acc["flops"] += F * 2 * B * (H * H + Q * H)
    acc["kernels"] += 2 * F + 1
    return f"split path: {na} x {B} programs (tiles {bb} x {bn})"


def _sample_triton_today(cfg, B, wd, gpu, terms, acc) -> str:
    """ops/sample_frame.sample_frame_triton: the small path below TRITON_SAMPLE_SPLIT_MIN_B sequences
    and TRITON_SAMPLE_SPLIT_MIN_H hidden units (ops/thresholds.py), else the split one."""
    if B >= TRITON_SAMPLE_SPLIT_MIN_B or cfg.dim >= TRITON_SAMPLE_SPLIT_MIN_H:
        return _sample_triton_split(cfg, B, wd, gpu, terms, acc)
    _sample_triton_small(cfg, B, wd, gpu, terms, acc)
    return "small path: one launch per frame"


# --- the prediction ----------------------------------------------------------------------------------

def predict(cfg, n_seq: int, backend: str, weights_dtype: str = "fp32", gpu: str = "H100-SXM",
            graphs: bool = True) -> Prediction:
    """Predicted time per frame of ``backend`` (one of BACKENDS; a bench variant such as
    'cuda:bf16' or 'triton:nograph' is read too) for ``n_seq`` sequences of ``cfg`` (a config or
    a preset name) on ``gpu`` (a key of GPUS). weights_dtype: 'fp32' or 'bf16', both tiers (as
    the bench's ':bf16' variants). graphs: replay frames as CUDA graphs (16 per replay)."""
    from fastsrnn.config import PRESETS

    preset = cfg if isinstance(cfg, str) else next((k for k, v in PRESETS.items() if v == cfg), "-")
    cfg = SampleRNNConfig.from_name(cfg) if isinstance(cfg, str) else cfg
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
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; known: {', '.join(GPUS)}")
    if n_seq < 1:
        raise ValueError(f"n_seq must be >= 1, got {n_seq}")
    g, wd, B = GPUS[gpu], weights_dtype, n_seq
    _wsize(wd)
    terms: Dict[str, float] = {}
    acc = {"hbm": 0.0, "l2": 0.0, "flops": 0.0, "kernels": 0}
    _frame_tier(cfg, B, wd, g, FRAME_TIER[name] == "fused", graphs, terms, acc)
    _sample_reload(cfg, B, wd, g, terms, acc)
    n0 = acc["kernels"]
    note = {"triton": _sample_triton_today, "cuda": _sample_cuda_today}[name](cfg, B, wd, g, terms, acc) or ""
    if name == "cuda" and note.startswith("does not fit"):
        return Prediction(preset, name, B, wd, gpu, math.inf, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, {}, "-", note)
    terms["sample tier: launches"] = (acc["kernels"] - n0) * (g.graph_node_s if graphs else g.launch_s)
    if graphs:  # FrameGraph.frames: per replay of FRAMES_PER_GRAPH frames, copy uniforms in, replay, copy out
        terms["host: graph replay + 2 copies"] = 3 * g.launch_s / FRAMES_PER_GRAPH
        acc["kernels"] += 2
    t = sum(terms.values())
    per_seq = cfg.frame_size / t
    return Prediction(preset=preset, backend=name + (":bf16" if wd == "bf16" else "") + ("" if graphs else ":nograph"),
                      n_seq=B, weights_dtype=wd, gpu=gpu, time_per_frame_s=t, samples_per_s=per_seq * B,
                      samples_per_s_per_seq=per_seq, bytes=acc["hbm"] + acc["l2"], hbm_bytes=acc["hbm"],
                      l2_bytes=acc["l2"], flops=acc["flops"], kernels=int(acc["kernels"]), terms=terms,
                      largest_term=max(terms, key=terms.get), note=note)


def predict_table(presets: List[str], n_seqs: List[int], backends=BACKENDS, dtypes=("fp32", "bf16"),
                  gpu: str = "H100-SXM") -> List[Prediction]:
    return [predict(p, n, b, d, gpu) for p in presets for b in backends for d in dtypes for n in n_seqs]


def format_predictions(preds: List[Prediction]) -> str:
    lines = [f"predictions on {preds[0].gpu if preds else '-'} (a model, not a measurement)",
             "| preset | backend | weights | n_seq | pred ms/frame | samples/s/seq | samples/s total | "
             "HBM MB | L2 MB | GFLOP | kernels | largest term (share) | note |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for p in preds:
        if math.isinf(p.time_per_frame_s):
            lines.append(f"| {p.preset} | {p.backend} | {p.weights_dtype} | {p.n_seq} | - | - | - | - | - | - | - "
                         f"| - | {p.note} |")
            continue
        share = p.terms[p.largest_term] / p.time_per_frame_s
        lines.append(f"| {p.preset} | {p.backend} | {p.weights_dtype} | {p.n_seq} | {p.time_per_frame_s * 1e3:.3f} | "
                     f"{p.samples_per_s_per_seq:,.0f} | {p.samples_per_s:,.0f} | {p.hbm_bytes / 1e6:.0f} | "
                     f"{p.l2_bytes / 1e6:.0f} | {p.flops / 1e9:.2f} | {p.kernels} | "
                     f"{p.largest_term} ({100 * share:.0f}%) | {p.note} |")
    return "\n".join(lines)


def describe_gpu(gpu: str) -> str:
    g = GPUS[gpu]
    return (f"{g.name}: HBM {g.hbm_bytes_per_s / 1e12:.2f} TB/s, L2 {g.l2_bytes / 1e6:.0f} MB at "
            f"~{g.l2_bytes_per_s / 1e12:.0f} TB/s (estimate; {g.sm_l2_bytes_per_s / 1e9:.0f} GB/s per SM), "
            f"{g.sms} SMs, {g.smem_per_sm // 1024} KB shared memory per SM at {g.smem_bytes_per_clk} B/clk, "
            f"{g.clock_hz / 1e9:.3f} GHz; peaks {g.bf16_flops / 1e12:.0f} TFLOP/s bf16 dense, "
            f"{g.tf32_flops / 1e12:.0f} TF32, {g.fp32_flops / 1e12:.0f} fp32 CUDA cores; launch "
            f"{g.launch_s * 1e6:.1f} us plain, {g.graph_node_s * 1e6:.1f} us in a CUDA graph; grid sync "
            f"{g.grid_sync_s * 1e6:.1f} us; phase latency {g.phase_latency_s * 1e6:.1f} us")


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

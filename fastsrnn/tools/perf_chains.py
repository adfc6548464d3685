"""The latency chains of tools/perf_model.py: each GPU kernel's dependent steps per frame.

Every count here comes from the code that launches the kernel, called with the frame's shapes:
kernels/frame_step.py (layer_config, linear_config), kernels/sample_frame_split.py and
kernels/sample_frame.py (launch_config), fastsrnn/ops/thresholds.py (which path runs), and the
persistent CUDA kernel's constants read from csrc/cuda/sample_frame.cuh (its launch plan,
sample_frame_launch_plan, is host C++: the few lines of it that size the grid and the sequence
tile are mirrored in :func:`cuda_plan` and checked against the header's constants). Nothing is a
copy of a tile size. What each step costs is tools/perf_model.py's Calibration (fitted constants).

A kernel's time (seconds per launch; ``c`` a Calibration, ``p`` = programs per SM, at least 1):
- frame-tier kernels (LSTM layers, skip sum, upsampling): ``t_node + max(I * t_iter, weight bytes
  / HBM rate, tile bytes / L2 rate)``; ``t_iter = max(t_rt / (num_stages - 1), p * warps * n *
  c_sm)``: a K loop of I iterations keeps num_stages - 1 tiles in flight (Little's law), unless the
  SM's issue of n warp-instructions per iteration (the FMAs or MMAs plus c.loop_instr) is longer;
  every program re-reads its activation tile from L2 (the L2 term: 135 MB per layer at n_seq 128).
- Triton split sample tier, stage A (2 loops: W3's K tiles, then Wo's Q chunks): single-buffered
  (the SASS as read by the H100 review of 2026-12-08, issue 19, "the review" below: one
  shared-memory slot, a wait for all copies at every iteration's head), so every iteration is
  ``t_rt + p * warps * n * c_sm`` with nothing overlapped.
- stage B: the partial-logit sum (NS / BLOCK_S loads), STAGE_B_OTHER_RT other dependent loads, the
  draw (``t_draw_triton``) and the gather of the next a2, F x H / BLOCK_H serial table loads.
- Triton small sample tier: per step the same gather, the cond load, H / BLOCK_N x (H / BLOCK_K
  + 1) dependent loads of W3 and Wo tiles, and the draw.
- persistent CUDA kernel, per sample step: 2 grid barriers, each warp drawing ceil(B / warps)
  sequences (a logits load + ``t_draw_cuda`` each), per sequence tile and phase (W3, Wo) the
  staging round trips, the shared-memory reads of the tile's row products and a block sync; then
  P of the next step (table rows, ceil(B * rows3 / threads) round trips).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Tuple

from fastsrnn.config import SampleRNNConfig
from fastsrnn.ops import thresholds  # read at each call: tests lower a threshold on the module

SMS = 132  # SMs of an H100 SXM: programs per SM = grid / SMS (the GPU table's sms)
MMA_MACS = 16 * 8 * 16  # multiply-adds of one mma.sync m16n8k16 (one warp-instruction): bf16 tl.dot
SPLIT_TERMS = 3  # bf16 stage A: the fp32 activations split in three bf16 terms, 3 products (sample_frame_split)
STAGE_B_OTHER_RT = 3  # stage B's other dependent loads: the bias, the uniform and the slots (review, App. B)
CUDA_STAGE_IN_FLIGHT = 2  # 16-byte staging loads a CUDA thread has in flight (review §1.3, from the SASS)
CUDA_HEADER = Path(__file__).resolve().parents[2] / "csrc" / "cuda" / "sample_frame.cuh"


@dataclass(frozen=True)
class Loop:
    """One loop of a kernel: ``iterations`` dependent steps, ``in_flight`` tiles loaded ahead
    (num_stages - 1), ``instr`` warp-instructions per warp per iteration before c.loop_instr."""
    iterations: int
    in_flight: int
    instr: float


@dataclass(frozen=True)
class Kernel:
    """One kernel of a frame: its launch (grid, warps) from the code and what it streams."""
    name: str
    per_frame: float  # launches per bottom frame (an upper tier's: once per its period)
    grid: int
    warps: int
    loops: Tuple[Loop, ...]
    hbm_bytes: float  # weights streamed per launch
    l2_bytes: float  # tiles read from L2 per launch (every program's activations and weights)

    @property
    def per_sm(self) -> float:
        return max(1.0, self.grid / SMS)


def _fs():
    from fastsrnn.kernels import frame_step as k  # imports triton (the library's own mode: see kernels/mode.py)

    return k


def _ws(bf16: bool) -> int:
    return 2 if bf16 else 4


def _dot_instr(macs: float, warps: int, bf16: bool, terms: int = 1) -> float:
    """Warp-instructions per warp of one tile product: FFMA per thread (fp32 ieee), or mma.sync."""
    return terms * macs / (warps * MMA_MACS) if bf16 else macs / (warps * 32)


def _frame_loop(cfg: dict, k_cols: int, rows: int, bf16: bool) -> Loop:
    it = math.ceil(k_cols / cfg["BLOCK_K"])
    macs = cfg["BLOCK_B"] * rows * cfg["BLOCK_K"]
    dot = cfg["DOT"]
    return Loop(it, max(1, cfg["num_stages"] - 1), _dot_instr(macs, cfg["num_warps"], bf16 and dot))


def _frame_kernel(name, per_frame, cfg, segments, rows_per_prog, n_rows, bf16) -> Kernel:
    """segments: (K columns, iterations or None) of the kernel's K loops."""
    ws, bb, bk = _ws(bf16), cfg["BLOCK_B"], cfg["BLOCK_K"]
    loops = []
    for cols, iters in segments:
        lp = _frame_loop(cfg, cols, rows_per_prog, bf16)
        loops.append(lp if iters is None else Loop(iters, lp.in_flight, lp.instr))
    grid = cfg["grid"][0] * cfg["grid"][1]
    it = sum(lp.iterations for lp in loops)
    cols = sum(c for c, _ in segments)
    return Kernel(name, per_frame, grid, cfg["num_warps"], tuple(loops), hbm_bytes=n_rows * cols * ws,
                  l2_bytes=grid * it * (bb * bk * 4 + rows_per_prog * bk * ws))


@lru_cache(maxsize=None)  # pure arithmetic on the launch configs: a fit calls it often
def frame_kernels(cfg: SampleRNNConfig, B: int, bf16: bool) -> List[Kernel]:
    """The fused frame tier's launches (ops/frame_step.frame_step_triton: L layers, the skip sum,
    the upsampling; every tier, an upper one once per its period)."""
    k = _fs()
    H, L, G = cfg.dim, cfg.n_rnn, cfg.gates
    skip = cfg.skip and L > 1
    out: List[Kernel] = []
    n_up = cfg.n_tiers - 2
    for t in range(n_up + 1):
        S = cfg.tier_samples(t)  # the tier's window: its input samples
        per = cfg.frame_size / S
        tag = "frame tier" if t == 0 else f"tier {t + 1}"
        lc = k.layer_config(B, H, S, bf16)
        xin_iters = math.ceil(S / lc["BLOCK_F"])
        for i in range(L):
            has_x = i > 0 or t < n_up  # layer i-1's h, or the tier above's cond
            segs = ([(H, None)] if has_x else []) + ([(S, xin_iters)] if i == 0 or skip else []) + [(H, None)]
            out.append(_frame_kernel(f"{tag}: LSTM layer {i + 1}" if G == 4 else f"{tag}: GRU layer {i + 1}",
                                     per, lc, segs, G * lc["BLOCK_H"], G * H, bf16))
        if skip:
            sc = k.linear_config(B, H, L * H, bf16)
            out.append(_frame_kernel(f"{tag}: skip sum", per, sc, [(L * H, None)], sc["BLOCK_N"], H, bf16))
        r = cfg.frame_sizes[t]
        uc = k.linear_config(B, r * H, H, bf16)
        out.append(_frame_kernel(f"{tag}: upsampling", per, uc, [(H, None)], uc["BLOCK_N"], r * H, bf16))
    return out


@lru_cache(maxsize=None)  # pure arithmetic on the launch configs: a fit calls it often
def split_kernels(cfg: SampleRNNConfig, B: int, bf16: bool) -> Tuple[Kernel, Kernel, int, dict]:
    """Stage A and stage B of kernels/sample_frame_split.py (launch_config), F and F + 1 launches,
    and the stage-B loop counts: (stage A, stage B, launches per frame, counts)."""
    from fastsrnn.kernels import sample_frame_split as ks

    F, H, Q = cfg.frame_size, cfg.dim, cfg.q_levels
    lc = ks.launch_config(B, F, Q, H, w_bf16=bf16)
    a, b, ns = lc["stage_a"], lc["stage_b"], lc["NS"]
    w = a["num_warps"]
    terms = SPLIT_TERMS if bf16 else 1
    bb, bn = a["BLOCK_B"], a["BLOCK_N"]
    k_loop = Loop(math.ceil(H / a["BLOCK_K"]), 1, _dot_instr(bb * bn * a["BLOCK_K"], w, bf16, terms))
    q_loop = Loop(math.ceil(Q / a["BLOCK_Q"]), 1, _dot_instr(bb * a["BLOCK_Q"] * bn, w, bf16, terms))
    grid_a = math.ceil(B / a["BLOCK_B"]) * ns
    ws = _ws(bf16)
    stage_a = Kernel("sample tier: stage A", F, grid_a, w, (k_loop, q_loop), hbm_bytes=0.0,
                     l2_bytes=grid_a * ((a["BLOCK_N"] * H + Q * a["BLOCK_N"]) * ws + a["BLOCK_B"] * H * 4))
    counts = dict(sum_loads=math.ceil(ns / b["BLOCK_S"]), gather=F * math.ceil(H / b["BLOCK_H"]), NS=ns)
    stage_b = Kernel("sample tier: stage B", F + 1, math.ceil(B / b["ROWS"]), b["num_warps"], (), 0.0,
                     l2_bytes=B * (ns * Q * 4 + F * H * ws))
    return stage_a, stage_b, 2 * F + 1, counts


@lru_cache(maxsize=None)  # pure arithmetic on the launch configs: a fit calls it often
def small_counts(cfg: SampleRNNConfig, B: int) -> dict:
    """kernels/sample_frame.py (launch_config): programs and dependent loads per sample step."""
    from fastsrnn.kernels import sample_frame as km

    F, H, Q = cfg.frame_size, cfg.dim, cfg.q_levels
    lc = km.launch_config(B, F, Q, H)
    per_step = F * math.ceil(H / lc["BLOCK_H"]) + 1 + math.ceil(H / lc["BLOCK_N"]) * (math.ceil(H / lc["BLOCK_K"]) + 1)
    return dict(grid=math.ceil(B / lc["BLOCK_B"]), round_trips=per_step, warps=lc["num_warps"])


def triton_path(cfg: SampleRNNConfig, B: int) -> str:
    """'split' or 'small': ops/sample_frame.sample_frame_triton's choice (ops/thresholds.py)."""
    split = B >= thresholds.TRITON_SAMPLE_SPLIT_MIN_B or cfg.dim >= thresholds.TRITON_SAMPLE_SPLIT_MIN_H
    return "split" if split else "small"


@lru_cache(maxsize=None)
def cuda_constants() -> Dict[str, int]:
    """The persistent kernel's constexprs (kSfThreads, kSfTile, kSfRowsPerBlock, kSfWarps) read from
    csrc/cuda/sample_frame.cuh."""
    text = CUDA_HEADER.read_text()
    found = dict(re.findall(r"constexpr int (kSf\w+) = (\d+);", text))
    need = ("kSfThreads", "kSfTile", "kSfRowsPerBlock")
    missing = [n for n in need if n not in found]
    if missing:
        raise RuntimeError(f"perf_chains: {CUDA_HEADER} no longer defines {missing} as 'constexpr int NAME = N;'")
    c = {n: int(found[n]) for n in need}
    c["kSfWarps"] = c["kSfThreads"] // 32
    return c


def cuda_plan(cfg: SampleRNNConfig, B: int, bf16: bool, smem_per_block: int = 232448, sms: int = SMS) -> dict:
    """sample_frame_launch_plan's grid, rows per block and sequence tile (csrc/cuda/sample_frame.cuh),
    or {} when the weights do not fit in shared memory."""
    c = cuda_constants()
    F, H, Q = cfg.frame_size, cfg.dim, cfg.q_levels
    ws, a16 = _ws(bf16), (lambda n: (n + 15) // 16 * 16)  # noqa: E731
    target = min(sms, math.ceil(H / c["kSfRowsPerBlock"]))
    rows3 = math.ceil(H / target)
    grid = math.ceil(H / rows3)
    rowso = math.ceil(Q / grid)
    hp, warps = (H + 7) // 8 * 8, c["kSfWarps"]
    stage = 2 * ((Q + Q // 32 + 1 + 3) // 4 * 4)
    for tile in range(min(B, c["kSfTile"]), 0, -1):
        smem = (a16(rows3 * hp * ws) + a16(rowso * hp * ws) + a16(tile * hp * 4) + a16(warps * stage * 4)
                + a16(B * F * 4) + warps * c["kSfTile"] * 4)
        if smem <= smem_per_block:
            return dict(grid=grid, rows3=rows3, rowso=rowso, tile=tile, smem=smem, threads=c["kSfThreads"],
                        warps=warps, hp=hp)
    return {}


@lru_cache(maxsize=None)  # pure arithmetic on the launch configs: a fit calls it often
def cuda_step_counts(cfg: SampleRNNConfig, B: int, bf16: bool) -> dict:
    """Per sample step of the persistent kernel: tiles, draws per warp, staging round trips per
    tile, multiply-adds per tile (both phases), P's round trips (see the module docstring)."""
    p = cuda_plan(cfg, B, bf16)
    if not p:
        return {}
    H, tile = cfg.dim, p["tile"]
    loads = math.ceil(tile * p["hp"] * 4 / (p["threads"] * 16))  # 16-byte loads per thread to stage a tile
    return dict(plan=p, tiles=math.ceil(B / tile), draws_per_warp=math.ceil(B / p["warps"]),
                stage_round_trips=math.ceil(loads / CUDA_STAGE_IN_FLIGHT),
                macs_per_tile=tile * (p["rows3"] + p["rowso"]) * H,
                p_round_trips=math.ceil(B * p["rows3"] / p["threads"]))

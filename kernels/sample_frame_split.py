"""Triton sample tier for many sequences: each sample step split over the whole GPU, tensor cores.

The eager twin and specification is fastsrnn.ops.sample_frame.sample_frame_ref (same contract).
One program per sequence tile cannot keep an H100 busy (132 SMs; 1 program at n_seq 16), and
every such program streams all of W3 and Wo per step. Here each step is two launches whose
programs each read only a slice of the weights:

- stage A, grid (cdiv(B, BLOCK_B), NS = cdiv(H, BLOCK_N)): program (i, n) owns sequences
  [i*BLOCK_B, +BLOCK_B) and rows [n*BLOCK_N, +BLOCK_N) of W3. It computes the a3 slice
  relu(a2 @ W3[rows].T + b3[rows]) (BLOCK_B, BLOCK_N) with tl.dot over K tiles of BLOCK_K, and at
  once its share of the logits, a3_slice @ Wo[:, rows].T (BLOCK_B, Q) (tl.dot; Wo read as
  (BLOCK_Q, BLOCK_N) tiles of row segments, BLOCK_N contiguous values each, no strided column
  reads), stored to ``part`` (B, NS, Q). a3 never reaches memory; W3 and Wo are read once per
  sequence tile per step, spread over all programs.
- stage B, grid (cdiv(B, ROWS),): one program per ROWS sequences sums the NS partial logits in a
  fixed order (deterministic: no atomics) plus bo, writes logits_out, draws x by inverse CDF (or
  argmax, or forced), writes out[:, j], then builds the next step's a2 = relu(cond_{j+1} +
  sum_k table[k, slot_k]) (B, H) into scratch, or, at the last step, the final window. The F
  table gathers per sequence thus happen once per step, not once per stage-A program.
- a prologue (stage B with PROLOGUE) builds step 0's a2 from the window.

Launches per frame: 2F + 1 (the backend captures a frame in one CUDA graph). Scratch: a2 (B, H)
and part (B, NS, Q), float32, allocated once per (device, B, Q, H, NS) in a caller-owned dict
(see :func:`launch`) and reused: buffers captured by a CUDA graph must outlive it.

Slots: at step j, window slot k holds sample k + j of the stream (window[k + j] while < F,
then out[k + j - F]); ``window`` itself is rewritten only by the last step, after every read.

Precision (fp32 accumulation everywhere):
- fp32 weights: tl.dot(..., input_precision="ieee"), plain fp32 FMA (no TF32, which rounds
  both operands to 10 mantissa bits and would change the drawn integers): logits match the
  reference to fp32 rounding, so the draws are the same except at CDF near-ties. Triton lowers
  it to FMA, not tensor cores: at fp32 this path gains the spread over SMs, not MMA speed
  (3xTF32 would be the tensor-core option near fp32 accuracy; not taken, unverified here).
- bf16 weights: bf16 tensor cores (mma) with each fp32 activation split in three bf16 terms
  (see _split_dot), three products per tile: the only error left is the weights' own bf16
  rounding, as in plain PyTorch (sample_frame_ref) on the same bf16 weights, so the draws match
  that reference too. Tensor-core work triples, but the step is bound by weight traffic and
  latency, not by MMA throughput.

Never autotune: the kernels update ``window``/``out`` in place.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from fastsrnn.kernels.mode import INTERPRETED, mode_mismatch
from fastsrnn.kernels.sample_frame import _emit_step, sampling_args, scratch_buffer


@triton.jit
def _split_dot(a, b, acc, W_BF16: tl.constexpr, WIDEN: tl.constexpr):
    """acc + a @ b; a (M, K) float32 activations, b (K, N) weights (float32 or bfloat16).

    bf16 weights: a = t0 + t1 + t2 in three bf16 terms (8 mantissa bits each: fp32's 24), one
    bf16 tensor-core product each, fp32 accumulation: the products of bf16 values are exact,
    so this is fp32 arithmetic on the bf16 weights (two terms would leave ~2^-17 |a| per value).
    WIDEN (the interpreter only): the bf16 terms widened to fp32 before tl.dot, which Triton's
    interpreter (3.9 at least) gets wrong on bf16 (it multiplies the raw 16-bit patterns)."""
    if W_BF16:
        t0 = a.to(tl.bfloat16)
        r = a - t0.to(tl.float32)
        t1 = r.to(tl.bfloat16)
        t2 = (r - t1.to(tl.float32)).to(tl.bfloat16)
        if WIDEN:
            bw = b.to(tl.float32)
            acc = tl.dot(t0.to(tl.float32), bw, acc, input_precision="ieee")
            acc = tl.dot(t1.to(tl.float32), bw, acc, input_precision="ieee")
            acc = tl.dot(t2.to(tl.float32), bw, acc, input_precision="ieee")
        else:
            acc = tl.dot(t0, b, acc)
            acc = tl.dot(t1, b, acc)
            acc = tl.dot(t2, b, acc)
    else:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    return acc


@triton.jit
def _stage_a_kernel(
    a2, w3, b3, wo, part,
    B, Q, H, NS,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_Q: tl.constexpr,
    W_BF16: tl.constexpr, WIDEN: tl.constexpr,
):
    """part[b, n, :] = relu(a2[b] @ W3[rows_n].T + b3[rows_n]) @ Wo[:, rows_n].T for this tile.

    a2: (B, H) float32; w3: (H, H); wo: (Q, H); part: (B, NS, Q) float32."""
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)  # (BB,)
    pn = tl.program_id(1)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,) rows of W3 = columns of Wo
    mb, mn = rb < B, rn < H
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        kk = k0 + rk
        mk = kk < H
        a = tl.load(a2 + rb[:, None] * H + kk[None, :], mask=mb[:, None] & mk[None, :], other=0.0)  # (BB, BK)
        # (BK, BN) view of W3[rows, kk]: each row's BK values are contiguous.
        w = tl.load(w3 + rn[None, :] * H + kk[:, None], mask=mk[:, None] & mn[None, :], other=0.0)
        acc = _split_dot(a, w, acc, W_BF16, WIDEN)
    a3 = tl.maximum(acc + tl.load(b3 + rn, mask=mn, other=0.0)[None, :], 0.0)  # (BB, BN); 0 on masked rows
    rq = tl.arange(0, BLOCK_Q)
    for q0 in range(0, Q, BLOCK_Q):  # Q in chunks: the (BB, BLOCK_Q) product stays small in registers
        qq = q0 + rq
        mq = qq < Q
        # (BN, BQ) view of Wo[qq, rows]: row q's BN values are contiguous (row-major Wo, coalesced).
        v = tl.load(wo + qq[None, :] * H + rn[:, None], mask=mn[:, None] & mq[None, :], other=0.0)
        lg = _split_dot(a3, v, tl.zeros((BLOCK_B, BLOCK_Q), dtype=tl.float32), W_BF16, WIDEN)  # (BB, BQ)
        tl.store(part + (rb[:, None] * NS + pn) * Q + qq[None, :], lg, mask=mb[:, None] & mq[None, :])


@triton.jit(do_not_specialize=["j"])
def _stage_b_kernel(
    table, cond, bo, window, uniforms, inv_t, out, forced, logits_out, a2, part,
    B, Q, H, NS, j, top_k, top_p,
    F: tl.constexpr, ROWS: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_H: tl.constexpr,
    PROLOGUE: tl.constexpr, ARGMAX: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr,
    HAS_FORCED: tl.constexpr, HAS_LOGITS: tl.constexpr,
):
    """Step j's logits, draw and next a2 for ROWS sequences (PROLOGUE: only step 0's a2, j = -1).

    part: (B, NS, Q) float32 partial logits; a2: (B, H) float32; the rest as the op's contract."""
    rb = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # (R,)
    mb = rb < B
    rf = tl.arange(0, BLOCK_F)
    mf = rf < F
    if PROLOGUE:
        x = tl.zeros((ROWS,), dtype=tl.int64)  # unused: every slot of step 0 comes from the window
    else:
        rq = tl.arange(0, BLOCK_Q)
        mq = rq < Q
        rs = tl.arange(0, BLOCK_S)
        logits = tl.zeros((ROWS, BLOCK_Q), dtype=tl.float32)
        for s0 in range(0, NS, BLOCK_S):  # the NS slices in a fixed order: deterministic
            ss = s0 + rs
            p = tl.load(part + (rb[:, None, None] * NS + ss[None, :, None]) * Q + rq[None, None, :],
                        mask=mb[:, None, None] & (ss < NS)[None, :, None] & mq[None, None, :], other=0.0)
            logits += tl.sum(p, axis=1)  # (R, BQ)
        logits += tl.load(bo + rq, mask=mq, other=0.0)[None, :]
        x = _emit_step(logits, rb, mb, rq, mq, j, F, Q, inv_t, top_k, top_p, uniforms, forced, logits_out, out,
                       ARGMAX, TOP_K, TOP_P, HAS_FORCED, HAS_LOGITS)
    # Slots of step j + 1: slot k holds stream sample k + j + 1, from the window, out, or x.
    idx = rf + (j + 1)  # (BF,)
    in_win = idx < F
    sw = tl.load(window + rb[:, None] * F + idx[None, :], mask=mb[:, None] & (in_win & mf)[None, :], other=0)
    so = tl.load(out + rb[:, None] * F + (idx - F)[None, :],
                 mask=mb[:, None] & (mf & (idx >= F) & (idx - F < j))[None, :], other=0)
    slots = tl.where(in_win[None, :], sw, tl.where((idx - F == j)[None, :], x[:, None], so))  # (R, BF)
    if j == F - 1:  # the frame's last step: the new window is the frame's F samples
        tl.store(window + rb[:, None] * F + rf[None, :], slots, mask=mb[:, None] & mf[None, :])
    else:
        slots = tl.minimum(tl.maximum(slots, 0), Q - 1)  # memory safety only: the caller checks inputs
        rh = tl.arange(0, BLOCK_H)
        for h0 in range(0, H, BLOCK_H):
            hh = h0 + rh
            m = mb[:, None] & (hh < H)[None, :]
            acc = tl.zeros((ROWS, BLOCK_H), dtype=tl.float32)
            for k in range(F):  # slots summed in order k = 0..F-1, as the reference does
                s = tl.sum(tl.where(rf[None, :] == k, slots, 0), axis=1)  # (R,)
                acc += tl.load(table + (k * Q + s[:, None]) * H + hh[None, :], mask=m, other=0.0).to(tl.float32)
            c = tl.load(cond + (rb[:, None] * F + (j + 1)) * H + hh[None, :], mask=m, other=0.0)
            tl.store(a2 + rb[:, None] * H + hh[None, :], tl.maximum(c + acc, 0.0), mask=m)


MODE_MISMATCH = mode_mismatch(_stage_a_kernel, __name__)

# Programs stage A aims for: about one per SM of an H100 (132), so every SM streams a weight slice.
_TARGET_PROGRAMS = 128


def launch_config(B: int, F: int, Q: int, H: int, block_b: Optional[int] = None, w_bf16: bool = False) -> dict:
    """Tiles of both stages (untuned heuristics; no autotuning, see the module docstring).

    Stage A: BLOCK_B sequences (16, the smallest tl.dot tile, up to n_seq 32; 32 above, and 64
    from 256) x BLOCK_N rows of W3, BLOCK_N the smallest power of two >= 16 that keeps the grid
    near _TARGET_PROGRAMS (more rows per program = fewer partial logits for stage B to sum);
    K tiles of 32 (bf16, mma) or 16 (fp32: Triton's FMA dot holds whole K rows per thread), and
    the Wo product in Q chunks of 64: no spills and <= ~160 registers at the target shapes.
    Stage B: ROWS = 1 sequence per program (one softmax row; grid B)."""
    bb = block_b or (16 if B <= 32 else 32 if B < 256 else 64)
    if bb < 16 or bb & (bb - 1):
        raise ValueError(f"block_b of the split path (n_seq >= TRITON_SAMPLE_SPLIT_MIN_B) must be a power of two >= 16 "
                         f"(tl.dot tiles), got {block_b}; path='small' takes smaller blocks")
    tiles = triton.cdiv(B, bb)
    bn = 16
    while bn < 128 and tiles * triton.cdiv(H, 2 * bn) >= _TARGET_PROGRAMS:
        bn *= 2
    bq = max(16, triton.next_power_of_2(Q))
    ns = triton.cdiv(H, bn)
    stage_a = dict(BLOCK_B=bb, BLOCK_N=bn, BLOCK_K=32 if w_bf16 else 16, BLOCK_Q=min(bq, 64),
                   num_warps=4, num_stages=2)
    stage_b = dict(ROWS=1, BLOCK_F=triton.next_power_of_2(F), BLOCK_S=max(1, min(triton.next_power_of_2(ns),
                   4096 // bq)), BLOCK_Q=bq, BLOCK_H=min(256, triton.next_power_of_2(H)),
                   num_warps=4 if bq <= 1024 else 8, num_stages=1)
    return dict(NS=ns, stage_a=stage_a, stage_b=stage_b)


_SCRATCH: dict = {}  # the default scratch store (see launch)


def launch(table, cond, w3, b3, wo, bo, window, uniforms, sampling, out,
           forced: Optional[torch.Tensor] = None, logits_out: Optional[torch.Tensor] = None,
           block_b: Optional[int] = None, scratch: Optional[dict] = None) -> None:
    """The 2F + 1 launches of one frame on arguments that sample_frame_triton has checked.

    scratch: a dict the caller owns where the a2/part buffers are cached by shape (default: this
    module's, shared by every caller in the process: give concurrent streams their own, and keep
    it alive as long as any CUDA graph that captured a launch)."""
    if MODE_MISMATCH:
        raise RuntimeError(MODE_MISMATCH)
    F, Q, H = table.shape
    B = cond.shape[0]
    w_bf16 = table.dtype == torch.bfloat16
    cfg = launch_config(B, F, Q, H, block_b, w_bf16)
    NS, ca, cb = cfg["NS"], cfg["stage_a"], cfg["stage_b"]
    store = _SCRATCH if scratch is None else scratch
    a2 = scratch_buffer(store, "a2", (B, H), table.device)
    part = scratch_buffer(store, "part", (B, NS, Q), table.device)
    grid_a = (triton.cdiv(B, ca["BLOCK_B"]), NS)
    grid_b = (triton.cdiv(B, cb["ROWS"]),)
    # Absent optional tensors: a valid pointer; the constexpr flags keep the kernel off it.
    fo = forced if forced is not None else out
    lo = logits_out if logits_out is not None else cond
    flags = dict(HAS_FORCED=forced is not None, HAS_LOGITS=logits_out is not None, **sampling_args(sampling))
    for j in range(-1, F):
        if j >= 0:
            _stage_a_kernel[grid_a](a2, w3, b3, wo, part, B, Q, H, NS, W_BF16=w_bf16, WIDEN=INTERPRETED, **ca)
        _stage_b_kernel[grid_b](table, cond, bo, window, uniforms, out=out, forced=fo, logits_out=lo, a2=a2,
                                part=part, B=B, Q=Q, H=H, NS=NS, j=j, F=F, PROLOGUE=j < 0, **flags, **cb)

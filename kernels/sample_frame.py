"""Triton kernel for few sequences: all F sample steps of one frame for a block of sequences, in one launch.

The eager twin and specification is fastsrnn.ops.sample_frame.sample_frame_ref. Per step j:
a2 = relu(cond_j + sum_k table[k, window_k]); a3 = relu(W3 a2 + b3); logits = Wo a3 + bo;
x = inverse-CDF sample (fastsrnn.ops.sampling.sample_ref) or forced[:, j]; window slides by x.
This is the path for n_seq below TRITON_SAMPLE_SPLIT_MIN_B and H below TRITON_SAMPLE_SPLIT_MIN_H
(fastsrnn/ops/thresholds.py); kernels/sample_frame_split.py spreads each step
over the whole GPU (tensor cores) for more sequences.

Layout of one program (BLOCK_B sequences, grid cdiv(B, BLOCK_B), one launch per frame):
- the window lives in registers as a ring: at step j ring position p holds slot (p - j) mod F,
  and x_j overwrites position j, so after F steps the ring *is* the new window, in order;
- a2 (BLOCK_B, H) is built in BLOCK_H chunks and staged in a global scratch row per sequence
  (L1/L2-resident; a CTA barrier orders its writes and reads), so the W3 product can run in
  K tiles: per tile of BLOCK_N rows of W3, a (BLOCK_B, BLOCK_N, BLOCK_K) fp32 accumulator sums
  over the K tiles with plain FMAs and is reduced across threads once per row tile (H/BLOCK_N
  reductions per step, not H/2);
- each a3 tile (BLOCK_B, BLOCK_N) is consumed at once by Wo[:, tile], read row-major as a
  (BLOCK_Q, BLOCK_N) tile (BLOCK_N contiguous values per row: coalesced), into a
  (BLOCK_B, BLOCK_Q, BLOCK_N) accumulator reduced once per step; a3 never reaches memory;
- softmax and the inverse CDF run on the (BLOCK_B, Q) logits in registers (tl.cumsum).
Weights may be fp32 or bf16; every product accumulates in fp32 (exact widening of bf16).

Never autotune: the kernel updates ``window`` in place, and autotuning would run it several
times on the same state (mamba's selective-state-update kernel says the same).

Interpreter (TRITON_INTERPRET=1, CPU tensors, tests): Triton decides the mode of its own
standard library (tl.sum, tl.cumsum, ...) when ``triton`` is first imported, and the mode of
this kernel when this module is imported; both must agree, so the variable must be set before
anything imports triton (the tests marked `interpret` run in their own pytest process for that
reason, see .ci/run). A mismatch is reported.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from fastsrnn.kernels.mode import mode_mismatch

_MAX_BLOCK_B = 4
# Elements of the per-thread-block accumulators: (BLOCK_B, BLOCK_N, BLOCK_K) and (BLOCK_B, BLOCK_Q, BLOCK_N).
_ACC_ELEMS = 4096
_LOGIT_ACC_ELEMS = 16384


def scratch_buffer(store: dict, name: str, shape: tuple, device) -> torch.Tensor:
    """A float32 scratch tensor from ``store`` (a dict the caller owns), allocated on first use per
    (name, shape, device) and reused after: no allocation per call, and stable addresses for
    CUDA graphs (which is why entries are never evicted: a captured graph may still use one)."""
    key = (name, tuple(shape), str(torch.device(device)))
    t = store.get(key)
    if t is None:
        t = store[key] = torch.empty(shape, dtype=torch.float32, device=device)
    return t


@triton.jit
def _cut(lm, e, mq, top_k, top_p, TOP_K: tl.constexpr, TOP_P: tl.constexpr):
    """e (R, BQ) with the levels below the cut-offs' threshold zeroed (sampling.cut_threshold):
    the threshold key is found bit by bit from the top (32 counts for top-k, 32 masked sums for
    top-p, each tl.sum in one fixed order), keys being the float32 bits in the floats' order."""
    b = lm.to(tl.int32, bitcast=True).to(tl.int64)
    key = tl.where(b >= 0, b + 2147483648, 2147483647 - (b & 2147483647))  # (R, BQ) in [0, 2^32)
    t = tl.zeros_like(tl.max(key, axis=1))  # (R,) int64: 0 keeps every level
    if TOP_K:
        bit = tl.full((), 2147483648, tl.int64)
        for _ in range(32):
            c = t | bit
            n = tl.sum(((key >= c[:, None]) & mq[None, :]).to(tl.int32), axis=1)
            t = tl.where(n >= top_k, c, t)
            bit = bit >> 1
    if TOP_P:
        target = top_p * tl.sum(tl.where(key >= t[:, None], e, 0.0), axis=1)
        t = tl.zeros_like(t)
        bit = tl.full((), 2147483648, tl.int64)
        for _ in range(32):
            c = t | bit
            mass = tl.sum(tl.where(key >= c[:, None], e, 0.0), axis=1)
            t = tl.where(mass >= target, c, t)
            bit = bit >> 1
    return tl.where(key >= t[:, None], e, 0.0)


@triton.jit
def _draw(logits, mq, u, inv, top_k, top_p, Q, ARGMAX: tl.constexpr, TOP_K: tl.constexpr,
          TOP_P: tl.constexpr):
    """Per row of logits (R, BQ) float32 (columns beyond Q masked by mq): the argmax, or the first
    index whose running sum of exp((l - max) * inv) exceeds u * total (sampling.sample_ref),
    the levels below the top-k / top-p cut (:func:`_cut`) adding 0."""
    lm = tl.where(mq[None, :], logits, float("-inf"))
    if ARGMAX:
        x = tl.argmax(lm, axis=1).to(tl.int64)
    else:
        m = tl.max(lm, axis=1)
        e = tl.where(mq[None, :], tl.exp((lm - m[:, None]) * inv[:, None]), 0.0)
        if TOP_K or TOP_P:
            e = _cut(lm, e, mq, top_k, top_p, TOP_K, TOP_P)
        cdf = tl.cumsum(e, axis=1)  # (R, BQ), monotone: its max is the total
        thr = u * tl.max(cdf, axis=1)
        below = (cdf <= thr[:, None]) & mq[None, :]
        x = tl.minimum(tl.sum(below.to(tl.int32), axis=1), Q - 1).to(tl.int64)
    return x


@triton.jit
def _emit_step(logits, rb, mb, rq, mq, j, F, Q, inv_t, top_k, top_p, uniforms, forced, logits_out, out,
               ARGMAX: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr, HAS_FORCED: tl.constexpr,
               HAS_LOGITS: tl.constexpr):
    """The end of sample step j for rows rb (R,) of logits (R, BQ): store the logits if asked,
    take the forced sample or draw one (:func:`_draw`), store it in out[:, j]; returns x (R,) int64."""
    if HAS_LOGITS:
        tl.store(logits_out + (rb[:, None] * F + j) * Q + rq[None, :], logits, mask=mb[:, None] & mq[None, :])
    if HAS_FORCED:
        x = tl.load(forced + rb * F + j, mask=mb, other=0).to(tl.int64)
    else:
        u = tl.load(uniforms + rb * F + j, mask=mb, other=0.0)
        inv = tl.load(inv_t + rb, mask=mb, other=1.0)
        x = _draw(logits, mq, u, inv, top_k, top_p, Q, ARGMAX, TOP_K, TOP_P)
    tl.store(out + rb * F + j, x, mask=mb)
    return x


@triton.jit
def _sample_frame_kernel(
    table, cond, w3, b3, wo, bo, window, uniforms, inv_t, out, forced, logits_out, a2s,
    B, Q, H, top_k, top_p,
    F: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_Q: tl.constexpr,
    ARGMAX: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr, HAS_FORCED: tl.constexpr,
    HAS_LOGITS: tl.constexpr,
):
    """One frame for BLOCK_B sequences (shapes: the op's contract; a2s: (B, H) float32 scratch)."""
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)  # (BB,) sequences of this program
    mb = rb < B
    rf = tl.arange(0, BLOCK_F)
    rh = tl.arange(0, BLOCK_H)
    rk = tl.arange(0, BLOCK_K)
    rn = tl.arange(0, BLOCK_N)
    rq = tl.arange(0, BLOCK_Q)
    mq = rq < Q
    ring = tl.load(window + rb[:, None] * F + rf[None, :], mask=mb[:, None] & (rf[None, :] < F), other=0)
    for j in range(F):
        # a2 in BLOCK_H chunks into the scratch rows of this program's sequences.
        for h0 in range(0, H, BLOCK_H):
            hh = h0 + rh
            mbh = mb[:, None] & (hh < H)[None, :]
            acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
            for k in range(F):  # slots summed in order k = 0..F-1, as the reference does
                p = (k + j) % F  # slot k sits at ring position (k + j) mod F
                idx = tl.sum(tl.where(rf[None, :] == p, ring, 0), axis=1)  # (BB,) column p of the ring
                idx = tl.minimum(tl.maximum(idx, 0), Q - 1)  # memory safety only: the caller checks inputs
                acc += tl.load(table + (k * Q + idx[:, None]) * H + hh[None, :], mask=mbh, other=0.0).to(tl.float32)
            c = tl.load(cond + (rb[:, None] * F + j) * H + hh[None, :], mask=mbh, other=0.0)
            tl.store(a2s + rb[:, None] * H + hh[None, :], tl.maximum(c + acc, 0.0), mask=mbh)
        tl.debug_barrier()  # a2 written by every thread before any reads it
        lacc = tl.zeros((BLOCK_B, BLOCK_Q, BLOCK_N), dtype=tl.float32)
        for n0 in range(0, H, BLOCK_N):
            nn = n0 + rn
            mn = nn < H
            wacc = tl.zeros((BLOCK_B, BLOCK_N, BLOCK_K), dtype=tl.float32)
            for k0 in range(0, H, BLOCK_K):
                kk = k0 + rk
                mk = kk < H
                a = tl.load(a2s + rb[:, None] * H + kk[None, :], mask=mb[:, None] & mk[None, :], other=0.0)
                w = tl.load(w3 + nn[:, None] * H + kk[None, :], mask=mn[:, None] & mk[None, :], other=0.0)
                wacc += a[:, None, :] * w.to(tl.float32)[None, :, :]
            a3 = tl.maximum(tl.sum(wacc, axis=2) + tl.load(b3 + nn, mask=mn, other=0.0)[None, :], 0.0)  # (BB, BN)
            v = tl.load(wo + rq[:, None] * H + nn[None, :], mask=mq[:, None] & mn[None, :], other=0.0)  # (BQ, BN)
            lacc += a3[:, None, :] * v.to(tl.float32)[None, :, :]
        tl.debug_barrier()  # every read of a2 done before the next step overwrites it
        logits = tl.sum(lacc, axis=2) + tl.load(bo + rq, mask=mq, other=0.0)[None, :]  # (BB, BQ)
        x = _emit_step(logits, rb, mb, rq, mq, j, F, Q, inv_t, top_k, top_p, uniforms, forced, logits_out, out,
                       ARGMAX, TOP_K, TOP_P, HAS_FORCED, HAS_LOGITS)
        ring = tl.where(rf[None, :] == j, x[:, None], ring)
    tl.store(window + rb[:, None] * F + rf[None, :], ring, mask=mb[:, None] & (rf[None, :] < F))


MODE_MISMATCH = mode_mismatch(_sample_frame_kernel, __name__)


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def launch_config(B: int, F: int, Q: int, H: int, block_b: Optional[int] = None) -> dict:
    """Tile sizes of a launch: BLOCK_B sequences per program (at most 4 unless ``block_b``);
    BLOCK_N rows of W3 x BLOCK_K columns per FMA tile, sized so that both accumulators stay near
    _ACC_ELEMS / _LOGIT_ACC_ELEMS values per thread block (no spills at Q 256, H 1024, 8 warps)."""
    bb = block_b or min(triton.next_power_of_2(B), _MAX_BLOCK_B)
    if bb < 1 or bb & (bb - 1):
        raise ValueError(f"block_b must be a power of two >= 1, got {block_b}")
    bh, bq = triton.next_power_of_2(H), triton.next_power_of_2(Q)
    bn = max(1, min(bh, 32, _pow2_floor(_LOGIT_ACC_ELEMS // (bb * bq))))
    bk = max(1, min(bh, 128, _pow2_floor(_ACC_ELEMS // (bb * bn))))
    return dict(BLOCK_B=bb, BLOCK_F=triton.next_power_of_2(F), BLOCK_H=min(bh, 256), BLOCK_N=bn, BLOCK_K=bk,
                BLOCK_Q=bq, num_warps=8 if bh >= 512 else 4)


_SCRATCH: dict = {}  # the default scratch store (see launch)


def sampling_args(sampling) -> dict:
    """The kernel arguments of a Sampling (fastsrnn.ops.sampling): its per-sequence tensor and the
    fields the kernels take by value (constexpr flags: an unused rule compiles to nothing)."""
    return dict(inv_t=sampling.inv_temperature, top_k=sampling.top_k, top_p=float(sampling.top_p),
                ARGMAX=bool(sampling.argmax), TOP_K=sampling.top_k > 0, TOP_P=sampling.top_p < 1.0)


def launch(table, cond, w3, b3, wo, bo, window, uniforms, sampling, out,
           forced: Optional[torch.Tensor] = None, logits_out: Optional[torch.Tensor] = None,
           block_b: Optional[int] = None, scratch: Optional[dict] = None) -> None:
    """Launch the kernel on arguments that fastsrnn.ops.sample_frame.sample_frame_triton has
    checked (its contract). Samples are not range-checked here (that would need a host sync);
    out-of-range ones are clamped into the table instead of read out of bounds.
    scratch: a dict the caller owns caching the a2 (B, H) float32 buffer (default: this module's,
    shared in the process: give concurrent streams their own, and keep it alive as long as any
    CUDA graph that captured a launch)."""
    if MODE_MISMATCH:
        raise RuntimeError(MODE_MISMATCH)
    F, Q, H = table.shape
    B = cond.shape[0]
    cfg = launch_config(B, F, Q, H, block_b)
    a2s = scratch_buffer(_SCRATCH if scratch is None else scratch, "a2", (B, H), table.device)
    grid = (triton.cdiv(B, cfg["BLOCK_B"]),)
    # Absent optional tensors: pass a valid pointer; the constexpr flags keep the kernel off it.
    _sample_frame_kernel[grid](table, cond, w3, b3, wo, bo, window, uniforms, out=out,
                               forced=forced if forced is not None else out,
                               logits_out=logits_out if logits_out is not None else cond, a2s=a2s, B=B, Q=Q, H=H,
                               F=F, HAS_FORCED=forced is not None, HAS_LOGITS=logits_out is not None,
                               **sampling_args(sampling), **cfg)

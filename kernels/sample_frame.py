"""Triton kernel: all F sample steps of one frame for a block of sequences, in one launch.

The eager twin and specification is fastsrnn.ops.sample_frame.sample_frame_ref. Per step j:
a2 = relu(cond_j + sum_k table[k, window_k]); a3 = relu(W3 a2 + b3); logits = Wo a3 + bo;
x = inverse-CDF sample (fastsrnn.ops.sampling.sample_ref) or forced[:, j]; window slides by x.

Layout of one program (BLOCK_B sequences):
- the window lives in registers as a ring: at step j ring position p holds slot (p - j) mod F,
  and x_j overwrites position j, so after F steps the ring *is* the new window, in order;
- a2 (BLOCK_B, H) lives in registers; W3 is streamed in tiles of BLOCK_N rows from L2/global,
  and each a3 tile is consumed at once by the matching BLOCK_N columns of Wo, so a3 is never
  stored anywhere and the step needs no barrier;
- softmax and the inverse CDF run on the (BLOCK_B, Q) logits in registers (tl.cumsum).
Weights may be fp32 or bf16; every product accumulates in fp32.

Never autotune: the kernel updates ``window`` in place, and autotuning would run it several
times on the same state (mamba's selective-state-update kernel says the same).

Interpreter (TRITON_INTERPRET=1, CPU tensors, tests): Triton decides the mode of its own
standard library (tl.sum, tl.cumsum, ...) when ``triton`` is first imported, and the mode of
this kernel when this module is imported; both must agree, so the variable must be set before
anything imports triton (tests run in a subprocess for that reason). A mismatch is reported.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

# Elements of the (BLOCK_B, BLOCK_N, BLOCK_H) product tile a program holds at once.
_TILE_ELEMS = 8192
_MAX_BLOCK_B = 4


@triton.jit
def _sample_frame_kernel(
    table, cond, w3, b3, wo, bo, window, uniforms, inv_t, out, forced, logits_out,
    B, Q, H,
    F: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_Q: tl.constexpr,
    ARGMAX: tl.constexpr, HAS_FORCED: tl.constexpr, HAS_LOGITS: tl.constexpr,
):
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)  # (BB,) sequences of this program
    mb = rb < B
    rf = tl.arange(0, BLOCK_F)
    rh = tl.arange(0, BLOCK_H)
    mh = rh < H
    rq = tl.arange(0, BLOCK_Q)
    mq = rq < Q
    rn = tl.arange(0, BLOCK_N)
    mbh = mb[:, None] & mh[None, :]  # (BB, BH)
    ring = tl.load(window + rb[:, None] * F + rf[None, :], mask=mb[:, None] & (rf[None, :] < F), other=0)
    inv = tl.load(inv_t + rb, mask=mb, other=1.0)
    for j in range(F):
        # Slots summed in order k = 0..F-1, as the reference does; slot k sits at ring position (k + j) mod F.
        acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        for k in range(F):
            p = (k + j) % F
            idx = tl.sum(tl.where(rf[None, :] == p, ring, 0), axis=1)  # (BB,) column p of the ring
            idx = tl.minimum(tl.maximum(idx, 0), Q - 1)  # memory safety only: inputs are checked by the caller
            row = tl.load(table + (k * Q + idx[:, None]) * H + rh[None, :], mask=mbh, other=0.0)
            acc += row.to(tl.float32)
        c = tl.load(cond + (rb[:, None] * F + j) * H + rh[None, :], mask=mbh, other=0.0)
        a2 = tl.maximum(c + acc, 0.0)  # (BB, BH)
        logits = tl.zeros((BLOCK_B, BLOCK_Q), dtype=tl.float32)
        for n0 in range(0, H, BLOCK_N):
            rn_ = n0 + rn
            mn = rn_ < H
            w = tl.load(w3 + rn_[:, None] * H + rh[None, :], mask=mn[:, None] & mh[None, :], other=0.0)
            a3 = tl.sum(a2[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)  # (BB, BN)
            a3 = tl.maximum(a3 + tl.load(b3 + rn_, mask=mn, other=0.0)[None, :], 0.0)
            v = tl.load(wo + rq[:, None] * H + rn_[None, :], mask=mq[:, None] & mn[None, :], other=0.0)
            logits += tl.sum(a3[:, None, :] * v.to(tl.float32)[None, :, :], axis=2)  # (BB, BQ)
        logits += tl.load(bo + rq, mask=mq, other=0.0)[None, :]
        if HAS_LOGITS:
            tl.store(logits_out + (rb[:, None] * F + j) * Q + rq[None, :], logits, mask=mb[:, None] & mq[None, :])
        lm = tl.where(mq[None, :], logits, float("-inf"))
        if HAS_FORCED:
            x = tl.load(forced + rb * F + j, mask=mb, other=0).to(tl.int64)
        elif ARGMAX:
            x = tl.argmax(lm, axis=1).to(tl.int64)
        else:
            m = tl.max(lm, axis=1)
            e = tl.where(mq[None, :], tl.exp((lm - m[:, None]) * inv[:, None]), 0.0)
            cdf = tl.cumsum(e, axis=1)  # (BB, BQ), monotone: its max is the total
            u = tl.load(uniforms + rb * F + j, mask=mb, other=0.0)
            thr = u * tl.max(cdf, axis=1)
            below = (cdf <= thr[:, None]) & mq[None, :]
            x = tl.minimum(tl.sum(below.to(tl.int32), axis=1), Q - 1).to(tl.int64)
        tl.store(out + rb * F + j, x, mask=mb)
        ring = tl.where(rf[None, :] == j, x[:, None], ring)
    tl.store(window + rb[:, None] * F + rf[None, :], ring, mask=mb[:, None] & (rf[None, :] < F))


def _mode(fn) -> bool:
    return type(fn).__name__ == "InterpretedFunction"


# True when Triton's interpreter runs the kernel (on CPU tensors); fixed at import.
INTERPRETED = _mode(tl.sum)
_MODE_MISMATCH = None if _mode(_sample_frame_kernel) == INTERPRETED else (
    "TRITON_INTERPRET changed between the import of triton and of fastsrnn.kernels.sample_frame "
    f"(triton's library is {'interpreted' if INTERPRETED else 'compiled'}, this kernel is not); "
    "set TRITON_INTERPRET before anything imports triton")


def launch_config(B: int, F: int, Q: int, H: int, block_b: Optional[int] = None) -> dict:
    """Tile sizes of a launch: BLOCK_B sequences per program (at most 4 unless ``block_b``),
    whole H and Q in registers, BLOCK_N rows of W3 per tile so a product tile stays ~8 K values."""
    bb = block_b or min(triton.next_power_of_2(B), _MAX_BLOCK_B)
    if bb < 1 or bb & (bb - 1):
        raise ValueError(f"block_b must be a power of two >= 1, got {block_b}")
    bh, bq = triton.next_power_of_2(H), triton.next_power_of_2(Q)
    bn = max(1, min(triton.next_power_of_2(H), _TILE_ELEMS // (bb * max(bh, bq))))
    bn = 1 << (bn.bit_length() - 1)  # round down to a power of two
    return dict(BLOCK_B=bb, BLOCK_F=triton.next_power_of_2(F), BLOCK_H=bh, BLOCK_N=bn, BLOCK_Q=bq,
                num_warps=8 if bh >= 512 else 4)


def launch(table, cond, w3, b3, wo, bo, window, uniforms, inv_temperature, argmax: bool, out,
           forced: Optional[torch.Tensor] = None, logits_out: Optional[torch.Tensor] = None,
           block_b: Optional[int] = None) -> None:
    """Launch the kernel on arguments that fastsrnn.ops.sample_frame.sample_frame_triton has
    checked (its contract). Samples are not range-checked here (that would need a host sync);
    out-of-range ones are clamped into the table instead of read out of bounds."""
    if _MODE_MISMATCH:
        raise RuntimeError(_MODE_MISMATCH)
    F, Q, H = table.shape
    B = cond.shape[0]
    cfg = launch_config(B, F, Q, H, block_b)
    grid = (triton.cdiv(B, cfg["BLOCK_B"]),)
    # Absent optional tensors: pass a valid pointer; the constexpr flags keep the kernel off it.
    _sample_frame_kernel[grid](table, cond, w3, b3, wo, bo, window, uniforms, inv_temperature, out,
                               forced if forced is not None else out,
                               logits_out if logits_out is not None else cond, B, Q, H, F=F,
                               ARGMAX=bool(argmax), HAS_FORCED=forced is not None,
                               HAS_LOGITS=logits_out is not None, **cfg)

"""Triton kernels of the frame tier: one fused kernel per RNN layer, one product kernel for the skip
sum and one for the upsampling. The eager twin and specification is
fastsrnn.ops.frame_step.frame_step_ref; the launcher is fastsrnn.ops.frame_step.frame_step_triton.

Per frame (L layers): L launches of :func:`_layer_kernel`, then :func:`_linear_kernel` for the skip
sum (when the model has skip connections) and once more for the upsampling: L + 2 launches and no
other op (dadabots-2tier: 7).

Layer kernel. One product on [x; x_in; h] against [W_ih | W_hh] (x: the previous layer's new h,
or for layer 0 of a conditioned tier (n tiers) the conditioning from the tier above, read from
its own pointer; x_in: the frame input, part of x for layers > 0 with skip connections, computed
from the window in the kernel), then the gates, the cell and the hidden state in the epilogue.
The two weight matrices are read where they lie (no concatenated copy: the K loop walks the x
segments on W_ih's columns, then the h segment on W_hh's), so each weight byte is streamed once
and the frame tier keeps one copy of its weights on the device. A program owns BLOCK_H hidden units and a block of
BLOCK_B sequences and computes all gate rows of its units: tile row r is gate r % 4 of unit
r // 4 (weight row gate * H + unit), so the accumulator (BLOCK_B, 4 BLOCK_H) splits into the four
gates with a reshape and two tl.split. LSTM: gates i, f, g, o. GRU: r, z and the n gate twice,
n_x (the x segments only) and n_h (the h segment only), because n = tanh(n_x + r * n_h); the
masked rows of a segment are not read. The bias arrives pre-summed in that row order.
State: c is updated in place (each element is read and written by one program); h_new goes to a
scratch buffer hs (B, L*H), since every program of a layer reads the whole old h; the last
launch (the upsampling) copies hs into the state. hs is also concat(h_1..h_L), the skip sum's input.

Linear kernel: out (B, N) = x (B, K) W^T + b, for the skip sum (K = L*H against the concatenated
[skip_w_1 | ... | skip_w_L], bias only from the first) and the upsampling (into cond, N = n_out*H).

Any frame tier (n tiers): the frame F_in (the window's width: F for the bottom tier, S_k above)
and the upsampled positions n_out (F for the bottom tier, frame_sizes[k] above) are runtime sizes;
a frame wider than the x_in tile (BLOCK_F, at most the product's BLOCK_K: 16 for fp32 tl.dot,
64 for bf16, 64..512 in the register form) is read in a loop (constexpr XIN_LOOP), so the 2-tier
kernels (F <= 16 in every preset) are those of before.

Two forms of the products, chosen by the batch (constexpr DOT):
- small batch (B <= TRITON_FRAME_SMALL_MAX_B of fastsrnn/ops/thresholds.py; HBM-bound): multiply
  and tl.sum in registers on CUDA cores, a few rows per program and many programs (hundreds at
  H = 1024) so that every SM streams weights;
- larger batch: tl.dot on (BLOCK_B, BLOCK_K) x (BLOCK_K, rows) tiles: bf16 weights on tensor cores
  (activations rounded to bf16, as the reference's torch.mm does, fp32 accumulation), fp32
  weights with input_precision="ieee" (no tf32).
Weights fp32 or bf16; every sum in fp32. Never autotune: the kernels update the state in place.

Interpreter (TRITON_INTERPRET=1): as kernels/sample_frame.py, the variable must be set before
anything imports triton; a mismatch is reported by :data:`MODE_MISMATCH`.
"""
from __future__ import annotations

import triton
import triton.language as tl

from fastsrnn.kernels.mode import INTERPRETED, mode_mismatch
from fastsrnn.ops import thresholds  # read at each call: a test may lower a threshold on the module

_INTERPRETED = tl.constexpr(INTERPRETED)  # Triton's interpreter runs the kernels, readable inside them
TARGET_PROGRAMS = 256  # about two programs per SM of a 132-SM H100
_TILE_ELEMS = 4096  # elements of the (BLOCK_B, rows, BLOCK_K) product tile of the register form


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))  # in (0, 1]: no overflow
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _r16(v):
    """v, known to be a multiple of 16, written so that Triton's analysis knows it too. With
    ALIGNED the kernels also hint their row pointers 16-byte aligned (tl.multiple_of): Triton's
    JIT derives the same from the arguments at launch; written out so that an offline compile
    (tests, fastsrnn.tools.gpu_compile) sees the same vector loads."""
    return (v // 16) * 16


@triton.jit
def _rne_bf16(x):
    """fp32 x rounded to the nearest bf16 (ties to even), kept in fp32: the GPU's cast. The
    interpreter's .to(tl.bfloat16) truncates (Triton 3.9), doubling the rounding error."""
    b = x.to(tl.int32, bitcast=True)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & -65536
    return b.to(tl.float32, bitcast=True)


@triton.jit
def _mac(acc, x, w, DOT: tl.constexpr, BF16: tl.constexpr):
    """acc (BB, N) += x (BB, BK) fp32 @ w (N, BK)^T."""
    if DOT:
        if BF16 and _INTERPRETED:  # the interpreter's bf16 tl.dot is wrong (Triton 3.9): the same
            # products (x rounded to bf16 as the GPU rounds; a bf16 x bf16 product is exact in fp32), fp32 sums
            acc = tl.dot(_rne_bf16(x), tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
        elif BF16:
            acc = tl.dot(x.to(tl.bfloat16), tl.trans(w), acc)
        else:
            acc = tl.dot(x, tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
    else:
        acc += tl.sum(x[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
    return acc


@triton.jit
def _segment(acc, x_row, sxk, mb, w_row, mr, K, BLOCK_K: tl.constexpr, DOT: tl.constexpr, BF16: tl.constexpr):
    """acc += x[:, :K] @ w[:, :K]^T; x_row (BB,) / w_row (N,) point at column 0 of each row."""
    rk = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        mk = kk < K
        x = tl.load(x_row[:, None] + kk[None, :] * sxk, mask=mb[:, None] & mk[None, :], other=0.0)
        w = tl.load(w_row[:, None] + kk[None, :], mask=mr[:, None] & mk[None, :], other=0.0)
        acc = _mac(acc, x, w, DOT, BF16)
    return acc


@triton.jit
def _xin(acc, q_row, mb, w_row, m_x, rf, F, half_q, DOT: tl.constexpr, BF16: tl.constexpr):
    """acc += x_in[:, rf] @ w[:, rf]^T, x_in = (q / (Q/2) - 1) * 2 from the window's samples q;
    q_row (BB,) / w_row (N,) point at the frame's column 0, rf: the columns of this tile."""
    mf = rf < F
    q = tl.load(q_row[:, None] + rf[None, :], mask=mb[:, None] & mf[None, :], other=0)
    xin = (tl.math.div_rn(q.to(tl.float32), half_q) - 1.0) * 2.0
    xin = tl.where(mb[:, None] & mf[None, :], xin, 0.0)
    w = tl.load(w_row[:, None] + rf[None, :], mask=m_x[:, None] & mf[None, :], other=0.0)
    return _mac(acc, xin, w, DOT, BF16)


@triton.jit(do_not_specialize=["layer"])  # one compile for every layer index
def _layer_kernel(
    window, swb, x, sx, hs, shs, h, shl, shb, shh, c, scl, scb, sch, layer,
    w_ih, s_ih, xin_col, w_hh, bias,
    B, H, F, half_q,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_F: tl.constexpr,
    GRU: tl.constexpr, HAS_X: tl.constexpr, HAS_XIN: tl.constexpr, XIN_LOOP: tl.constexpr,
    DOT: tl.constexpr, BF16: tl.constexpr, ALIGNED: tl.constexpr, EVEN: tl.constexpr,
):
    """Layer ``layer``: x (B, H), row stride sx, column 0 of its segment (the previous layer's new
    h in hs, or a conditioned tier's cond for layer 0; HAS_X); the frame from window (B, F) (HAS_XIN;
    XIN_LOOP: F > BLOCK_F); h_new into hs[:, layer*H : (layer+1)*H], c in place."""
    N: tl.constexpr = 4 * BLOCK_H
    if ALIGNED:  # pointers 16-byte aligned, row strides, offsets and sizes multiples of 16 (the launcher checked)
        H, F = _r16(H), _r16(F)
    rb = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    r = tl.arange(0, N)
    gate = r % 4
    unit = tl.program_id(0) * BLOCK_H + r // 4
    if EVEN:  # B % BLOCK_B == 0 and H % BLOCK_H == 0: no partial tiles
        mb = tl.full((BLOCK_B,), 1, tl.int1)
        mu = tl.full((N,), 1, tl.int1)
    else:
        mb = rb < B
        mu = unit < H
    if GRU:  # pseudo-gates r, z, n_x, n_h: n_x, n_h both read the n rows (2H + unit)
        wrow = (gate - (gate == 3).to(tl.int32)) * H + unit
        m_x = mu & (gate != 3)
        m_h = mu & (gate != 2)
    else:
        wrow = gate * H + unit
        m_x = mu
        m_h = mu
    acc = tl.zeros((BLOCK_B, N), dtype=tl.float32)
    if HAS_X:  # previous layer's new h (or the cond of layer 0): x[:, :H] against W_ih[:, :H]
        x_row = x + rb * sx
        w_row = w_ih + wrow * s_ih
        if ALIGNED:
            x_row, w_row = tl.multiple_of(x_row, 16), tl.multiple_of(w_row, 16)
        acc = _segment(acc, x_row, 1, mb, w_row, m_x, H, BLOCK_K, DOT, BF16)
    if HAS_XIN:  # the frame input (x_in = (q / (Q/2) - 1) * 2) against W_ih[:, xin_col : xin_col + F]
        q_row = window + rb * swb
        w_row = w_ih + wrow * s_ih + xin_col
        if ALIGNED:
            q_row, w_row = tl.multiple_of(q_row, 16), tl.multiple_of(w_row, 16)
        if XIN_LOOP:  # a frame wider than one tile (upper tiers: S_k samples)
            for f0 in range(0, F, BLOCK_F):
                acc = _xin(acc, q_row, mb, w_row, m_x, f0 + tl.arange(0, BLOCK_F), F, half_q, DOT, BF16)
        else:
            acc = _xin(acc, q_row, mb, w_row, m_x, tl.arange(0, BLOCK_F), F, half_q, DOT, BF16)
    h_l = h + layer * shl
    h_row = h_l + rb * shb
    w_row = w_hh + wrow * H
    if ALIGNED:
        h_row, w_row = tl.multiple_of(h_row, 16), tl.multiple_of(w_row, 16)
    acc = _segment(acc, h_row, shh, mb, w_row, m_h, H, BLOCK_K, DOT, BF16)

    acc += tl.load(bias + layer * 4 * H + tl.program_id(0) * N + r, mask=mu, other=0.0)[None, :]
    # (BB, 4 BH) -> (BB, BH, 2, 2): [b, u, g // 2, g % 2]; split the last axis, then the next.
    acc = tl.reshape(acc, (BLOCK_B, BLOCK_H, 2, 2))
    even, odd = tl.split(acc)  # gates (0, 2), (1, 3)
    a0, a2 = tl.split(even)
    a1, a3 = tl.split(odd)
    ru = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    if EVEN:
        m2 = tl.full((BLOCK_B, BLOCK_H), 1, tl.int1)
    else:
        m2 = mb[:, None] & (ru < H)[None, :]
    if GRU:
        rg = _sigmoid(a0)
        z = _sigmoid(a1)
        n = _tanh(a2 + rg * a3)
        h_old = tl.load(h_l + rb[:, None] * shb + ru[None, :] * shh, mask=m2, other=0.0)
        h_new = (1.0 - z) * n + z * h_old
    else:
        c_ptr = c + layer * scl + rb[:, None] * scb + ru[None, :] * sch
        c_new = _sigmoid(a1) * tl.load(c_ptr, mask=m2, other=0.0) + _sigmoid(a0) * _tanh(a2)
        tl.store(c_ptr, c_new, mask=m2)
        h_new = _sigmoid(a3) * _tanh(c_new)
    tl.store(hs + rb[:, None] * shs + layer * H + ru[None, :], h_new, mask=m2)


@triton.jit
def _linear_kernel(
    x, sx, w, bias, out, so, B, N, K,
    hs, h, shl, shb, shh, L, H,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT: tl.constexpr, BF16: tl.constexpr, COPY: tl.constexpr, COPY_BLOCK: tl.constexpr, ALIGNED: tl.constexpr,
    EVEN: tl.constexpr,
):
    """out[b, n] = bias[n] + sum_k x[b, k] w[n, k]. COPY: also copy hs (B, L*H) into h (L, B, H)."""
    if ALIGNED:
        K = _r16(K)
    rb = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    if EVEN:  # B % BLOCK_B == 0 and N % BLOCK_N == 0
        mb = tl.full((BLOCK_B,), 1, tl.int1)
        mn = tl.full((BLOCK_N,), 1, tl.int1)
    else:
        mb = rb < B
        mn = rn < N
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    x_row = x + rb * sx
    w_row = w + rn * K
    if ALIGNED:  # (tl.multiple_of needs an op's result: on a kernel argument itself it is lost)
        x_row, w_row = tl.multiple_of(x_row, 16), tl.multiple_of(w_row, 16)
    acc = _segment(acc, x_row, 1, mb, w_row, mn, K, BLOCK_K, DOT, BF16)
    acc += tl.load(bias + rn, mask=mn, other=0.0)[None, :]
    tl.store(out + rb[:, None] * so + rn[None, :], acc, mask=mb[:, None] & mn[None, :])
    if COPY:  # the new hidden states into the RNN state: rows (b, l) of hs spread over the programs
        pid = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
        rc = tl.arange(0, COPY_BLOCK)
        for row in range(pid, B * L, tl.num_programs(0) * tl.num_programs(1)):
            src = hs + row * H
            dst = h + (row % L) * shl + (row // L) * shb
            for u0 in range(0, H, COPY_BLOCK):
                u = u0 + rc
                mu = u < H
                tl.store(dst + u * shh, tl.load(src + u, mask=mu, other=0.0), mask=mu)


MODE_MISMATCH = mode_mismatch(_layer_kernel, __name__)
KERNELS = (_layer_kernel, _linear_kernel)


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _dot_block_b(B: int) -> int:
    return min(64, max(16, _pow2(B)))


def layer_config(B: int, H: int, F: int, bf16: bool) -> dict:
    """Constexprs, num_warps, num_stages and grid of a layer launch (the same for every layer);
    F: the tier's frame (the window's width). BLOCK_F: F's tile, at least 16, at most BLOCK_K (the
    product's tile: a wider tile cost an fp32 tl.dot a stack frame on sm_90); XIN_LOOP: F > BLOCK_F.

    B <= TRITON_FRAME_SMALL_MAX_B: BLOCK_B = B rounded up to a power of two, 2 hidden units (8 gate rows) per
    program (H / 2 programs: 512 at H = 1024), BLOCK_K so the product tile is ~4 K values.
    Larger B: tl.dot tiles of BLOCK_B = 16..64 sequences by 4 BLOCK_H rows (16, 32 or 64), BLOCK_H
    the largest that still gives TARGET_PROGRAMS programs."""
    if B <= thresholds.TRITON_FRAME_SMALL_MAX_B:
        bb, bh = _pow2(B), 2
        bk = max(16, min(512, _TILE_ELEMS // (bb * 4 * bh)))
        cfg = dict(BLOCK_B=bb, BLOCK_H=bh, BLOCK_K=bk, DOT=False, BF16=bool(bf16),
                   num_warps=4, num_stages=2)
    else:
        bb = _dot_block_b(B)
        nb = triton.cdiv(B, bb)
        bh = next((b for b in (16, 8) if triton.cdiv(H, b) * nb >= TARGET_PROGRAMS), 4)
        cfg = dict(BLOCK_B=bb, BLOCK_H=bh, BLOCK_K=64 if bf16 else 16, DOT=True, BF16=bool(bf16),
                   num_warps=8 if bb * 4 * bh >= 4096 else 4, num_stages=3)
    cfg["BLOCK_F"] = bf = max(16, min(_pow2(F), cfg["BLOCK_K"]))
    cfg["XIN_LOOP"] = F > bf
    cfg["grid"] = (triton.cdiv(H, cfg["BLOCK_H"]), triton.cdiv(B, cfg["BLOCK_B"]))
    return cfg


def linear_config(B: int, N: int, K: int, bf16: bool) -> dict:
    """Constexprs, num_warps, num_stages and grid of a product launch (out (B, N), K inputs).

    B <= TRITON_FRAME_SMALL_MAX_B: BLOCK_N rows per program (at most 16, fewer while there are fewer than
    TARGET_PROGRAMS programs), BLOCK_K so the product tile is ~4 K values. Larger B: tl.dot tiles
    of 16..64 sequences by BLOCK_N = 64, 32 or 16 rows (the largest giving TARGET_PROGRAMS); 8 warps
    for a 64 x 64 tile. BLOCK_K 64 (bf16, tensor cores) or 16 (fp32 FMA: its operands sit in registers)."""
    if B <= thresholds.TRITON_FRAME_SMALL_MAX_B:
        bb = _pow2(B)
        bn = next((b for b in (16, 8, 4) if triton.cdiv(N, b) >= TARGET_PROGRAMS), 2)
        bk = max(16, min(1024, _pow2(K), _TILE_ELEMS // (bb * bn)))
        cfg = dict(BLOCK_B=bb, BLOCK_N=bn, BLOCK_K=bk, DOT=False, BF16=bool(bf16), num_warps=4, num_stages=2)
    else:
        bb = _dot_block_b(B)
        nb = triton.cdiv(B, bb)
        bn = next((b for b in (64, 32) if triton.cdiv(N, b) * nb >= TARGET_PROGRAMS), 16)
        cfg = dict(BLOCK_B=bb, BLOCK_N=bn, BLOCK_K=64 if bf16 else 16, DOT=True, BF16=bool(bf16),
                   num_warps=8 if bb * bn >= 4096 else 4, num_stages=3)
    cfg["COPY_BLOCK"] = 512
    cfg["grid"] = (triton.cdiv(N, cfg["BLOCK_N"]), triton.cdiv(B, cfg["BLOCK_B"]))
    return cfg


def aligned(*args) -> bool:
    """ALIGNED of a launch: every tensor's address a multiple of 16 bytes and every int (strides,
    offsets, sizes in elements) a multiple of 16."""
    for a in args:
        if hasattr(a, "data_ptr"):
            if a.device.type != "meta" and a.data_ptr() % 16:
                return False
        elif int(a) % 16:
            return False
    return True


def launch(kernel, grid, *args, **kwargs) -> None:
    """Every launch of this module goes through here (tests count them)."""
    kernel[grid](*args, **kwargs)

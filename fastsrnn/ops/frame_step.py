"""The frame-step op: one frame-tier step on exported weights. One home for it:

- :func:`frame_step_ref`, in torch ops (BLAS on the CPU, cuBLAS on a GPU): the specification, the
  frame step of the ``folded`` backend on every device, of the ``cpu`` backend above its streaming
  threshold and with int8 weights on a GPU;
- :func:`frame_step_cpu`, the fused C++ step (csrc/cpu/frame_step.h), and :func:`linear_cpu`,
  its weight-streaming product, which the ``cpu`` backend uses at small batch;
- :func:`frame_step_triton`, the fused Triton kernels (kernels/frame_step.py): one launch per
  layer (product on [x; h] and the gate maths), one for the skip sum, one for the upsampling;
  on :class:`FusedFrameWeights`, built once from the exported weights: the frame step of the
  ``triton`` and ``cuda`` backends on CUDA (backends/fused_frame.py).

Contract: window (B, F) int64 (the frame just finished); rnn h, c (L, B, H) float32, updated in
place; returns cond (B, F, H) float32 = W2 c_j + b2 for the F positions of the next frame.
n tiers (all three): the same op steps any frame tier on its weights (InferenceWeights for the
bottom tier, TierWeights for one above): window (B, S_k), ``cond`` (B, H) from the tier above
(conditioned tiers: layer 0 runs on [cond, x_in]), and it returns (B, n_out, H), n_out = up_w
rows / H.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from fastsrnn.model import RNNState
from fastsrnn.ops.export import InferenceWeights
from fastsrnn.quantize import frame_input


def torch_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                 scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x (B, K) fp32 @ w.T (K, N) + b -> (B, N) fp32; w may be bf16 (fp32 accumulation), or int8
    with its per-row scale (N,) fp32: b + scale * (x @ q.T), q widened exactly to fp32 (the
    kernels' order: the fp32 sum first, then the row's scale, then the bias)."""
    if w.dtype == torch.int8:
        if scale is None or scale.shape != (w.shape[0],) or scale.dtype != torch.float32:
            raise ValueError(f"torch_linear: int8 w ({tuple(w.shape)}) needs an fp32 scale of shape ({w.shape[0]},)")
        return torch.addcmul(b, torch.mm(x, w.float().t()), scale)
    if w.dtype == torch.float32:
        return torch.addmm(b, x, w.t())
    return torch.mm(x.to(w.dtype), w.t()).float() + b


def _scale(w: InferenceWeights, name: str, i: Optional[int] = None) -> Optional[torch.Tensor]:
    """The per-row scale of frame matrix ``name`` (layer i) when the frame weights are int8, else None."""
    if not w.int8:
        return None
    s = getattr(w, name + "_scale")
    return s if i is None else s[i]


def frame_step_ref(w: InferenceWeights, window: torch.Tensor, rnn: RNNState, mm=None,
                   cond: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One frame step in torch ops (see the module docstring for the contract).

    mm: a replacement for ``torch_linear`` (same contract, ``scale`` passed by keyword), e.g.
    :func:`linear_cpu`. int8 frame weights (InferenceWeights.to(frame_dtype=torch.int8)) carry
    their per-row scales. w: an InferenceWeights (bottom tier) or TierWeights (upper tier);
    cond (B, H): the conditioning from the tier above, layer 0's first H inputs.
    """
    mm = mm or torch_linear
    cfg = w.cfg
    B, H = window.shape[0], cfg.dim
    x_in = frame_input(window, cfg.q_levels)  # (B, S_k)
    x = x_in if cond is None else torch.cat([cond, x_in], dim=1)  # (B, [H +] S_k)
    if x.shape[1] != w.w_ih[0].shape[1]:
        raise ValueError(f"frame_step_ref: layer 0 takes {w.w_ih[0].shape[1]} inputs, got {x.shape[1]} "
                         f"(a {window.shape[1]}-sample frame{'' if cond is None else ' and a conditioning'})")
    total = None
    for i in range(cfg.n_rnn):
        inp = torch.cat([x, x_in], dim=1) if (i > 0 and w.skip_w) else x
        h = rnn.h[i]
        gi = mm(inp, w.w_ih[i], w.b_ih[i], scale=_scale(w, "w_ih", i))  # (B, G*H)
        gh = mm(h, w.w_hh[i], w.b_hh[i], scale=_scale(w, "w_hh", i))  # (B, G*H)
        if rnn.c is not None:  # LSTM, gate order i, f, g, o
            ig, fg, gg, og = (gi + gh).chunk(4, dim=1)
            c = torch.sigmoid(fg) * rnn.c[i] + torch.sigmoid(ig) * torch.tanh(gg)
            h_new = torch.sigmoid(og) * torch.tanh(c)
            rnn.c[i].copy_(c)
        else:  # GRU, gate order r, z, n
            ir, iz, inn = gi.chunk(3, dim=1)
            hr, hz, hn = gh.chunk(3, dim=1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            n = torch.tanh(inn + r * hn)
            h_new = (1 - z) * n + z * h
        rnn.h[i].copy_(h_new)
        x = h_new
        if w.skip_w:
            zero = w.skip_b if i == 0 else torch.zeros_like(w.skip_b)
            proj = mm(x, w.skip_w[i], zero, scale=_scale(w, "skip_w", i))
            total = proj if total is None else total + proj
    out = total if w.skip_w else x  # (B, H)
    n_out = w.up_w.shape[0] // H
    return mm(out, w.up_w, w.up_b, scale=_scale(w, "up_w")).view(B, n_out, H)  # (B, n_out*H) -> (B, n_out, H)


def linear_cpu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, num_threads: int = 0,
               scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """torch_linear's contract in the C++ weight-streaming kernel (fp32, bf16 or int8 weights with
    their per-row ``scale``; fp32 sums): at small B the frame tier is a chain of DRAM-bound
    matrix-vector products."""
    from fastsrnn.ops.build import cpu_extension

    return cpu_extension().linear(x.contiguous(), w, b, int(num_threads), scale=scale)


def frame_step_cpu(w: InferenceWeights, window: torch.Tensor, rnn: RNNState, num_threads: int = 0,
                   cond: Optional[torch.Tensor] = None) -> torch.Tensor:
    """frame_step_ref's contract in one fused C++ call (OpenMP over rows; h, c must be dense),
    for any frame tier: w an InferenceWeights (bottom tier) or TierWeights (one above), window
    (B, S_k), cond (B, H) fp32 for a conditioned tier (layer 0's first H inputs; None for the
    top tier and a 2-tier model's bottom one); returns (B, n_out, H), n_out = up_w rows / H.
    fp32, bf16 or int8 frame weights (int8 with their per-row scales)."""
    from fastsrnn.ops.build import cpu_extension

    return cpu_extension().frame_step(w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.skip_w, w.skip_b, w.up_w, w.up_b,
                                      window.contiguous(), rnn.h, rnn.c, w.cfg.q_levels, int(num_threads),
                                      cond=None if cond is None else cond.contiguous(), **int8_scales(w))


def int8_scales(w: InferenceWeights) -> dict:
    """The C++ frame step's scale arguments: w's per-row scales for int8 frame weights, else none."""
    if not w.int8:
        return {}
    return dict(w_ih_scale=w.w_ih_scale, w_hh_scale=w.w_hh_scale, skip_w_scale=w.skip_w_scale,
                up_w_scale=w.up_w_scale)


@dataclass
class FusedFrameWeights:
    """A frame tier's weights as the Triton kernels read them, built once per model and device
    (n tiers: one per tier, from its InferenceWeights or TierWeights).

    The layers' W_ih, W_hh are the exported tensors themselves (the layer kernel reads both in one
    product, so no concatenated copy is kept); the biases are pre-summed in the kernel's row order;
    the skip projections are concatenated into one (H, L*H) matrix. Per (batch, device) it keeps
    the launch buffers, allocated once and reused (CUDA graphs capture their addresses).
    F: the tier's frame (window width; S_k above the bottom tier), n_out: its upsampled positions.
    """

    cfg: object  # SampleRNNConfig
    w_ih: List[torch.Tensor]  # per layer (G*H, [H +] F) for layer 0, (G*H, H [+ F]) after; fp32 or bf16
    w_hh: List[torch.Tensor]  # per layer (G*H, H)
    bias: torch.Tensor  # (L, 4*H) fp32: [unit, gate] with gates i, f, g, o (LSTM) or r, z, n_x, n_h (GRU)
    skip_w: Optional[torch.Tensor]  # (H, L*H) = [skip_w_1 | ... | skip_w_L], None without skip
    skip_b: Optional[torch.Tensor]  # (H,) fp32
    up_w: torch.Tensor  # (n_out*H, H)
    up_b: torch.Tensor  # (n_out*H,) fp32
    buffers: Dict[Tuple[int, str], dict] = field(default_factory=dict, repr=False)

    @classmethod
    def from_inference(cls, w) -> "FusedFrameWeights":
        """From one tier's exported weights: an InferenceWeights (the bottom frame tier) or a
        TierWeights (one above); float32 or bfloat16 frame weights (int8 has no kernel)."""
        cfg = w.cfg
        H, L, G = cfg.dim, cfg.n_rnn, cfg.gates
        dts = {t.dtype for t in w.w_ih + w.w_hh + w.skip_w + [w.up_w]}
        if len(dts) != 1 or next(iter(dts)) not in (torch.float32, torch.bfloat16):
            raise TypeError(f"FusedFrameWeights: frame weights must be all float32 or all bfloat16, got {dts}")
        bias = []
        for i in range(L):
            bi, bh = w.b_ih[i].float().view(G, H), w.b_hh[i].float().view(G, H)
            if G == 4:
                b4 = bi + bh
            else:  # r, z summed; n_x and n_h apart (n = tanh(n_x + r * n_h))
                b4 = torch.stack([bi[0] + bh[0], bi[1] + bh[1], bi[2], bh[2]])
            bias.append(b4.t().reshape(4 * H))  # [unit, gate]
        skip = bool(w.skip_w)
        return cls(
            cfg=cfg, w_ih=[t.contiguous() for t in w.w_ih], w_hh=[t.contiguous() for t in w.w_hh],
            bias=torch.stack(bias).contiguous(),
            skip_w=torch.cat(list(w.skip_w), dim=1).contiguous() if skip else None,
            skip_b=w.skip_b.float().contiguous() if skip else None,
            up_w=w.up_w.contiguous(), up_b=w.up_b.float().contiguous())

    @property
    def bf16(self) -> bool:
        return self.up_w.dtype == torch.bfloat16

    @property
    def n_out(self) -> int:
        """Positions of the upsampled output (F for the bottom tier, frame_sizes[k] above)."""
        return self.up_w.shape[0] // self.cfg.dim

    def get_buffers(self, B: int, device: torch.device) -> dict:
        """hs (B, L*H): the new hidden states (scratch, copied into the state by the last launch);
        skip (B, H): the skip sum; cond (B, n_out, H): the output, returned by every call; x[i]:
        layer i's x operand, hs from layer i-1's column on (x[0]: hs, a placeholder). Per tier:
        each tier's FusedFrameWeights keeps its own."""
        key = (B, str(device))
        buf = self.buffers.get(key)
        if buf is None:
            H, L = self.cfg.dim, self.cfg.n_rnn
            f32 = dict(dtype=torch.float32, device=device)
            hs = torch.zeros(B, L * H, **f32)
            buf = dict(hs=hs, last=hs[:, (L - 1) * H:], cond=torch.zeros(B, self.n_out, H, **f32),
                       x=[hs] + [hs[:, (i - 1) * H:] for i in range(1, L)],
                       skip=torch.zeros(B, H, **f32) if self.skip_w is not None else None)
            self.buffers[key] = buf
        return buf


def triton_frame_step_available() -> Tuple[bool, str]:
    """(ok, reason): the Triton frame-tier kernels import (and their mode matches triton's)."""
    try:
        from fastsrnn.kernels import frame_step as kmod
    except Exception as e:  # triton missing or too old for the kernels
        return False, f"the Triton frame-step kernels failed to import: {e}"
    if kmod.MODE_MISMATCH:
        return False, kmod.MODE_MISMATCH
    return True, "Triton frame-step kernels"


def frame_step_triton(fw: FusedFrameWeights, window: torch.Tensor, rnn: RNNState,
                      cond: Optional[torch.Tensor] = None) -> torch.Tensor:
    """frame_step_ref's contract in L + 2 Triton launches and no other op (kernels/frame_step.py),
    for any frame tier: window (B, F_in) int64 (F_in: layer 0's inputs less cond's H), cond (B, H)
    float32 from the tier above for a conditioned tier (layer 0 reads [cond, x_in]); returns
    (B, n_out, H), n_out = up_w rows / H.

    rnn.h, rnn.c may be strided views (any strides); window and cond any row stride. The returned
    cond is a buffer of ``fw`` owned per (batch, device): the next call with the same batch
    overwrites it.
    """
    from fastsrnn.kernels import frame_step as k

    if k.MODE_MISMATCH:
        raise RuntimeError(k.MODE_MISMATCH)
    cfg = fw.cfg
    H, L, dev = cfg.dim, cfg.n_rnn, fw.up_w.device
    gru = cfg.rnn_type == "gru"
    if window.dim() != 2 or window.dtype != torch.int64:
        raise ValueError(f"frame_step_triton: window must be (B, F) int64, got {tuple(window.shape)} {window.dtype}")
    B, F = window.shape
    if cond is not None:
        if tuple(cond.shape) != (B, H) or cond.dtype != torch.float32 or cond.device != dev:
            raise ValueError(f"frame_step_triton: cond must be ({B}, {H}) float32 on {dev}, "
                             f"got {tuple(cond.shape)} {cond.dtype} on {cond.device}")
        if H > 1 and cond.stride(1) != 1:
            cond = cond.contiguous()
    n0 = fw.w_ih[0].shape[1]
    if n0 != F + (0 if cond is None else H):
        raise ValueError(f"frame_step_triton: layer 0 takes {n0} inputs, got a {F}-sample window"
                         f"{'' if cond is None else f' and a ({B}, {H}) cond'}"
                         f"{' (a conditioned tier: pass its cond)' if cond is None and n0 == F + H else ''}")
    if F > 1 and window.stride(1) != 1:
        window = window.contiguous()
    if tuple(rnn.h.shape) != (L, B, H) or (rnn.c is None) != gru:
        raise ValueError(f"frame_step_triton: rnn.h must be ({L}, {B}, {H}) (rnn.c too for LSTM, None for GRU)")
    for name, t in (("h", rnn.h), ("c", rnn.c)):
        if t is not None and (t.dtype != torch.float32 or t.device != dev or t.shape != rnn.h.shape):
            raise ValueError(f"frame_step_triton: rnn.{name} must be float32 ({L}, {B}, {H}) on {dev}")
    buf = fw.get_buffers(B, window.device)
    hs, out, skip = buf["hs"], buf["cond"], buf["skip"]
    bf16 = fw.bf16
    c = rnn.c if rnn.c is not None else rnn.h  # GRU: a valid pointer the kernel never reads
    lc = k.layer_config(B, H, F, bf16)
    grid, warps, stages = lc.pop("grid"), lc.pop("num_warps"), lc.pop("num_stages")
    even = B % lc["BLOCK_B"] == 0 and H % lc["BLOCK_H"] == 0
    for i in range(L):
        w_ih = fw.w_ih[i]
        xin = i == 0 or skip is not None
        # x: layer i-1's new h in hs, or (layer 0 of a conditioned tier) cond; x_in after it
        x = buf["x"][i] if i > 0 or cond is None else cond
        has_x = i > 0 or cond is not None
        xin_col = H if has_x else 0
        al = k.aligned(window, x, hs, rnn.h, c, w_ih, fw.w_hh[i], fw.bias, window.stride(0), x.stride(0),
                       hs.stride(0), *rnn.h.stride()[:2], *c.stride()[:2], w_ih.stride(0), xin_col, H, F)
        k.launch(k._layer_kernel, grid, window, window.stride(0), x, x.stride(0), hs, hs.stride(0),
                 rnn.h, *rnn.h.stride(), c, *c.stride(), i, w_ih, w_ih.stride(0), xin_col, fw.w_hh[i], fw.bias,
                 B, H, F, cfg.q_levels / 2,
                 GRU=gru, HAS_X=has_x, HAS_XIN=xin, ALIGNED=al, EVEN=even, num_warps=warps, num_stages=stages,
                 **lc)
    if skip is not None:
        _linear(k, hs, fw.skip_w, fw.skip_b, skip, bf16)
    _linear(k, skip if skip is not None else buf["last"], fw.up_w, fw.up_b, out, bf16, copy=(hs, rnn.h, L, H))
    return out


def _linear(k, x, w, b, out, bf16: bool, copy=None) -> None:
    """out (B, N...) = x (B, K) w^T + b (rows of out dense) with the linear kernel;
    copy=(hs, h, L, H): the same launch also copies hs into h."""
    B, (N, K) = x.shape[0], w.shape
    lc = k.linear_config(B, N, K, bf16)
    grid, warps, stages = lc.pop("grid"), lc.pop("num_warps"), lc.pop("num_stages")
    hs, h, L, H = copy if copy is not None else (x, x, 0, 0)
    sh = h.stride() if copy is not None else (0, 0, 0)
    al = k.aligned(x, w, b, out, hs, h, x.stride(0), out.stride(0), K, *sh[:2], H)
    even = B % lc["BLOCK_B"] == 0 and N % lc["BLOCK_N"] == 0
    k.launch(k._linear_kernel, grid, x, x.stride(0), w, b, out, out.stride(0), B, N, K, hs, h, *sh, L, H,
             COPY=copy is not None, ALIGNED=al, EVEN=even, num_warps=warps, num_stages=stages, **lc)

"""The frame-tier step on exported weights, in torch ops; shared by every fused backend.

The per-sample work is where the kernels differ; the frame step is a few matrix products per
layer that torch's BLAS (CPU) or cuBLAS (GPU) already runs near the machine's limit.
"""
from __future__ import annotations

import torch

from ..export import InferenceWeights
from ..model import RNNState
from ..quantize import frame_input


def _mm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x (B, K) fp32 @ w.T (K, N) + b -> (B, N) fp32; w may be bf16 (fp32 accumulation)."""
    if w.dtype == torch.float32:
        return torch.addmm(b, x, w.t())
    return torch.mm(x.to(w.dtype), w.t()).float() + b


def frame_step(w: InferenceWeights, window: torch.Tensor, rnn: RNNState, mm=None) -> torch.Tensor:
    """One frame step. window: (B, F) int64; rnn h, c (L, B, H) updated in place.

    mm: a replacement for ``_mm`` (same contract), e.g. the cpu backend's streaming kernel.

    Returns cond (B, F, H) float32: W2 c_j + b2 for the F positions of the next frame.
    """
    mm = mm or _mm
    cfg = w.cfg
    B, F, H = window.shape[0], cfg.frame_size, cfg.dim
    x_in = frame_input(window, cfg.q_levels)  # (B, F)
    x, total = x_in, None
    for i in range(cfg.n_rnn):
        inp = torch.cat([x, x_in], dim=1) if (i > 0 and w.skip_w) else x
        h = rnn.h[i]
        gi = mm(inp, w.w_ih[i], w.b_ih[i])  # (B, G*H)
        gh = mm(h, w.w_hh[i], w.b_hh[i])  # (B, G*H)
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
            proj = mm(x, w.skip_w[i], zero)
            total = proj if total is None else total + proj
    out = total if w.skip_w else x  # (B, H)
    return mm(out, w.up_w, w.up_b).view(B, F, H)  # (B, F*H) -> (B, F, H)

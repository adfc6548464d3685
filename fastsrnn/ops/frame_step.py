"""The frame-step op: one frame-tier step on exported weights. One home for it:

- :func:`frame_step_ref`, in torch ops (BLAS on the CPU, cuBLAS on a GPU): the specification and
  the frame step of the ``folded``, ``triton`` and ``cuda`` backends;
- :func:`frame_step_cpu`, the fused C++ step (csrc/cpu/frame_step.h), and :func:`linear_cpu`,
  its weight-streaming product, which the ``cpu`` backend uses at small batch.

Contract: window (B, F) int64 (the frame just finished); rnn h, c (L, B, H) float32, updated in
place; returns cond (B, F, H) float32 = W2 c_j + b2 for the F positions of the next frame.
"""
from __future__ import annotations

import torch

from fastsrnn.model import RNNState
from fastsrnn.ops.export import InferenceWeights
from fastsrnn.quantize import frame_input


def torch_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x (B, K) fp32 @ w.T (K, N) + b -> (B, N) fp32; w may be bf16 (fp32 accumulation)."""
    if w.dtype == torch.float32:
        return torch.addmm(b, x, w.t())
    return torch.mm(x.to(w.dtype), w.t()).float() + b


def frame_step_ref(w: InferenceWeights, window: torch.Tensor, rnn: RNNState, mm=None) -> torch.Tensor:
    """One frame step in torch ops (see the module docstring for the contract).

    mm: a replacement for ``torch_linear`` (same contract), e.g. :func:`linear_cpu`.
    """
    mm = mm or torch_linear
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


def linear_cpu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, num_threads: int = 0) -> torch.Tensor:
    """torch_linear's contract in the C++ weight-streaming kernel (fp32 or bf16 weights, fp32 sums):
    at small B the frame tier is a chain of DRAM-bound matrix-vector products."""
    from fastsrnn.ops.build import cpu_extension

    return cpu_extension().linear(x.contiguous(), w, b, int(num_threads))


def frame_step_cpu(w: InferenceWeights, window: torch.Tensor, rnn: RNNState, num_threads: int = 0) -> torch.Tensor:
    """frame_step_ref's contract in one fused C++ call (OpenMP over rows; h, c must be dense)."""
    from fastsrnn.ops.build import cpu_extension

    return cpu_extension().frame_step(w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.skip_w, w.skip_b, w.up_w, w.up_b,
                                      window.contiguous(), rnn.h, rnn.c, w.cfg.q_levels, int(num_threads))

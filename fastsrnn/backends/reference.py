"""Eager twin of the fused sample-frame kernels (C++, Triton, CUDA): same contract, torch ops.

It is the specification of ``sample_frame``: the kernels are tested against it and against the
eager model; it is also the ``ref`` fused backend that tests use to isolate the folds.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..sampling import sample_ref


def sample_frame_ref(
    table: torch.Tensor, cond: torch.Tensor, w3: torch.Tensor, b3: torch.Tensor,
    wo: torch.Tensor, bo: torch.Tensor, window: torch.Tensor, uniforms: torch.Tensor,
    inv_temperature: torch.Tensor, argmax: bool, out: torch.Tensor,
    forced: Optional[torch.Tensor] = None, logits_out: Optional[torch.Tensor] = None,
) -> None:
    """Run the F sample steps of one frame for B sequences.

    table: (F, Q, H); cond: (B, F, H) = W2 c_j + b2; w3: (H, H); b3: (H,); wo: (Q, H); bo: (Q,);
    window: (B, F) int64, updated in place to the last F samples; uniforms: (B, F) float32;
    inv_temperature: (B,) float32; out: (B, F) int64 written with the drawn samples;
    forced: (B, F) int64 samples fed instead of drawn; logits_out: (B, F, Q) float32.
    Step j: a2 = relu(cond_j + sum_k table[k, window_k]); a3 = relu(W3 a2 + b3);
    logits = Wo a3 + bo; x = inverse-CDF sample; window <- window[1:] + [x].
    """
    F = table.shape[0]
    slots = torch.arange(F, device=window.device)
    for j in range(F):
        a2 = torch.relu(cond[:, j].float() + table[slots, window].float().sum(dim=1))  # (B, F, H) -> (B, H)
        a3 = torch.relu(a2 @ w3.float().t() + b3)
        logits = a3 @ wo.float().t() + bo  # (B, Q)
        if logits_out is not None:
            logits_out[:, j] = logits
        x = forced[:, j] if forced is not None else sample_ref(logits, uniforms[:, j], inv_temperature, argmax)
        out[:, j] = x
        window.copy_(torch.cat([window[:, 1:], x[:, None]], dim=1))

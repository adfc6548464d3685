"""Sampling from logits by inverse CDF with passed-in uniforms (docs/DESIGN.md §4).

This is the reference every fused backend reproduces: with the same uniform ``u`` they draw
the same integer, except at near-ties of the CDF (see :func:`cdf_margin`).
"""
from __future__ import annotations

import torch


def sample_ref(logits: torch.Tensor, u: torch.Tensor, inv_temperature: torch.Tensor,
               argmax: bool = False) -> torch.Tensor:
    """Inverse-CDF sample of softmax(logits * inv_temperature).

    logits: (B, Q) float; u: (B,) float in [0, 1); inv_temperature: (B,) float -> (B,) int64.
    Draws the first index i whose running sum of exp((l - max) * inv_t) exceeds u * total
    (no division by the total, so that kernels need not normalise). argmax: first maximum.
    """
    logits = logits.float()
    if argmax:
        return logits.argmax(dim=-1)
    z = (logits - logits.max(dim=-1, keepdim=True).values) * inv_temperature.float()[:, None]
    cdf = torch.cumsum(torch.exp(z), dim=-1)  # (B, Q)
    threshold = u.float() * cdf[:, -1]
    idx = (cdf <= threshold[:, None]).sum(dim=-1)  # first i with cdf_i > threshold
    return idx.clamp_(max=logits.shape[-1] - 1)


def cdf_margin(logits: torch.Tensor, u: torch.Tensor, inv_temperature: torch.Tensor) -> torch.Tensor:
    """Distance of u from the nearest CDF boundary, normalised: (B,) float64.

    Two backends that sum the CDF in a different order may disagree only when this is at the
    level of rounding (about 1e-6 in fp32); tests report it to explain any mismatch.
    """
    z = (logits.double() - logits.double().max(dim=-1, keepdim=True).values) * inv_temperature.double()[:, None]
    cdf = torch.cumsum(torch.exp(z), dim=-1)
    cdf = cdf / cdf[:, -1:]
    return (cdf - u.double()[:, None]).abs().min(dim=-1).values


def temperature_tensor(temperature, batch: int, device=None) -> torch.Tensor:
    """A scalar or per-sequence temperature -> inv_temperature (B,) float32, checked."""
    t = torch.as_tensor(temperature, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"temperature: expected a scalar or {batch} values (one per sequence), got {t.numel()}")
    if not torch.isfinite(t).all() or (t <= 0).any():
        raise ValueError(f"temperature must be finite and > 0 (use argmax for greedy), got {t.tolist()}")
    return (1.0 / t).contiguous().to(device)

"""Quantization of audio in [-1, 1] to Q integer levels, and back.

Linear: level q stands for q / (Q/2) - 1, so q = Q/2 is exact silence and
``quantize(dequantize(q)) == q`` for every level. mu-law compands first (mu = Q - 1).
No per-chunk min-max normalization: level is set once per file or dataset at preparation.
"""
from __future__ import annotations

import math

import torch


def linear_quantize(x: torch.Tensor, q_levels: int) -> torch.Tensor:
    """x: (...) float in [-1, 1] -> (...) int64 in [0, Q)."""
    half = q_levels / 2
    return torch.clamp(torch.round((x.float() + 1.0) * half), 0, q_levels - 1).long()


def linear_dequantize(q: torch.Tensor, q_levels: int) -> torch.Tensor:
    """q: (...) int in [0, Q) -> (...) float32 in [-1, 1)."""
    return q.float() / (q_levels / 2) - 1.0


def mulaw_quantize(x: torch.Tensor, q_levels: int) -> torch.Tensor:
    """x: (...) float in [-1, 1] -> (...) int64 in [0, Q), mu-law companded."""
    mu = q_levels - 1
    x = torch.clamp(x.float(), -1.0, 1.0)
    y = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return linear_quantize(y, q_levels)


def mulaw_dequantize(q: torch.Tensor, q_levels: int) -> torch.Tensor:
    """q: (...) int in [0, Q) -> (...) float32 in [-1, 1], inverse of :func:`mulaw_quantize`."""
    mu = q_levels - 1
    y = linear_dequantize(q, q_levels)
    return torch.sign(y) * torch.expm1(y.abs() * math.log1p(mu)) / mu


def _codec(q_type: str):
    """(quantize, dequantize) for ``q_type``."""
    if q_type == "linear":
        return linear_quantize, linear_dequantize
    if q_type == "mulaw":
        return mulaw_quantize, mulaw_dequantize
    raise ValueError(f"unknown q_type {q_type!r} (expected 'linear' or 'mulaw')")


def quantize(x: torch.Tensor, q_levels: int, q_type: str = "linear") -> torch.Tensor:
    return _codec(q_type)[0](x, q_levels)


def dequantize(q: torch.Tensor, q_levels: int, q_type: str = "linear") -> torch.Tensor:
    return _codec(q_type)[1](q, q_levels)


def frame_input(q: torch.Tensor, q_levels: int) -> torch.Tensor:
    """The frame tier's input: integer samples scaled to [-2, 2], as in the Dadabots code.

    q: (...) int -> (...) float32. Uses the raw level index whatever the quantization type.
    """
    return (q.float() / (q_levels / 2) - 1.0) * 2.0


def silence_level(q_levels: int) -> int:
    """The level that stands for 0.0 (used to pad the first frame)."""
    return q_levels // 2

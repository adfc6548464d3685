"""Sampling from logits by inverse CDF with passed-in uniforms (docs/DESIGN.md §4).

:class:`Sampling` is the one value that says how a sample is drawn: every backend, CUDA graph,
launcher and kernel takes it whole (the C++ and CUDA kernels read it as their ``SamplingParams``
struct), so a new sampling rule changes this module, the three draw functions and that struct.
:func:`sample_ref` is the reference every fused backend reproduces: with the same uniform ``u``
they draw the same integer, except at near-ties of the CDF (see :func:`cdf_margin`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class Sampling:
    """How every sequence's samples are drawn (docs/DESIGN.md §4): one value, passed whole."""

    inv_temperature: torch.Tensor  # (B,) float32: 1 / temperature per sequence, on the op's device
    argmax: bool = False  # the first maximum instead of a draw (the temperature is then unused)

    def __post_init__(self):
        if not isinstance(self.inv_temperature, torch.Tensor) or self.inv_temperature.dim() != 1:
            raise TypeError(f"Sampling: inv_temperature must be a (B,) tensor, got {self.inv_temperature!r}")
        if not isinstance(self.argmax, bool):
            raise TypeError(f"Sampling: argmax must be a bool, got {self.argmax!r}")

    @classmethod
    def make(cls, temperature, batch: int, device=None, argmax: bool = False) -> "Sampling":
        """From a scalar or per-sequence temperature (checked, see :func:`temperature_tensor`)."""
        return cls(temperature_tensor(temperature, batch, device), argmax=bool(argmax))

    @property
    def batch(self) -> int:
        return self.inv_temperature.shape[0]

    def key(self) -> tuple:
        """Every field but the per-sequence tensor: what a kernel compiles in and a CUDA graph
        captures by value (a capture is kept per key; the tensor is copied in per replay)."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "inv_temperature")

    def replace(self, **changes) -> "Sampling":
        return dataclasses.replace(self, **changes)

    def to(self, device) -> "Sampling":
        return self.replace(inv_temperature=self.inv_temperature.to(device))

    def rows(self, index) -> "Sampling":
        """The sampling of some sequences: ``index`` selects rows of inv_temperature (keeps its dims)."""
        t = self.inv_temperature[index]
        return self.replace(inv_temperature=t.reshape(-1))

    def contiguous(self) -> "Sampling":
        t = self.inv_temperature
        return self if t.is_contiguous() else self.replace(inv_temperature=t.contiguous())


def sample_ref(logits: torch.Tensor, u: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Inverse-CDF sample of softmax(logits * inv_temperature).

    logits: (B, Q) float; u: (B,) float in [0, 1); sampling: inv_temperature (B,) -> (B,) int64.
    Draws the first index i whose running sum of exp((l - max) * inv_t) exceeds u * total
    (no division by the total, so that kernels need not normalise). argmax: first maximum.
    """
    logits = logits.float()
    if sampling.argmax:
        return logits.argmax(dim=-1)
    z = (logits - logits.max(dim=-1, keepdim=True).values) * sampling.inv_temperature.float()[:, None]
    cdf = torch.cumsum(torch.exp(z), dim=-1)  # (B, Q)
    threshold = u.float() * cdf[:, -1]
    idx = (cdf <= threshold[:, None]).sum(dim=-1)  # first i with cdf_i > threshold
    return idx.clamp_(max=logits.shape[-1] - 1)


def cdf_margin(logits: torch.Tensor, u: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Distance of u from the nearest CDF boundary, normalised: (B,) float64.

    Two backends that sum the CDF in a different order may disagree only when this is at the
    level of rounding (about 1e-6 in fp32); tests report it to explain any mismatch.
    """
    inv_t = sampling.inv_temperature.double().to(logits.device)
    z = (logits.double() - logits.double().max(dim=-1, keepdim=True).values) * inv_t[:, None]
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

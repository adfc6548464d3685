"""Sampling from logits by inverse CDF with passed-in uniforms (docs/DESIGN.md §4).

:class:`Sampling` is the one value that says how a sample is drawn: every backend, CUDA graph,
launcher and kernel takes it whole (the C++ and CUDA kernels read it as their ``SamplingParams``
struct, the Triton kernels as ``kernels.sample_frame.sampling_args``), so a new sampling rule
changes this module, the three draw functions, the struct (its C++ and CUDA mirrors) and the
Triton kernels' arguments (docs/DESIGN.md §9).
:func:`sample_ref` is the reference every fused backend reproduces: with the same uniform ``u``
they draw the same integer, except at near-ties (see :func:`cdf_margin`). The cut-offs (top-k,
top-p) keep the levels whose logit is at or above a threshold (:func:`cut_mask`), found by
bisection over the 2^32 float32 values in their order, so that every kernel finds it in a fixed
order with plain counts and sums.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class Sampling:
    """How every sequence's samples are drawn (docs/DESIGN.md §4): one value, passed whole."""

    inv_temperature: torch.Tensor  # (B,) float32: 1 / temperature per sequence, on the op's device
    argmax: bool = False  # the first maximum instead of a draw (temperature and cut-offs unused)
    top_k: int = 0  # keep the k highest logits (ties with the k-th kept); 0 = off
    top_p: float = 1.0  # then the fewest highest levels holding >= top_p of the kept mass; 1 = off

    def __post_init__(self):
        if not isinstance(self.inv_temperature, torch.Tensor) or self.inv_temperature.dim() != 1:
            raise TypeError(f"Sampling: inv_temperature must be a (B,) tensor, got {self.inv_temperature!r}")
        if not isinstance(self.argmax, bool):
            raise TypeError(f"Sampling: argmax must be a bool, got {self.argmax!r}")
        object.__setattr__(self, "top_k", check_top_k(self.top_k))
        object.__setattr__(self, "top_p", check_top_p(self.top_p))

    @classmethod
    def make(cls, temperature, batch: int, device=None, argmax: bool = False, top_k: int = 0,
             top_p: float = 1.0) -> "Sampling":
        """From a scalar or per-sequence temperature (checked, see :func:`temperature_tensor`)."""
        return cls(temperature_tensor(temperature, batch, device), bool(argmax), top_k, top_p)

    @property
    def cut(self) -> bool:
        """Whether a cut-off (top-k or top-p) is on."""
        return self.top_k > 0 or self.top_p < 1.0

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


def check_top_k(top_k, name: str = "top_k") -> int:
    """``top_k`` as an int >= 0 (0 = off), or a TypeError/ValueError naming ``name``."""
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= 0 (0 = off), got {top_k!r}")
    if top_k < 0 or top_k >= 2 ** 31:
        raise ValueError(f"{name} must be >= 0 (0 = off), got {top_k}")
    return int(top_k)


def check_top_p(top_p, name: str = "top_p") -> float:
    """``top_p`` as a float in (0, 1] (1 = off), or a TypeError/ValueError naming ``name``."""
    if isinstance(top_p, bool) or not isinstance(top_p, numbers.Real):
        raise TypeError(f"{name} must be a number in (0, 1] (1 = off), got {top_p!r}")
    if not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
        raise ValueError(f"{name} must be in (0, 1] (1 = off), got {top_p!r}")
    return float(top_p)


def order_key(logits: torch.Tensor) -> torch.Tensor:
    """float32 (B, Q) -> int64 keys in [0, 2^32) in the order of the floats (-0 just below +0):
    the sign-flipped bit pattern every kernel computes the same way."""
    bits = logits.float().contiguous().view(torch.int32).long()
    return torch.where(bits >= 0, bits + 2 ** 31, 2 ** 31 - 1 - (bits & 0x7FFFFFFF))


def _largest(pred, batch: int, device) -> torch.Tensor:
    """The largest t in [0, 2^32) with pred(t), per row (B,) int64, for a pred that is true at 0
    and monotone (true below any t where it is true): bit by bit from the top, as the kernels."""
    t = torch.zeros(batch, dtype=torch.long, device=device)
    for bit in range(31, -1, -1):
        c = t | (1 << bit)
        t = torch.where(pred(c), c, t)
    return t


def _weights(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """exp((l - max) * inv_t) (B, Q) float32: the unnormalised probabilities every draw sums."""
    z = (logits - logits.max(dim=-1, keepdim=True).values) * sampling.inv_temperature.float()[:, None]
    return torch.exp(z)


def cut_threshold(logits: torch.Tensor, sampling: Sampling, e: torch.Tensor = None) -> torch.Tensor:
    """The cut-offs' threshold key (B,) int64: level i is kept when order_key(l_i) >= it (0: all).

    top-k: the largest t with #{i : key_i >= t} >= k, i.e. the k-th highest logit (ties with it
    kept). top-p, then: M = the kept levels' sum of e (the weights of sample_ref), and the largest
    t with sum_{key_i >= t} e_i >= top_p * M: the fewest highest levels (ties kept) that hold a
    fraction top_p of the mass. Sums here in float64 (top_p as the kernels' float32); the
    kernels sum in their own order, which matters only at a near-tie (:func:`cdf_margin`)."""
    logits = logits.float()
    B, dev = logits.shape[0], logits.device
    key = order_key(logits)
    t = torch.zeros(B, dtype=torch.long, device=dev)
    if sampling.top_k > 0:
        t = _largest(lambda c: (key >= c[:, None]).sum(-1) >= sampling.top_k, B, dev)
    if sampling.top_p < 1.0:
        e64 = (_weights(logits, sampling) if e is None else e).double()
        mass = lambda c: torch.where(key >= c[:, None], e64, 0.0).sum(-1)  # noqa: E731
        target = float(torch.tensor(sampling.top_p, dtype=torch.float32)) * mass(t)
        t = _largest(lambda c: mass(c) >= target, B, dev)
    return t


def cut_mask(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """The levels the cut-offs keep: (B, Q) bool (all True when both are off)."""
    return order_key(logits) >= cut_threshold(logits, sampling)[:, None]


def sample_ref(logits: torch.Tensor, u: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Inverse-CDF sample of softmax(logits * inv_temperature), cut to top-k / top-p.

    logits: (B, Q) float; u: (B,) float in [0, 1); sampling: inv_temperature (B,) -> (B,) int64.
    Draws the first index i whose running sum of exp((l - max) * inv_t) exceeds u * total
    (no division by the total, so that kernels need not normalise), the levels the cut-offs drop
    (:func:`cut_threshold`) adding 0. argmax: first maximum (never cut).
    """
    logits = logits.float()
    if sampling.argmax:
        return logits.argmax(dim=-1)
    e = _weights(logits, sampling)
    if sampling.cut:
        e = torch.where(order_key(logits) >= cut_threshold(logits, sampling, e)[:, None], e, 0.0)
    cdf = torch.cumsum(e, dim=-1)  # (B, Q)
    threshold = u.float() * cdf[:, -1]
    idx = (cdf <= threshold[:, None]).sum(dim=-1)  # first i with cdf_i > threshold
    return idx.clamp_(max=logits.shape[-1] - 1)


# Near-tie scale of the cut-offs' logit gaps: backends' fp32 logits agree to about 1e-6 of
# max(1, max|l|), so a gap is a margin in those units (comparable to a CDF margin).
def _gap(hi: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(hi - lo), (hi - lo) / scale, torch.full_like(scale, math.inf))


def cdf_margin(logits: torch.Tensor, u: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Distance of the draw from its nearest ambiguity, normalised: (B,) float64.

    Without cut-offs, the distance of u from the nearest boundary of the normalised CDF. With
    them also (a) the gap between the lowest kept and highest dropped logit, and with top-k the
    gap between the k-th and (k+1)-th highest, over max(1, max|l|); (b) with top-p, the distance
    of the kept mass fraction from top_p at the threshold and at the next level above it. Two
    backends that round differently may disagree only when this is at the level of rounding
    (about 1e-6 in fp32); tests report it to explain any mismatch.
    """
    inv_t = sampling.inv_temperature.double().to(logits.device)
    l64 = logits.double()
    e = torch.exp((l64 - l64.max(dim=-1, keepdim=True).values) * inv_t[:, None])
    if not sampling.cut:
        cdf = torch.cumsum(e, dim=-1)
        cdf = cdf / cdf[:, -1:]
        return (cdf - u.double()[:, None]).abs().min(dim=-1).values
    sub = sampling.replace(inv_temperature=sampling.inv_temperature.to(logits.device))
    key = order_key(logits)
    t = cut_threshold(logits, sub, e)
    kept = key >= t[:, None]
    cdf = torch.cumsum(torch.where(kept, e, 0.0), dim=-1)
    cdf = cdf / cdf[:, -1:]
    margin = torch.where(kept, (cdf - u.double()[:, None]).abs(), math.inf).min(dim=-1).values
    scale = l64.abs().max(dim=-1).values.clamp(min=1.0)
    inf = torch.tensor(math.inf, dtype=torch.float64, device=logits.device)
    low_kept = torch.where(kept, l64, inf).min(dim=-1).values
    high_dropped = torch.where(kept, -inf, l64).max(dim=-1).values
    margin = torch.minimum(margin, _gap(low_kept, high_dropped, scale))
    Q = logits.shape[-1]
    if 0 < sampling.top_k < Q:
        top = l64.topk(sampling.top_k + 1, dim=-1).values
        margin = torch.minimum(margin, _gap(top[:, -2], top[:, -1], scale))
    if sampling.top_p < 1.0:
        p = float(torch.tensor(sampling.top_p, dtype=torch.float32))
        t_k = cut_threshold(logits, sub.replace(top_p=1.0), e)
        mass = lambda c: torch.where(key >= c[:, None], e, 0.0).sum(-1)  # noqa: E731
        total = mass(t_k)
        above = torch.where(key > t[:, None], key, 2 ** 32).min(dim=-1).values  # the next level up
        margin = torch.minimum(margin, (mass(t) / total - p).abs())
        margin = torch.minimum(margin, (p - mass(above) / total).abs())
    return margin


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

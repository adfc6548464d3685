"""Quantization round trips: levels survive dequantize -> quantize; audio moves at most half a step."""
from __future__ import annotations

import math

import pytest
import torch

from fastsrnn.quantize import dequantize, frame_input, quantize, silence_level

Q_LEVELS = [pytest.param(7, id="Q7"), pytest.param(256, id="Q256")]
Q_TYPES = ["linear", "mulaw"]


@pytest.mark.parametrize("q_type", Q_TYPES)
@pytest.mark.parametrize("q", Q_LEVELS)
def test_every_level_survives_a_round_trip(q, q_type):
    levels = torch.arange(q)
    x = dequantize(levels, q, q_type)
    assert x.dtype == torch.float32
    assert torch.equal(quantize(x, q, q_type), levels)
    assert bool((x[1:] > x[:-1]).all()), "levels must map to increasing amplitudes"


def _grid(q: int) -> torch.Tensor:
    """Amplitudes across the representable range [-1, 1 - 2/Q], plus random ones."""
    g = torch.Generator().manual_seed(q)
    top = 1.0 - 2.0 / q
    return torch.cat([torch.linspace(-1.0, top, 20001), torch.rand(20000, generator=g) * (top + 1) - 1])


@pytest.mark.parametrize("q", Q_LEVELS)
def test_linear_error_is_at_most_half_a_step(q):
    x = _grid(q)
    err = (dequantize(quantize(x, q), q) - x).abs()
    assert err.max().item() <= 1.0 / q + 1e-6
    # Steps are 2/Q wide, so some point of a dense grid must come close to the worst case.
    assert err.max().item() > 0.9 / q


@pytest.mark.parametrize("q", Q_LEVELS)
def test_linear_clamps_the_top_and_out_of_range(q):
    x = torch.tensor([1.0, 1.5, -1.5])
    assert quantize(x, q).tolist() == [q - 1, q - 1, 0]


@pytest.mark.parametrize("q", Q_LEVELS)
def test_mulaw_error_bound(q):
    """mu-law is linear quantization of y = sign(x) ln(1 + mu|x|) / ln(1 + mu), mu = Q - 1, so
    |dy| <= 1/Q and |dx| <= |dy| * dx/dy at the far end of the step:
    |dx| <= (1/Q) * ln(1 + mu) * (|x| + 1/mu) * (1 + mu)^(1/Q)."""
    mu = q - 1
    top = math.expm1((1.0 - 2.0 / q) * math.log1p(mu)) / mu  # the largest representable amplitude
    x = _grid(q).clamp(-1.0, top)
    err = (dequantize(quantize(x, q, "mulaw"), q, "mulaw") - x).abs()
    bound = (1.0 / q) * math.log1p(mu) * (x.abs() + 1.0 / mu) * (1 + mu) ** (1.0 / q)
    assert bool((err <= bound + 1e-6).all()), f"worst excess {(err - bound).max().item():.3g}"
    # Small amplitudes are resolved much more finely than the linear 1/Q.
    quiet = x.abs() < 0.01
    assert err[quiet].max().item() < 0.5 / q


def test_silence_is_exact_and_frame_input_spans_minus_two_to_two():
    assert dequantize(torch.tensor(silence_level(256)), 256).item() == 0.0
    assert quantize(torch.zeros(3), 256).tolist() == [128] * 3
    f = frame_input(torch.arange(256), 256)
    assert f[0].item() == -2.0 and f[-1].item() < 2.0 and f[128].item() == 0.0


def test_unknown_quantization_type_is_named():
    with pytest.raises(ValueError, match="'alaw'"):
        quantize(torch.zeros(2), 256, "alaw")
    with pytest.raises(ValueError, match="'alaw'"):
        dequantize(torch.zeros(2, dtype=torch.long), 256, "alaw")

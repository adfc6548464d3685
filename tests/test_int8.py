"""int8 frame-tier weights (one fp32 scale per output row; ops/export.py quantize_rows).

- the quantization: per-row scale max|row| / 127, |w - scale q| <= scale / 2, zero rows exact;
- the export and its cache produce the int8 weights and scales, bit for bit each time;
- the C++ product (every ISA build) on int8 weights against the torch twin (torch_linear on the
  same int8 weights) at fp32 tolerance: both widen the same integers exactly and sum in fp32, so
  only the summation order differs (the frame step on int8 weights, every ISA build:
  tests/test_frame_step.py);
- whole generations: ``cpu`` int8 draws what ``folded`` int8 draws (CDF near-ties aside);
- the bench's int8 variants and their gate; bad arguments give clear errors.
"""
from __future__ import annotations

import re

import pytest
import torch
from helpers import ODD, close_rel, generate_and_compare, isa_extension, random_model

import fastsrnn.backends.cpu as cpu_mod
from fastsrnn import SampleRNNConfig
from fastsrnn.backends import make_backend
from fastsrnn.backends.base import DecodeState
from fastsrnn.generation.precision import precision_options
from fastsrnn.ops.build import cpu_extension
from fastsrnn.ops.export import clear_export_cache, export_inference, export_inference_cached, quantize_rows
from fastsrnn.ops.frame_step import frame_step_ref, int8_scales, linear_cpu, torch_linear
from fastsrnn.ops.thresholds import CPU_STREAM_MAX_B

I8 = torch.int8


def _model(rnn="lstm", skip=True, L=3, seed=0, **shape):
    return random_model(SampleRNNConfig(**dict(ODD, rnn_type=rnn, skip=skip, n_rnn=L, **shape)), seed=seed)


# ---------------------------------------------------------------------------------------------
# The format


def test_quantize_rows_properties():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 37, generator=g) * torch.logspace(-4, 2, 40)[:, None]  # rows of very different size
    w[5] = 0.0
    w[7, :] = -3.0  # a constant negative row: all -127
    q, s = quantize_rows(w)
    assert q.dtype == I8 and s.dtype == torch.float32 and q.shape == w.shape and s.shape == (40,)
    assert torch.equal(s, (w.double().abs().amax(1) / 127).float())
    assert (q.abs() <= 127).all()
    nz = s > 0
    assert torch.equal(q[nz].abs().amax(1), torch.full((int(nz.sum()),), 127, dtype=I8))
    err = (w.double() - q.double() * s.double()[:, None]).abs()
    assert (err <= s.double()[:, None] / 2 * (1 + 1e-6)).all(), "rounding is not to nearest"
    assert s[5] == 0 and (q[5] == 0).all(), "a zero row must stay exactly zero"
    assert (q[7] == -127).all()


def test_quantize_rows_exact_on_the_grid():
    """Values already on a row's grid (q * scale, scale = max / 127) come back as the same q."""
    g = torch.Generator().manual_seed(1)
    q0 = torch.randint(-127, 128, (8, 50), generator=g, dtype=I8)
    q0[:, 0] = 127  # the row maximum sets the scale
    s0 = torch.tensor([2.0 ** -k for k in range(8)])
    q, s = quantize_rows(q0.float() * s0[:, None])
    assert torch.equal(q, q0) and torch.equal(s, s0)


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
@pytest.mark.parametrize("skip", [True, False], ids=["skip", "noskip"])
def test_export_int8_layout(rnn, skip):
    model = _model(rnn, skip)
    w32 = export_inference(model)
    w8 = export_inference(model, frame_dtype=I8)
    assert w8.int8 and not w32.int8
    mats = {"w_ih": w32.w_ih, "w_hh": w32.w_hh, "skip_w": w32.skip_w, "up_w": [w32.up_w]}
    assert len(w8.skip_w_scale) == (3 if skip else 0)
    for name, ref in mats.items():
        got = getattr(w8, name) if name != "up_w" else [w8.up_w]
        scales = getattr(w8, f"{name}_scale") if name != "up_w" else [w8.up_w_scale]
        for t, q, s in zip(ref, got, scales):
            q_want, s_want = quantize_rows(t)
            assert torch.equal(q, q_want) and torch.equal(s, s_want), name
    for name in ("table", "w3", "wo", "b3", "bo", "up_b", "h0"):  # the sample tier and biases as they were
        assert torch.equal(getattr(w8, name), getattr(w32, name)), name
    assert w8.nbytes_frame_tier() < 0.3 * w32.nbytes_frame_tier()
    moved = w8.to("cpu", torch.bfloat16)  # int8 frame weights stay; the sample tier follows dtype
    assert moved.int8 and moved.w3.dtype == torch.bfloat16 and torch.equal(moved.w_hh_scale[0], w8.w_hh_scale[0])
    with pytest.raises(ValueError, match="int8 frame weights cannot become torch.bfloat16"):
        w8.to(frame_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="quantized from float32 frame weights, not torch.bfloat16"):
        w32.to(frame_dtype=torch.bfloat16).to(frame_dtype=I8)


def test_export_cache_int8():
    clear_export_cache()
    model = _model()
    w8 = export_inference_cached(model, "cpu", None, I8)
    assert export_inference_cached(model, "cpu", None, I8) is w8
    fresh = export_inference(model).to("cpu", None, I8)
    for a, b in zip(w8.w_hh + w8.w_hh_scale + [w8.up_w, w8.up_w_scale], fresh.w_hh + fresh.w_hh_scale
                    + [fresh.up_w, fresh.up_w_scale]):
        assert a.dtype == b.dtype and torch.equal(a, b)
    with torch.no_grad():
        model.frame_rnn.upsample.bias.add_(1.0)
    assert export_inference_cached(model, "cpu", None, I8) is not w8
    clear_export_cache()


# ---------------------------------------------------------------------------------------------
# The kernels against the torch twin


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_linear_isa_variants(isa):
    """Every ISA build's product (K tails, the prefetching path) on int8 weights. Their frame step
    on int8 weights: tests/test_frame_step.py (cpu-avx2, cpu-generic)."""
    mod = isa_extension(isa)
    _linearclose_rel(lambda x, q, b, s: mod.linear(x, q, b, 1, scale=s))


def _linearclose_rel(fn):
    g = torch.Generator().manual_seed(3)
    for B, N, K in ((1, 37, 100), (3, 2048, 256), (5, 9, 16)):  # (2048, 256) on one thread: prefetched
        x, w, b = torch.randn(B, K, generator=g), torch.randn(N, K, generator=g), torch.randn(N, generator=g)
        q, s = quantize_rows(w)
        want = torch_linear(x, q, b, scale=s)
        atol = 1e-5 * float(want.abs().max())  # sums of K terms: fp32 rounding relative to their size
        torch.testing.assert_close(fn(x, q, b, s), want, rtol=1e-5, atol=atol)
        exact = x.double() @ (q.double() * s.double()[:, None]).t() + b.double()  # the dequantized product
        torch.testing.assert_close(want.double(), exact, rtol=1e-5, atol=atol)


def test_linear_cpu_int8():
    _linearclose_rel(lambda x, q, b, s: linear_cpu(x, q, b, 1, scale=s))
    _linearclose_rel(lambda x, q, b, s: linear_cpu(x, q, b, 2, scale=s))


# ---------------------------------------------------------------------------------------------
# Backends


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
@pytest.mark.parametrize("B", [1, 3, 8])
def test_cpu_int8_generation_equals_folded_int8(rnn, B):
    model = _model(rnn, True)
    backends = [make_backend(n, model, frame_dtype=I8) for n in ("folded", "cpu")]
    assert all(be.w.int8 for be in backends) and backends[0].w is backends[1].w  # one cached export
    generate_and_compare(backends, model, B, n_frames=4, seed=B)


def test_cpu_int8_large_batch_takes_the_torch_product(monkeypatch):
    """Above the stream threshold the cpu backend runs frame_step_ref with its products (the C++
    one up to the threshold, torch_linear's dequantizing one above): the same frames as folded."""
    model = _model("lstm", True)
    monkeypatch.setitem(CPU_STREAM_MAX_B, "int8", 2)
    calls = []
    real = cpu_mod.torch_linear
    monkeypatch.setattr(cpu_mod, "torch_linear", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    backends = [make_backend(n, model, frame_dtype=I8) for n in ("folded", "cpu")]
    generate_and_compare(backends, model, 3, n_frames=2, seed=5)
    assert calls, "the large-batch path did not take torch's product"
    w, state = backends[1].w, DecodeState(model.initial_state(2), torch.zeros(2, ODD["frame_size"], dtype=torch.long))
    ref = state.rnn.clone()
    cond = backends[1].frame_step(state)  # B = 2: the fused C++ step
    close_rel(cond, frame_step_ref(w, torch.zeros(2, ODD["frame_size"], dtype=torch.long), ref), "cond")


def test_bench_int8_variants_and_gate():
    from fastsrnn.tools.bench_measure import INT8_LOGITS_LIMIT, check_backend, checked_backends, parse_variant

    assert parse_variant("cpu:int8frame") == ("cpu", {"frame_dtype": I8})
    # a precision name means what --precision means: int8 is an int8 frame tier and a bf16 sample tier
    assert parse_variant("folded:int8") == ("folded", precision_options("int8"))
    assert parse_variant("cpu:bf16") == ("cpu", precision_options("bf16"))
    with pytest.raises(ValueError, match="one precision"):
        parse_variant("cpu:bf16,int8")
    model = random_model(SampleRNNConfig.from_name("tiny", frame_size=4, dim=32, q_levels=32, emb_size=8))
    backends, checks = checked_backends(model, 2, ["eager", "cpu:int8frame", "folded:int8frame"], "cpu")
    assert checks["cpu:int8frame"].startswith("int8: logits rel. err")
    assert "vs folded:int8frame" in checks["cpu:int8frame"]
    assert checks["folded:int8frame"].startswith("int8: logits rel. err")
    err = float(re.search(r"err ([0-9.e+-]+)", checks["cpu:int8frame"]).group(1))
    assert 0 < err < INT8_LOGITS_LIMIT / 3
    bad = make_backend("cpu", model, frame_dtype=I8)
    bad.w = export_inference(model, I8)
    bad.w.up_w_scale = bad.w.up_w_scale * 1.01  # one scale vector 1% off: the draws may all agree
    with pytest.raises(RuntimeError, match=re.escape("(int8, vs folded:int8frame): logits relative error")):
        check_backend(model, bad, backends["eager"], "cpu:int8frame", 4, "cpu")
    bad.w.up_w_scale = bad.w.up_w_scale * 1.5  # far from fp32 eager: the first check refuses it
    with pytest.raises(RuntimeError, match=re.escape("(int8): logits relative error")):
        check_backend(model, bad, backends["eager"], "cpu:int8frame", 4, "cpu")


# ---------------------------------------------------------------------------------------------
# Bad arguments


def test_bad_int8_arguments():
    model = _model()
    w8 = export_inference(model, I8)
    st = model.initial_state(2)
    window = torch.zeros(2, ODD["frame_size"], dtype=torch.long)
    ext = cpu_extension()
    args = lambda w: (w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.skip_w, w.skip_b, w.up_w, w.up_b, window,  # noqa: E731
                      st.h, st.c, w.cfg.q_levels, 2)
    with pytest.raises(ValueError, match="frame_step: int8 weights need their per-row scales"):
        ext.frame_step(*args(w8))
    sc = int8_scales(w8)
    with pytest.raises(ValueError, match=re.escape("frame_step: w_hh_scale[i] must have shape")):
        ext.frame_step(*args(w8), **dict(sc, w_hh_scale=[t[:-1].contiguous() for t in w8.w_hh_scale]))
    with pytest.raises(TypeError, match=re.escape("frame_step: up_w_scale must be Float")):
        ext.frame_step(*args(w8), **dict(sc, up_w_scale=w8.up_w_scale.double()))
    with pytest.raises(ValueError, match="frame_step: expected one scale vector per int8 matrix"):
        ext.frame_step(*args(w8), **dict(sc, w_ih_scale=w8.w_ih_scale[:1]))
    w32 = export_inference(model)
    with pytest.raises(ValueError, match="float weights none"):
        ext.frame_step(*args(w32), **sc)
    with pytest.raises(TypeError, match=re.escape("frame_step: w_hh[i] must be Char")):
        ext.frame_step(*args(w8.__class__(**{**w8.__dict__, "w_hh": w32.w_hh})), **sc)
    x, (q, s) = torch.randn(2, 100), quantize_rows(torch.randn(5, 100))
    with pytest.raises(ValueError, match="linear: int8 w needs its per-row scale"):
        linear_cpu(x, q, torch.zeros(5))
    with pytest.raises(ValueError, match=re.escape("linear: scale must have shape [5], got [4]")):
        linear_cpu(x, q, torch.zeros(5), scale=s[:4])
    with pytest.raises(ValueError, match=re.escape("torch_linear: int8 w ((5, 100)) needs an fp32 scale")):
        torch_linear(x, q, torch.zeros(5))
    with pytest.raises(ValueError, match="quantize_rows: w must be a 2-d float tensor"):
        quantize_rows(torch.ones(3, dtype=torch.int32))

"""The fused C++ frame step (csrc/cpu/frame_step.h, ops.frame_step.frame_step_cpu) on every frame
tier of an n-tier model, against its specification frame_step_ref on the same weights.

- every tier kind: a 2-tier model's bottom tier, a conditioned bottom tier (cond (B, H) before the
  frame in layer 0's input), a conditioned upper tier (4 tiers) and the top tier, whose input is
  S_k samples wide and whose output has n_out = frame_sizes[k] != S_k positions;
- LSTM and GRU, skip on and off, fp32, bf16 and int8 frame weights: the output and the in-place
  h, c within ~1e-5 relative (bf16: the reference's product widened exactly, as the kernel's);
- bad arguments give readable errors (cond's shape and dtype, the frame's width, up_w's rows);
- the ``cpu`` backend runs the C++ step for every tier of a 3- and 4-tier model (a spy checks
  that frame_step_ref never ran) and generates what ``folded`` generates.
"""
from __future__ import annotations

import re

import pytest
import torch
from helpers import close_rel, generate_and_compare, random_model, tier_of

import fastsrnn.backends.cpu as cpu_mod
from fastsrnn import SampleRNNConfig
from fastsrnn.backends import make_backend
from fastsrnn.config import RNN_TYPES
from fastsrnn.ops.export import export_inference
from fastsrnn.ops.frame_step import frame_step_cpu, frame_step_ref, torch_linear
from fastsrnn.ops.thresholds import CPU_STREAM_MAX_B

# Odd sizes: nothing a power of two or a multiple of a vector width.
SHAPE = dict(dim=37, q_levels=7, emb_size=5, n_rnn=3)
TIERS = {"2tier": (3,), "3tier": (3, 2), "4tier": (3, 2, 2)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}


def _model(frame_sizes, rnn="lstm", skip=True, seed=0, **over):
    cfg = SampleRNNConfig(frame_sizes=frame_sizes, rnn_type=rnn, skip=skip, **dict(SHAPE, **over))
    return random_model(cfg, seed=seed)


def _widened(x, w, b, scale=None):
    """torch_linear with bf16 weights widened exactly to fp32 and fp32 activations: the C++ kernel's
    product (torch_linear itself rounds x to bf16 for bf16 weights)."""
    return torch_linear(x, w.float() if w.dtype == torch.bfloat16 else w, b, scale=scale)


def _steps_close(model, w, k: int, B: int, n: int = 3, seed: int = 1, num_threads: int = 2):
    """n steps of tier k: frame_step_cpu against frame_step_ref (widened products) on the same
    weights, the returned output and the state updated in place."""
    tw, S, n_out, conditioned = tier_of(model.cfg, w, k)
    g = torch.Generator().manual_seed(seed)
    ref = model.frame_tiers[k].initial_state(B, "random", g)
    got = ref.clone()
    H = model.cfg.dim
    for t in range(n):
        window = torch.randint(0, model.cfg.q_levels, (B, S), generator=g)
        cond = None
        if conditioned:  # a strided view, as the backends pass it (a position of the tier above's output)
            cond = torch.randn(B, 2, H, generator=g)[:, t % 2]
        h_ptr = got.h.data_ptr()
        want = frame_step_ref(tw, window, ref, mm=_widened, cond=cond)
        out = frame_step_cpu(tw, window, got, num_threads, cond=cond)
        assert want.shape == (B, n_out, H) and got.h.data_ptr() == h_ptr
        close_rel(out, want, f"tier {k} output, step {t}")
        close_rel(got.h, ref.h, f"tier {k} h, step {t}")
        if ref.c is not None:
            close_rel(got.c, ref.c, f"tier {k} c, step {t}")


def _cases():
    for tiers in TIERS:
        for rnn in RNN_TYPES:
            for skip in (True, False):
                for dt in DTYPES:
                    yield pytest.param(tiers, rnn, skip, dt, id=f"{tiers}-{rnn}-{'skip' if skip else 'noskip'}-{dt}")


@pytest.mark.parametrize("tiers,rnn,skip,dt", list(_cases()))
def test_every_tier_matches_reference(tiers, rnn, skip, dt):
    """Each frame tier of the model: the bottom one (conditioned with more than 2 tiers), a
    conditioned upper one (4 tiers) and the top one (S_k samples in, frame_sizes[k] positions out)."""
    model = _model(TIERS[tiers], rnn, skip)
    w = export_inference(model, DTYPES[dt])
    assert all(t.up_w.dtype == DTYPES[dt] for t in [w, *w.upper])
    for k in range(len(TIERS[tiers])):
        _steps_close(model, w, k, B=3)


@pytest.mark.parametrize("B", [1, 5])
@pytest.mark.parametrize("num_threads", [1, 3])
def test_batch_and_threads(B, num_threads):
    model = _model(TIERS["3tier"], "gru", True, seed=3, dim=53)
    w = export_inference(model)
    for k in range(2):
        _steps_close(model, w, k, B, num_threads=num_threads)


def test_one_layer_tiers():
    model = _model(TIERS["4tier"], "lstm", False, seed=4, n_rnn=1)
    w = export_inference(model, torch.int8)
    for k in range(3):
        _steps_close(model, w, k, B=2)


def test_top_tier_shapes():
    """The top tier of frame_sizes (3, 2): a 6-sample frame in, 2 positions out, no cond."""
    model = _model(TIERS["3tier"])
    w = export_inference(model)
    top = w.upper[0]
    H = model.cfg.dim
    assert top.w_ih[0].shape == (4 * H, 6) and top.up_w.shape == (2 * H, H)
    assert w.w_ih[0].shape == (4 * H, H + 3) and w.up_w.shape == (3 * H, H)
    st = model.frame_tiers[1].initial_state(2)
    assert frame_step_cpu(top, torch.zeros(2, 6, dtype=torch.long), st, 2).shape == (2, 2, H)


# ---------------------------------------------------------------------------------------------
# Bad arguments


def test_bad_arguments():
    model = _model(TIERS["3tier"])
    w = export_inference(model)
    top = w.upper[0]
    H, B = model.cfg.dim, 2
    st = model.frame_rnn.initial_state(B)
    st_top = model.frame_tiers[1].initial_state(B)
    window, cond = torch.zeros(B, 3, dtype=torch.long), torch.zeros(B, H)
    frame_step_cpu(w, window, st.clone(), 2, cond=cond)  # the valid call
    with pytest.raises(ValueError, match=re.escape(f"frame_step: cond must have shape [{B}, {H}], got [{B}, {H - 1}]")):
        frame_step_cpu(w, window, st, 2, cond=cond[:, 1:])
    with pytest.raises(ValueError, match=re.escape(f"frame_step: cond must have shape [{B}, {H}], got [1, {H}]")):
        frame_step_cpu(w, window, st, 2, cond=cond[:1])
    with pytest.raises(TypeError, match=re.escape("frame_step: cond must be Float, got Double")):
        frame_step_cpu(w, window, st, 2, cond=cond.double())
    with pytest.raises(ValueError, match=re.escape(f"frame_step: layer 0's w_ih[0] has shape [{4 * H}, {H + 3}], "
                                                   "its input is 3 wide (a 3-sample frame)")):
        frame_step_cpu(w, window, st, 2)  # a conditioned tier without its cond
    with pytest.raises(ValueError, match=re.escape(f"its input is {H + 4} wide (a 4-sample frame and a "
                                                   f"conditioning of {H})")):
        frame_step_cpu(w, torch.zeros(B, 4, dtype=torch.long), st, 2, cond=cond)  # the wrong frame width
    with pytest.raises(ValueError, match=re.escape(f"its input is {H + 6} wide")):
        frame_step_cpu(top, torch.zeros(B, 6, dtype=torch.long), st_top, 2, cond=cond)  # the top tier takes none
    with pytest.raises(ValueError, match=re.escape("its input is 5 wide (a 5-sample frame)")):
        frame_step_cpu(top, torch.zeros(B, 5, dtype=torch.long), st_top, 2)
    # up_w rows not a multiple of H; an up_b of another n_out
    with pytest.raises(ValueError, match=re.escape(f"frame_step: up_w must be (n_out*H, H) with H = {H}, got shape "
                                                   f"[{2 * H - 1}, {H}]")):
        frame_step_cpu(type(top)(**{**top.__dict__, "up_w": top.up_w[1:].contiguous()}),
                       torch.zeros(B, 6, dtype=torch.long), st_top, 2)
    with pytest.raises(ValueError, match=re.escape(f"frame_step: up_b must have shape [{2 * H}], got [{3 * H}]")):
        frame_step_cpu(type(top)(**{**top.__dict__, "up_b": torch.zeros(3 * H)}), torch.zeros(B, 6, dtype=torch.long),
                       st_top, 2)


# ---------------------------------------------------------------------------------------------
# The backend


@pytest.mark.parametrize("tiers", ["3tier", "4tier"])
@pytest.mark.parametrize("frame_dtype", [torch.float32, torch.int8], ids=["fp32", "int8"])
def test_cpu_backend_runs_every_tier_in_cpp(monkeypatch, tiers, frame_dtype):
    """cpu generates what folded generates, and every tier step (the upper ones, the conditioned
    bottom one) went through the C++ frame step, never frame_step_ref."""
    model = _model(TIERS[tiers], "lstm", True, seed=5)
    cpu = make_backend("cpu", model, num_threads=2, frame_dtype=frame_dtype)
    folded = make_backend("folded", model, frame_dtype=frame_dtype)
    calls, ref_calls = [], []
    real_cpu, real_ref = cpu_mod.frame_step_cpu, cpu_mod.frame_step_ref
    monkeypatch.setattr(cpu_mod, "frame_step_cpu",
                        lambda w, window, rnn, nt=0, cond=None: (calls.append((w, window.shape[1], cond is not None)),
                                                                 real_cpu(w, window, rnn, nt, cond=cond))[1])
    monkeypatch.setattr(cpu_mod, "frame_step_ref", lambda *a, **k: (ref_calls.append(1), real_ref(*a, **k))[1])
    n_frames = 2 * model.cfg.lookback // model.cfg.frame_size  # the top tier steps twice
    generate_and_compare([folded, cpu], model, B=2, n_frames=n_frames)
    assert not ref_calls, "the cpu backend fell back to frame_step_ref"
    n_up = len(TIERS[tiers]) - 1
    bottom = [c for c in calls if c[0] is cpu.w]
    assert len(bottom) == n_frames and all(cond for _, _, cond in bottom), "the bottom tier must get its cond"
    for k, tw in enumerate(cpu.w.upper, start=1):
        mine = [c for c in calls if c[0] is tw]
        steps = n_frames * model.cfg.frame_size // model.cfg.tier_samples(k)  # one per S_k samples
        assert len(mine) == steps and all(c[1] == model.cfg.tier_samples(k) for c in mine), f"tier {k}"
        assert all(c[2] == (k < n_up) for c in mine), f"tier {k}: cond iff a tier above"


def test_cpu_backend_large_batch_takes_the_reference(monkeypatch):
    """Above the streaming batch the tiers take frame_step_ref with the op's products, cond included."""
    model = _model(TIERS["3tier"], "gru", False, seed=6)
    monkeypatch.setitem(CPU_STREAM_MAX_B, "fp32", 1)
    cpu = make_backend("cpu", model, num_threads=2)
    calls = []
    real_cpu = cpu_mod.frame_step_cpu
    monkeypatch.setattr(cpu_mod, "frame_step_cpu", lambda *a, **k: (calls.append(1), real_cpu(*a, **k))[1])
    generate_and_compare([make_backend("folded", model), cpu], model, B=2, n_frames=4)
    assert not calls

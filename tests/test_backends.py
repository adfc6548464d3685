"""Every generation backend against the eager model, and what dispatch says about each.

Backends: eager and folded (the torch ones), cpu, triton on the CPU interpreter (marked
``interpret``: run by ``TRITON_INTERPRET=1 python -m pytest -m interpret``), triton and cuda on a
GPU (skipped without one). Per backend:

- teacher forcing: step-by-step logits fed the true samples equal the parallel training forward
  (mamba's test_generation), written into views of one buffer, with the state (h, c, window);
- whole generations frame by frame against the eager model: the same integers (a mismatch only
  at a CDF near-tie), logits within fp32 tolerance, the same state;
- bf16 weights: the logits error against the fp32 model at most twice plain PyTorch's in the same
  precision (the folded backend on the same bf16 weights), flash-attention's rule;
- CUDA graphs on and off agree (GPU).
"""
from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from helpers import (
    HAS_CUDA,
    INTERPRETED,
    ODD,
    ON_GPU,
    forced_logits,
    fresh_pair,
    generate_and_compare,
    need_triton,
    random_model,
)

import fastsrnn.backends
from fastsrnn import SampleRNN, SampleRNNConfig
from fastsrnn.backends import _AUTO_ORDER, backend_status, make_backend, resolve_backend
from fastsrnn.backends.folded import FoldedBackend
from fastsrnn.config import RNN_TYPES
from fastsrnn.ops.sampling import Sampling


class Be(NamedTuple):
    id: str
    name: str  # for make_backend
    device: str
    opts: dict
    marks: tuple


BACKENDS = [
    Be("eager", "eager", "cpu", {}, ()),
    Be("folded", "folded", "cpu", {}, ()),
    Be("cpu", "cpu", "cpu", dict(num_threads=2), ()),
    Be("triton", "triton", "cpu", {}, INTERPRETED),
    Be("triton-gpu", "triton", "cuda", {}, ON_GPU),
    Be("cuda", "cuda", "cuda", {}, ON_GPU),
]


@pytest.fixture(autouse=True)
def no_tf32():
    """The eager oracle in true fp32 on a GPU: cuDNN's RNNs may otherwise use TF32 on Ampere and later."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _params(backends, cases):
    """(backend, *case) for each backend and each (id, *values) case it takes."""
    return [pytest.param(be, *case[1:], id=f"{be.id}-{case[0]}", marks=be.marks)
            for be in backends for case in (cases(be) if callable(cases) else cases)]


def _make(be: Be, model, **opts):
    if be.name == "triton" and be.device == "cpu":
        need_triton()
    return make_backend(be.name, model, be.device, **{**be.opts, **opts})


def test_every_backend_is_tested():
    assert set(fastsrnn.backends.BACKENDS) == {be.name for be in BACKENDS}


# ---------------------------------------------------------------------------------------------
# Teacher forcing


def _tf_cases(be):
    two = [(f"{rnn}-{'skip' if skip else 'noskip'}-B{B}", rnn, skip, B, (3,))
           for rnn in RNN_TYPES for skip in (True, False) for B in (1, 3)]
    three = [(f"3tier-{rnn}-{'skip' if skip else 'noskip'}-B3", rnn, skip, 3, (3, 2))
             for rnn in RNN_TYPES for skip in (True, False)]
    return two + three + [("4tier-lstm-skip-B2", "lstm", True, 2, (2, 3, 2))]


def assert_same_tiers(got, want, rtol=1e-4, atol=1e-5):
    """Every frame tier's h (and c) of two RNNStates."""
    assert len(got.upper) == len(want.upper)
    for a, b in zip(got.tiers(), want.tiers()):
        torch.testing.assert_close(a.h, b.h, rtol=rtol, atol=atol)
        if b.c is not None:
            torch.testing.assert_close(a.c, b.c, rtol=rtol, atol=atol)


@pytest.mark.parametrize("be,rnn,skip,B,frame_sizes", _params(BACKENDS, _tf_cases))
def test_teacher_forced_logits_match_parallel_forward(be, rnn, skip, B, frame_sizes):
    """The decisive model test: generation fed the true samples gives the training forward's
    logits, for 2, 3 and 4 tiers (the upper tiers stepping on their schedule)."""
    cfg = SampleRNNConfig(rnn_type=rnn, skip=skip, **{**ODD, "frame_size": frame_sizes[0]},
                          frame_sizes=frame_sizes)
    model = random_model(cfg).to(be.device)
    x = torch.randint(0, cfg.q_levels, (B, cfg.lookback * (6 if len(frame_sizes) == 1 else 4)),
                      generator=torch.Generator().manual_seed(B))
    x = x.to(be.device)
    with torch.no_grad():
        ref_logits, ref_state = model(x, model.initial_state(B))
    got, state = forced_logits(_make(be, model), model, x)
    torch.testing.assert_close(got, ref_logits, rtol=1e-4, atol=1e-4)
    assert_same_tiers(state.rnn, ref_state)


# ---------------------------------------------------------------------------------------------
# Whole generations against eager

SMALL_CFG = dict(frame_size=4, q_levels=32, dim=64, emb_size=8, n_rnn=2)  # B = 16 on the interpreter


def _gen_cases(be):
    interp = be.device == "cpu" and be.name == "triton"
    cases = [(f"odd-{rnn}-B{B}", "tiny", dict(ODD), rnn, B, 3 if interp else 4)
             for rnn in RNN_TYPES for B in (1, 3)]
    cases += [(f"odd-{rnn}-noskip-B3", "tiny", dict(ODD, skip=False), rnn, 3, 3 if interp else 4)
              for rnn in RNN_TYPES]
    cases += [("tiny-lstm-B3", "tiny", {}, "lstm", 3, 2 if interp else 4),
              ("small-gru-B16", "tiny", SMALL_CFG, "gru", 16, 2 if interp else 4),
              ("odd-3tier-gru-B3", "tiny-3tier", dict(ODD, frame_sizes=(3, 2)), "gru", 3, 5 if interp else 7),
              ("small-3tier-lstm-B16", "tiny-3tier", dict(SMALL_CFG, frame_sizes=(4, 2)), "lstm", 16,
               3 if interp else 5)]
    if be.device == "cuda":
        cases += [("tiny-gru-B5", "tiny", {}, "gru", 5, 4), ("tiny-lstm-B64", "tiny", {}, "lstm", 64, 4),
                  ("dadabots-2tier-lstm-B2", "dadabots-2tier", {}, "lstm", 2, 4),
                  ("tiny-3tier-lstm-B64", "tiny-3tier", {}, "lstm", 64, 9),
                  ("samplernn-pytorch-3tier-B2", "samplernn-pytorch-3tier", {}, "gru", 2, 5)]
    return cases


@pytest.mark.parametrize("be,preset,over,rnn,B,n_frames", _params(BACKENDS[1:], _gen_cases))
def test_generation_matches_eager(be, preset, over, rnn, B, n_frames):
    """Frame by frame against the eager model on the same device: same integers, logits within
    fp32 tolerance, and the same state (window, h, c) at the end."""
    cfg = SampleRNNConfig.from_name(preset, rnn_type=rnn, **over)
    model = random_model(cfg, scale=0.1 if preset == "tiny" else 0.0).to(be.device)  # the paper's: as initialized
    eager = make_backend("eager", model, be.device)
    states = generate_and_compare([eager, _make(be, model)], model, B, n_frames)
    assert torch.equal(states[0].window, states[1].window)
    assert_same_tiers(states[1].rnn, states[0].rnn, atol=1e-4)
    if cfg.n_tiers > 2:
        assert states[1].phase == states[0].phase == n_frames % (cfg.lookback // cfg.frame_size)
        assert torch.equal(states[1].history, states[0].history)


class _FoldedView(FoldedBackend):
    """The folded backend on another backend's exported weights (no second export)."""

    def __init__(self, other):
        self.w, self.cfg, self.device = other.w, other.cfg, other.device


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cpu_dadabots_preset_matches_folded(dtype):
    """The paper's shapes (F16 Q256 H1024, 5 x LSTM) at B = 1 and 2 threads: the cpu backend
    against the folded backend on the same exported weights."""
    torch.manual_seed(0)
    model = SampleRNN(SampleRNNConfig.from_name("dadabots-2tier")).eval()
    cpu = make_backend("cpu", model, dtype=dtype, num_threads=2)
    states = generate_and_compare([_FoldedView(cpu), cpu], model, 1, 2)
    torch.testing.assert_close(states[1].rnn.c, states[0].rnn.c)


# ---------------------------------------------------------------------------------------------
# Precision and batch paths


def _precision_cases(be):
    if be.name == "cpu":  # large batches hand the frame step to torch's BLAS; bf16 changes it again
        return [("fp32-B129-torch-frame-step", torch.float32, 129), ("bf16-B3-fused-frame-step", torch.bfloat16, 3),
                ("bf16-B6-torch-frame-step", torch.bfloat16, 6)]
    return [("bf16-B3", torch.bfloat16, 3)] + ([("bf16-B32", torch.bfloat16, 32)] if be.device == "cuda" else [])


@pytest.mark.parametrize("preset", ["tiny", "tiny-3tier"])
@pytest.mark.parametrize("be,dtype,B", _params(BACKENDS[2:], _precision_cases))
def test_error_at_most_twice_plain_pytorch(be, dtype, B, preset):
    """Teacher-forced logits against the fp32 model: the backend's error at most twice the folded
    backend's on the same weights in the same precision (plain PyTorch); 2 and 3 tiers."""
    cfg = SampleRNNConfig.from_name(preset, n_rnn=3)
    model = random_model(cfg, seed=5).to(be.device)
    n = 4 if cfg.n_tiers == 2 else 2 * cfg.lookback // cfg.frame_size  # frames: 2 top steps with 3 tiers
    x = torch.randint(0, cfg.q_levels, (B, cfg.frame_size * n), generator=torch.Generator().manual_seed(0))
    x = x.to(be.device)
    with torch.no_grad():
        exact = model(x, model.initial_state(B))[0]
    opts = dict(dtype=dtype, frame_dtype=dtype)
    err, err_plain = ((forced_logits(b, model, x)[0] - exact).abs().max().item()
                      for b in (_make(be, model, **opts), make_backend("folded", model, be.device, **opts)))
    assert err <= 2 * err_plain + 1e-6, f"{be.id} error {err:.2e} vs plain PyTorch's {err_plain:.2e}"
    if dtype == torch.bfloat16:
        assert err > 0, "bf16 weights made no difference: were they used?"


# ---------------------------------------------------------------------------------------------
# (id, preset, config overrides, B, top_k, top_p): top-k and top-p on a whole generation
_CUT_CASES = [("odd-k3", "tiny", dict(ODD), 3, 3, 1.0), ("odd-k4-p0.7", "tiny", dict(ODD), 3, 4, 0.7),
              ("tiny-p0.9", "tiny", {}, 2, 0, 0.9), ("tiny-k20-p0.95", "tiny", {}, 2, 20, 0.95),
              ("small-k8-p0.8-B16", "tiny", SMALL_CFG, 16, 8, 0.8)]


@pytest.mark.parametrize("be,preset,over,B,top_k,top_p", _params(BACKENDS[1:], _CUT_CASES))
def test_cut_offs_match_eager(be, preset, over, B, top_k, top_p):
    """top-k and top-p through each backend (graphs included on a GPU): eager's integers, frame by
    frame, and the same state at the end."""
    model = random_model(SampleRNNConfig.from_name(preset, **over)).to(be.device)
    eager = make_backend("eager", model, be.device)
    n = 2 if be.name == "triton" and be.device == "cpu" else 4
    states = generate_and_compare([eager, _make(be, model)], model, B, n, top_k=top_k, top_p=top_p)
    assert torch.equal(states[0].window, states[1].window)


# CUDA graphs


@pytest.mark.parametrize("preset", ["tiny", "tiny-3tier"])
@pytest.mark.parametrize("be", [pytest.param(be, id=be.id, marks=be.marks) for be in BACKENDS if be.device == "cuda"])
def test_graphs_on_and_off_agree(be, preset):
    """Graph replay (including a second state object, a second capture) equals plain launches;
    3 tiers: one-frame replays at every phase of the top tier."""
    model = random_model(SampleRNNConfig.from_name(preset)).cuda()
    on, off = _make(be, model, graphs=True), _make(be, model, graphs=False)
    assert on.graphs and not off.graphs
    for B in (1, 3):
        states = generate_and_compare([off, on], model, B, 9, seed=B)
        assert torch.equal(states[0].window, states[1].window) and states[0].phase == states[1].phase
        # a Sampling with cut-offs is another capture (its fields are kernel arguments by value)
        states = generate_and_compare([off, on], model, B, 9, seed=B, top_k=5, top_p=0.9)
        assert torch.equal(states[0].window, states[1].window) and states[0].phase == states[1].phase
        assert_same_tiers(states[1].rnn, states[0].rnn, rtol=1e-6, atol=1e-6)
    assert on.graphs, "capture failed and fell back to plain launches"


@pytest.mark.parametrize("be", [pytest.param(be, id=be.id, marks=be.marks) for be in BACKENDS if be.device == "cuda"])
def test_graphed_chunks_of_a_3tier_model_equal_plain_launches(be):
    """Generation's many-frame replays (frames_per_graph frames, a whole number of top steps)
    from phases 0 and 1, against plain launches frame by frame."""
    model = random_model(SampleRNNConfig.from_name("tiny-3tier")).cuda()
    on, off = _make(be, model, graphs=True), _make(be, model, graphs=False)
    a, b, u, s = fresh_pair(model, 3, 37)
    got = torch.cat([on.step_frames(a, u[:1], s), on.step_frames(a, u[1:], s)], dim=1)
    want = off.step_frames(b, u, s)
    assert torch.equal(got, want) and a.phase == b.phase
    assert_same_tiers(a.rnn, b.rnn, rtol=1e-6, atol=1e-6)
    assert on.graphs


# ---------------------------------------------------------------------------------------------
# Dispatch and availability messages


def test_cpu_dispatch_and_status():
    from fastsrnn.backends.cpu import CpuBackend

    assert resolve_backend("auto", "cpu") == "cpu"
    ok, why = backend_status("cpu", "cpu")
    assert ok and "fused C++ kernel" in why
    ok, why = CpuBackend.is_available(torch.device("cuda"))
    assert not ok and "CPU only" in why


def test_cuda_status_on_cpu():
    ok, why = backend_status("cuda", "cpu")
    assert not ok and "CUDA devices only" in why


def test_ref_is_an_alias_of_folded():
    model = random_model(SampleRNNConfig(**ODD))
    with pytest.warns(DeprecationWarning, match="'ref' is now called 'folded'"):
        be = make_backend("ref", model)
    assert type(be) is FoldedBackend
    assert backend_status("nonsense", "cpu") == (False, "unknown backend 'nonsense'; choose one of "
                                                 f"{('auto',) + fastsrnn.backends.BACKENDS}")


def test_triton_needs_cuda_or_the_interpreter(monkeypatch):
    """Without TRITON_INTERPRET=1 the CPU is refused with the reason, and auto never picks triton there."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ok, why = backend_status("triton", "cpu")
    assert not ok and (("needs a CUDA device" in why and "TRITON_INTERPRET=1" in why) or "not installed" in why)
    assert "triton" not in _AUTO_ORDER["cpu"]  # auto on a CPU never picks the interpreter
    assert resolve_backend("auto", "cpu", n_seq=128) == resolve_backend("auto", "cpu")
    from fastsrnn.backends.triton import TritonBackend

    with pytest.raises(RuntimeError, match="triton backend unavailable"):
        TritonBackend(random_model(SampleRNNConfig(**ODD)), "cpu")


@pytest.mark.interpret
def test_triton_status_under_the_interpreter():
    from fastsrnn.backends.triton import TritonBackend

    need_triton()  # the kernel runs interpreted, as this process asked
    ok, why = backend_status("triton", "cpu")
    assert ok and "interpreter" in why
    model = random_model(SampleRNNConfig(**ODD))
    with pytest.raises(ValueError, match="graphs=True but CUDA graphs need a CUDA device"):
        TritonBackend(model, "cpu", graphs=True)
    assert TritonBackend(model, "cpu").graphs is False


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_auto_picks_a_gpu_backend():
    assert resolve_backend("auto", "cuda") in ("cuda", "triton")
    # many sequences: the Triton split sample tier first, when it is available
    if backend_status("triton", "cuda")[0]:
        assert resolve_backend("auto", "cuda", n_seq=128) == "triton"


def test_auto_follows_the_measured_gpu_crossover(monkeypatch):
    """With every backend available, auto on a GPU takes the CUDA kernel up to 64 sequences in
    fp32 and 32 in bf16 (the H100 sweep in BENCHMARKS.md), the Triton backend from there."""
    import fastsrnn.backends as backends

    monkeypatch.setattr(backends, "backend_status", lambda name, device: (True, ""))
    for n_seq, dtype, want in [(None, None, "cuda"), (1, None, "cuda"), (64, None, "cuda"), (65, None, "triton"),
                               (128, torch.float32, "triton"), (32, torch.bfloat16, "cuda"),
                               (33, torch.bfloat16, "triton"), (64, torch.float32, "cuda")]:
        assert resolve_backend("auto", "cuda", n_seq, dtype) == want, (n_seq, dtype)
    assert resolve_backend("auto", "cpu", 128, torch.bfloat16) == "cpu"


def test_kernel_backend_checks_each_new_state_and_every_forced_frame():
    """The cpu backend checks a state's first frame fully, then trusts the window its kernel wrote,
    but a new state (or new shapes) and every teacher-forced frame are checked again."""
    cfg = SampleRNNConfig(**ODD)
    model = random_model(cfg)
    be = make_backend("cpu", model, "cpu")
    state = fastsrnn.Generator(model, 2, backend="eager", device="cpu").state
    u, inv = torch.rand(2, cfg.frame_size), Sampling(torch.ones(2))
    be.step_frame(state, u, inv)
    be.step_frame(state, u, inv)
    bad = state.clone()
    bad.window.fill_(cfg.q_levels + 3)
    with pytest.raises(ValueError, match="window holds samples outside"):
        be.step_frame(bad, u, inv)
    with pytest.raises(ValueError, match="window holds samples outside"):  # a failed check is not remembered
        be.step_frame(bad, u, inv)
    with pytest.raises(ValueError, match="forced holds samples outside"):
        be.step_frame(state, u, inv, forced=torch.full_like(state.window, -1))

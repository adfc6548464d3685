"""The fused frame tier (kernels/frame_step.py, launched by ops.frame_step.frame_step_triton) against
its specification frame_step_ref.

- `interpret` tests (TRITON_INTERPRET=1 python -m pytest -m interpret tests): the kernels on the
  CPU through Triton's interpreter at odd shapes (F 3, H 100), LSTM and GRU, skip on and off,
  B 1, 3 and 16 (both product forms), 1 and 3 layers: fp32 within ~1e-5 of the reference, bf16
  weights within twice the reference's own bf16 error (against fp32);
- in the plain process: every kernel variant the launcher would start at the dadabots-2tier
  shapes (H 1024, F 16, 5 layers, skip) for B 1, 16, 128, fp32 and bf16 weights, compiled for
  sm_90 and sm_80 without a GPU (no spills, shared memory within the SM's limit); and the op count
  of one frame step (torch ops + Triton launches) against the target of 15.
"""

import pytest
import torch
from helpers import close_rel, compile_problems, frame_step_kernels, random_model, record_launches
from torch.utils._python_dispatch import TorchDispatchMode

from fastsrnn import SampleRNNConfig
from fastsrnn.backends.fused_frame import FusedFrameBackend
from fastsrnn.config import RNN_TYPES
from fastsrnn.model import RNNState
from fastsrnn.ops.export import InferenceWeights, export_inference
from fastsrnn.ops.frame_step import FusedFrameWeights, frame_step_ref, frame_step_triton

ODD = dict(frame_size=3, dim=100, q_levels=7, emb_size=5)
MAX_OPS = 15  # torch ops + Triton launches of one frame step (issue 9)


def _setup(rnn: str, skip: bool, B: int, L: int, seed: int = 0, **shape):
    cfg = SampleRNNConfig(rnn_type=rnn, skip=skip, n_rnn=L, **dict(ODD, **shape))
    model = random_model(cfg, seed=seed)
    state = model.frame_rnn.initial_state(B, "random", torch.Generator().manual_seed(seed + 2))
    return cfg, export_inference(model), state


def _windows(cfg, B: int, n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, cfg.q_levels, (B, cfg.frame_size), generator=g) for _ in range(n)]


def _cases():
    for rnn in RNN_TYPES:
        for skip in (True, False):
            for B in (1, 3, 16):
                for L in (1, 3):
                    yield pytest.param(rnn, skip, B, L, id=f"{rnn}-{'skip' if skip else 'noskip'}-B{B}-L{L}")


@pytest.mark.interpret
@pytest.mark.parametrize("rnn,skip,B,L", list(_cases()))
def test_fp32_matches_reference(rnn, skip, B, L):
    """Two frames: cond and the updated h, c within ~1e-5 relative of frame_step_ref."""
    frame_step_kernels()
    cfg, w, ref = _setup(rnn, skip, B, L)
    _two_frames_close(cfg, w, FusedFrameWeights.from_inference(w), ref, ref.clone(), B, rnn)


def _two_frames_close(cfg, w, fw, ref, got, B, rnn):
    """Two frames of frame_step_ref on ``ref`` and frame_step_triton on ``got``: cond, h, c close."""
    for t, window in enumerate(_windows(cfg, B, 2)):
        want = frame_step_ref(w, window, ref)
        cond = frame_step_triton(fw, window, got)
        close_rel(cond, want, f"cond, frame {t}")
        close_rel(got.h, ref.h, f"h, frame {t}")
        if rnn == "lstm":
            close_rel(got.c, ref.c, f"c, frame {t}")


@pytest.mark.interpret
@pytest.mark.parametrize("rnn", ["lstm", "gru"])
@pytest.mark.parametrize("B", [1, 16])
def test_aligned_shapes_and_strided_state(rnn, B):
    """F 16, H 32: the launches take the aligned, no-partial-tile variants (ALIGNED, EVEN); the
    state is a strided view (h, c as (B, L, H) buffers transposed), updated in place."""
    k = frame_step_kernels()
    cfg, w, ref = _setup(rnn, True, B, 3, frame_size=16, dim=32)
    fw = FusedFrameWeights.from_inference(w)

    def strided(t):  # (L, B, H) values in a (B, L, H) buffer
        if t is None:
            return None
        return torch.empty(t.shape[1], t.shape[0], t.shape[2]).copy_(t.transpose(0, 1)).transpose(0, 1)

    got = RNNState(strided(ref.h), strided(ref.c))
    assert not got.h.is_contiguous() or B == 1
    calls, launch = [], k.launch
    k.launch = lambda kern, grid, *a, **kw: (calls.append(kw), launch(kern, grid, *a, **kw))
    try:
        _two_frames_close(cfg, w, fw, ref, got, B, rnn)
    finally:
        k.launch = launch
    assert calls and all(kw["EVEN"] and kw["ALIGNED"] for kw in calls)


@pytest.mark.interpret
@pytest.mark.parametrize("rnn", ["lstm", "gru"])
@pytest.mark.parametrize("B", [1, 16])
def test_bf16_within_twice_reference_error(rnn, B):
    """bf16 frame weights: the kernel's error against the fp32 reference is at most twice the
    error of frame_step_ref on the same bf16 weights (three frames, every output)."""
    frame_step_kernels()
    cfg, w32, s32 = _setup(rnn, True, B, 3)
    w16 = w32.to(frame_dtype=torch.bfloat16)
    fw = FusedFrameWeights.from_inference(w16)
    s16, sk = s32.clone(), s32.clone()
    for t, window in enumerate(_windows(cfg, B, 3)):
        exact = frame_step_ref(w32, window, s32)
        ref = frame_step_ref(w16, window, s16)
        got = frame_step_triton(fw, window, sk).clone()
        pairs = [("cond", got, ref, exact), ("h", sk.h, s16.h, s32.h)]
        if rnn == "lstm":
            pairs.append(("c", sk.c, s16.c, s32.c))
        for name, g, r, e in pairs:
            err_k, err_r = (g - e).abs().max().item(), (r - e).abs().max().item()
            assert err_r > 0, "bf16 weights should differ from fp32 ones"
            assert err_k <= 2 * err_r, f"{name}, frame {t}: kernel error {err_k:.3g} > 2 x reference's {err_r:.3g}"


def test_folded_backend_on_cpu_is_the_reference():
    """The folded backend on the CPU keeps the eager frame step, bit for bit."""
    from fastsrnn.backends import make_backend

    cfg, w, st = _setup("lstm", True, 3, 3)
    model = random_model(cfg)
    backend = make_backend("folded", model)
    from fastsrnn.backends.base import DecodeState

    window = _windows(cfg, 3, 1)[0]
    a, b = st.clone(), st.clone()
    got = backend.frame_step(DecodeState(a, window.clone()))
    want = frame_step_ref(backend.w, window, b)
    assert torch.equal(got, want) and torch.equal(a.h, b.h) and torch.equal(a.c, b.c)


def test_int8_frame_weights_take_the_reference_step():
    """int8 frame weights have no Triton kernel: FusedFrameWeights refuses them, and the folded
    backend (on any device) runs frame_step_ref, which dequantizes them."""
    from fastsrnn.backends.base import DecodeState

    cfg, w, st = _setup("gru", True, 3, 3)
    with pytest.raises(TypeError, match="all float32 or all bfloat16"):
        FusedFrameWeights.from_inference(w.to(frame_dtype=torch.int8))
    backend = FusedFrameBackend(random_model(cfg), "cpu", frame_dtype=torch.int8)
    window = _windows(cfg, 3, 1)[0]
    a, b = st.clone(), st.clone()
    got = backend.frame_step(DecodeState(a, window.clone()))
    assert backend.w.int8 and backend.__dict__.get("_fused_frame") is None
    assert torch.equal(got, frame_step_ref(backend.w, window, b)) and torch.equal(a.h, b.h)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("rnn", ["lstm", "gru"])
@pytest.mark.parametrize("B", [1, 3, 16, 128])
@pytest.mark.parametrize("frame_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_frame_backend_on_gpu_uses_the_kernels(rnn, B, frame_dtype):
    """On a CUDA device FusedFrameBackend.frame_step (the triton and cuda backends') runs the
    fused kernels (fp32: ~1e-5 of the reference; bf16: within twice the reference's bf16 error
    against fp32)."""
    from fastsrnn.backends.base import DecodeState

    cfg = SampleRNNConfig(rnn_type=rnn, dim=256, n_rnn=3)
    model = random_model(cfg).cuda()
    backend = FusedFrameBackend(model, "cuda", frame_dtype=frame_dtype)
    exact = export_inference(model).to("cuda")
    st = model.frame_rnn.initial_state(B, "random", torch.Generator().manual_seed(2))
    st = RNNState(st.h.cuda(), None if st.c is None else st.c.cuda())
    s_ref, s_exact, s_k = st.clone(), st.clone(), st.clone()
    for window in _windows(cfg, B, 3):
        window = window.cuda()
        got = backend.frame_step(DecodeState(s_k, window)).clone()
        ref = frame_step_ref(backend.w, window, s_ref)
        if frame_dtype == torch.float32:
            close_rel(got, ref, "cond")
            close_rel(s_k.h, s_ref.h, "h")
        else:
            e = frame_step_ref(exact, window, s_exact)
            assert (got - e).abs().max() <= 2 * (ref - e).abs().max()
            assert (s_k.h - s_exact.h).abs().max() <= 2 * (s_ref.h - s_exact.h).abs().max()
    assert backend.__dict__.get("_fused_frame") is not None, "the CUDA frame step did not take the kernels"


# ---------------------------------------------------------------------------------------------
# Launches recorded without running them (meta tensors: no memory, no device)

def _meta_weights(cfg: SampleRNNConfig, dtype: torch.dtype, device="meta") -> InferenceWeights:
    F, H, L, G, Q = cfg.frame_size, cfg.dim, cfg.n_rnn, cfg.gates, cfg.q_levels
    skip = cfg.skip and L > 1
    m = lambda *s: torch.zeros(*s, dtype=dtype, device=device)  # noqa: E731
    f = lambda *s: torch.zeros(*s, device=device)  # noqa: E731
    ins = [F] + [H + F if skip else H] * (L - 1)
    return InferenceWeights(
        cfg=cfg, w_ih=[m(G * H, i) for i in ins], w_hh=[m(G * H, H) for _ in ins], b_ih=[f(G * H) for _ in ins],
        b_hh=[f(G * H) for _ in ins], h0=f(L, 1, H), c0=f(L, 1, H) if G == 4 else None,
        skip_w=[m(H, H) for _ in range(L if skip else 0)], skip_b=f(H) if skip else None,
        up_w=m(F * H, H), up_b=f(F * H), table=f(F, Q, H), w3=f(H, H), b3=f(H), wo=f(Q, H), bo=f(Q))


def _record(cfg, B: int, dtype, run: bool = False, device="meta", counter=None):
    """The launches (kernel, grid, args, kwargs) of a frame step; run=False: launched nothing."""
    k = frame_step_kernels()
    fw = FusedFrameWeights.from_inference(_meta_weights(cfg, dtype, device))
    L, H = cfg.n_rnn, cfg.dim
    z = lambda: torch.zeros(L, B, H, device=device)  # noqa: E731
    state = RNNState(z(), z() if cfg.gates == 4 else None)
    window = torch.zeros(B, cfg.frame_size, dtype=torch.int64, device=device)
    calls, restore = record_launches(k, run)
    try:
        frame_step_triton(fw, window, state)  # buffers allocated here
        calls.clear()
        if counter is None:
            frame_step_triton(fw, window, state)
        else:
            with counter:
                frame_step_triton(fw, window, state)
    finally:
        restore()
    return calls


def _compile_cases():
    cases = [("dadabots-2tier", B, dt) for B in (1, 16, 128) for dt in ("fp32", "bf16")]
    return cases + [("dadabots-2tier-gru", 1, "bf16"), ("dadabots-2tier-gru", 128, "bf16")]


@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("preset,B,wdt", _compile_cases())
def test_kernels_compile_for_gpu(preset, B, wdt, arch):
    """Every launch of a frame step at the preset's shapes, with the launcher's tiles and warps,
    through Triton's whole compiler for sm_<arch>: no spills, shared memory within the limit."""
    k = frame_step_kernels()
    if type(k._layer_kernel).__name__ == "InterpretedFunction":
        pytest.skip("this process runs Triton's interpreter (TRITON_INTERPRET=1)")
    cfg = SampleRNNConfig.from_name(preset)
    calls = _record(cfg, B, torch.bfloat16 if wdt == "bf16" else torch.float32)
    assert len(calls) == cfg.n_rnn + (2 if cfg.skip else 1)
    problems = compile_problems(calls, arch, f"{preset} B={B} {wdt}", set())
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# Ops per frame

class _OpCounter(TorchDispatchMode):
    """Every torch op dispatched while active (views included, listed apart)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))

    def counts(self):
        views = sum(1 for f in self.ops if f.is_view)
        return len(self.ops), len(self.ops) - views


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
@pytest.mark.parametrize("wdt", ["fp32", "bf16"])
def test_frame_step_op_count(rnn, wdt):
    """One frame step of a dadabots-2tier-shaped tier (5 layers, skip; H 64: the counts do not
    depend on H): torch ops + Triton launches of the fused path <= 15. The launches are counted,
    not run (CPU tensors, any Triton mode); the eager frame_step_ref's count is printed."""
    dtype = torch.bfloat16 if wdt == "bf16" else torch.float32
    cfg = SampleRNNConfig(rnn_type=rnn, dim=64, frame_size=16, n_rnn=5, skip=True)
    counter = _OpCounter()
    calls = _record(cfg, 3, dtype, device="cpu", counter=counter)
    ops, kernels = counter.counts()
    fused = ops + len(calls)

    w = _meta_weights(cfg, dtype, "cpu")
    state = RNNState(torch.zeros(5, 3, 64), torch.zeros(5, 3, 64) if rnn == "lstm" else None)
    old = _OpCounter()
    with old:
        frame_step_ref(w, torch.zeros(3, 16, dtype=torch.int64), state)
    old_ops, old_kernels = old.counts()
    print(f"\nframe step, {rnn} {wdt}: eager frame_step_ref {old_ops} torch ops ({old_kernels} not views); "
          f"fused {len(calls)} Triton launches + {ops} torch ops ({kernels} not views)")
    assert len(calls) == cfg.n_rnn + 2
    assert fused <= MAX_OPS, f"fused frame step issues {fused} ops (> {MAX_OPS}): {counter.ops}"
    assert fused < old_kernels

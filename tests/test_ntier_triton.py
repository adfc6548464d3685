"""The fused Triton frame step (kernels/frame_step.py, launched by ops.frame_step.frame_step_triton)
on every frame tier of an n-tier model, against its specification frame_step_ref.

Tier k of a model with frame_sizes (F, r_1, ..., r_n): a window of S_k = cfg.tier_samples(k)
samples; conditioned (layer 0 reads [cond (H), x_in (S_k)]) below the top; n_out = F for the
bottom tier, r_k above (n_out != S_k).

- `interpret` tests (TRITON_INTERPRET=1 python -m pytest -m interpret tests): the kernels on the
  CPU through Triton's interpreter at small odd shapes: a conditioned bottom tier, a conditioned
  middle tier and the top tier, LSTM and GRU, skip on and off, both product forms (B 1 and 16);
  a frame wider than one x_in tile (XIN_LOOP); aligned shapes with strided views; bf16 weights;
  the folded backend stepping every tier through the kernels;
- in the plain process (no GPU): bad inputs (refused before any launch) and every kernel variant
  of the 3-tier presets' tiers compiled for sm_90 and sm_80 (no spills, shared memory in limits);
- `gpu` tests: the same comparisons on a CUDA device with fp32 and bf16 frame weights, and the
  folded backend on CUDA running every tier through the kernels (int8: the reference).
"""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from helpers import close_rel, compile_problems, frame_step_kernels, random_model, record_launches, tier_of

from fastsrnn import SampleRNNConfig
from fastsrnn.backends.fused_frame import FusedFrameBackend
from fastsrnn.config import RNN_TYPES
from fastsrnn.model import RNNState
from fastsrnn.ops.export import export_inference
from fastsrnn.ops.frame_step import FusedFrameWeights, frame_step_ref, frame_step_triton
from fastsrnn.ops.sampling import Sampling

# 4 tiers: bottom F 3 (conditioned, n_out 3); tier 1: S 6, n_out 2 (conditioned); top: S 18, n_out 3.
NTIER = dict(frame_sizes=(3, 2, 3), dim=23, q_levels=7, emb_size=5)
TIERS = {0: "bottom", 1: "middle", 2: "top"}


def _model(rnn: str = "lstm", skip: bool = True, L: int = 2, seed: int = 0, **over):
    cfg = SampleRNNConfig(rnn_type=rnn, skip=skip, n_rnn=L, **dict(NTIER, **over))
    return cfg, random_model(cfg, seed=seed)


def _states(model, B: int, seed: int = 2):
    """Every tier's random state (RNNState per tier, bottom first), on the model's device."""
    return model.initial_state(B, "random", torch.Generator().manual_seed(seed)).tiers()


def _inputs(cfg, B: int, S: int, conditioned: bool, n: int, seed: int = 1, device="cpu"):
    """n steps' (window, cond) as the n-tier schedule gives them (fastsrnn/backends/tiers.py):
    the window a column slice of a longer history (row stride > S), cond (B, H) a view of one
    position of a (B, r, H) output (row stride r*H), None for the top tier."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        hist = torch.randint(0, cfg.q_levels, (B, S + 5), generator=g)
        cond = torch.randn(B, 3, cfg.dim, generator=g)[:, 1] if conditioned else None
        out.append((hist.to(device)[:, 2:2 + S], None if cond is None else cond.to(device)))
    return out


def _steps_close(w, fw, ref: RNNState, got: RNNState, inputs, n_out: int, what: str):
    """frame_step_ref on ``ref`` and frame_step_triton on ``got``, step by step: the output
    (B, n_out, H) and the in-place updated h, c close."""
    for t, (window, cond) in enumerate(inputs):
        want = frame_step_ref(w, window, ref, cond=cond)
        out = frame_step_triton(fw, window, got, cond)
        assert out.shape == (window.shape[0], n_out, w.cfg.dim) == want.shape
        close_rel(out, want, f"{what}: output, step {t}")
        close_rel(got.h, ref.h, f"{what}: h, step {t}")
        if ref.c is not None:
            close_rel(got.c, ref.c, f"{what}: c, step {t}")


def _bf16_within_twice(w32, states, inputs, device, what: str):
    """bf16 frame weights: the kernel's error against the fp32 reference at most twice the
    error of frame_step_ref on the same bf16 weights (every step, every output)."""
    w16 = w32.to(device, frame_dtype=torch.bfloat16)
    w32 = w32.to(device)
    fw = FusedFrameWeights.from_inference(w16)
    s32 = RNNState(states.h.to(device), None if states.c is None else states.c.to(device))
    s16, sk = s32.clone(), s32.clone()
    for t, (window, cond) in enumerate(inputs):
        exact = frame_step_ref(w32, window, s32, cond=cond)
        ref = frame_step_ref(w16, window, s16, cond=cond)
        got = frame_step_triton(fw, window, sk, cond).clone()
        pairs = [("output", got, ref, exact), ("h", sk.h, s16.h, s32.h)]
        if s32.c is not None:
            pairs.append(("c", sk.c, s16.c, s32.c))
        for name, g, r, e in pairs:
            err_k, err_r = (g - e).abs().max().item(), (r - e).abs().max().item()
            assert err_r > 0, "bf16 weights should differ from fp32 ones"
            assert err_k <= 2 * err_r, (f"{what}: {name}, step {t}: kernel error {err_k:.3g} "
                                        f"> 2 x reference's {err_r:.3g}")


def _cases():
    for rnn in RNN_TYPES:
        for skip in (True, False):
            for k in TIERS:
                for B in (1, 16):
                    yield pytest.param(rnn, skip, k, B, id=f"{rnn}-{'skip' if skip else 'noskip'}-{TIERS[k]}-B{B}")


# ---------------------------------------------------------------------------------------------
# The interpreter (CPU)

@pytest.mark.interpret
@pytest.mark.parametrize("rnn,skip,k,B", list(_cases()))
def test_tier_matches_reference(rnn, skip, k, B):
    """Tier k of a 4-tier model (H 23, 2 layers): two steps, the output and h, c within ~1e-5
    relative of frame_step_ref; the output has n_out positions (not S_k)."""
    kmod = frame_step_kernels()
    cfg, model = _model(rnn, skip)
    w, S, n_out, conditioned = tier_of(cfg, export_inference(model), k)
    assert n_out != S or k == 0
    ref = _states(model, B)[k]
    calls, restore = record_launches(kmod)
    try:
        _steps_close(w, FusedFrameWeights.from_inference(w), ref, ref.clone(), _inputs(cfg, B, S, conditioned, 2),
                     n_out, TIERS[k])
    finally:
        restore()
    layers = [kw for kern, _, _, kw in calls if kern is kmod._layer_kernel]
    L = cfg.n_rnn
    assert len(calls) == 2 * (L + (2 if skip else 1)), "a step is L + 2 launches (L + 1 without skip)"
    assert [kw["HAS_X"] for kw in layers[:L]] == [conditioned] + [True] * (L - 1)
    assert all(kw["XIN_LOOP"] == (S > kw["BLOCK_F"]) for kw in layers)  # the top tier at B 16 (BLOCK_F 16) loops


@pytest.mark.interpret
@pytest.mark.parametrize("rnn", ["lstm", "gru"])
@pytest.mark.parametrize("B", [5, 16])
def test_wide_frame_loops_over_tiles(rnn, B):
    """A top tier whose frame (S 70) is wider than one x_in tile (BLOCK_F = BLOCK_K: 64 at B 5,
    16 at B 16, fp32): the layer kernels loop over the frame (XIN_LOOP); the conditioned bottom
    tier of the same model (F 5) does not. Both against frame_step_ref."""
    kmod = frame_step_kernels()
    cfg, model = _model(rnn, True, 2, frame_sizes=(5, 14), dim=20)
    w = export_inference(model)
    states = _states(model, B)
    for k in (0, 1):
        tw, S, n_out, conditioned = tier_of(cfg, w, k)
        calls, restore = record_launches(kmod)
        try:
            _steps_close(tw, FusedFrameWeights.from_inference(tw), states[k], states[k].clone(),
                         _inputs(cfg, B, S, conditioned, 2), n_out, TIERS[2 * k])
        finally:
            restore()
        loops = {kw["XIN_LOOP"] for kern, _, _, kw in calls if kern is kmod._layer_kernel}
        assert loops == {k == 1}, f"tier {k} (S {S}): XIN_LOOP {loops}"


@pytest.mark.interpret
@pytest.mark.parametrize("rnn", ["lstm", "gru"])
@pytest.mark.parametrize("B", [1, 16])
def test_aligned_shapes_and_strided_views(rnn, B):
    """F 16, S 64, H 32: every launch of both tiers takes the aligned, no-partial-tile variants
    (ALIGNED, EVEN), with cond a view of the (B, 4, H) upper output, the window a slice of the
    history and h, c strided views (B, L, H buffers transposed), updated in place."""
    kmod = frame_step_kernels()
    cfg, model = _model(rnn, True, 3, frame_sizes=(16, 4), dim=32)
    w = export_inference(model)

    def strided(t):  # (L, B, H) values in a (B, L, H) buffer
        if t is None:
            return None
        return torch.empty(t.shape[1], t.shape[0], t.shape[2]).copy_(t.transpose(0, 1)).transpose(0, 1)

    for k, ref in enumerate(_states(model, B)):
        tw, S, n_out, conditioned = tier_of(cfg, w, k)
        g = torch.Generator().manual_seed(3)
        hist = torch.randint(0, cfg.q_levels, (B, 2 * S), generator=g)
        ups = torch.randn(B, 4, cfg.dim, generator=g)
        inputs = [(hist[:, j * S:(j + 1) * S], ups[:, j] if conditioned else None) for j in range(2)]
        got = RNNState(strided(ref.h), strided(ref.c))
        assert not got.h.is_contiguous() or B == 1
        calls, restore = record_launches(kmod)
        try:
            _steps_close(tw, FusedFrameWeights.from_inference(tw), ref, got, inputs, n_out, TIERS[2 * k])
        finally:
            restore()
        assert calls and all(kw["EVEN"] and kw["ALIGNED"] for _, _, _, kw in calls), f"tier {k}"


@pytest.mark.interpret
@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_cond_with_any_strides(rnn):
    """A cond whose columns are not adjacent (a transposed buffer) and a window of one column
    per row stride: the same results as dense copies."""
    frame_step_kernels()
    cfg, model = _model(rnn, True)
    w, S, n_out, conditioned = tier_of(cfg, export_inference(model), 1)
    ref = _states(model, 3)[1]
    g = torch.Generator().manual_seed(4)
    inputs = [(torch.randint(0, cfg.q_levels, (S, 3), generator=g).t(), torch.randn(cfg.dim, 3, generator=g).t())
              for _ in range(2)]
    assert inputs[0][1].stride(1) != 1 and inputs[0][0].stride(1) != 1
    _steps_close(w, FusedFrameWeights.from_inference(w), ref, ref.clone(), inputs, n_out, "middle, transposed")


@pytest.mark.interpret
@pytest.mark.parametrize("rnn", ["lstm", "gru"])
@pytest.mark.parametrize("B", [1, 16])
def test_bf16_within_twice_reference_error(rnn, B):
    """bf16 frame weights, every tier: the kernel's error against the fp32 reference at most
    twice frame_step_ref's own on the bf16 weights (three steps)."""
    frame_step_kernels()
    cfg, model = _model(rnn, True)
    w = export_inference(model)
    for k, st in enumerate(_states(model, B)):
        tw, S, _, conditioned = tier_of(cfg, w, k)
        _bf16_within_twice(tw, st, _inputs(cfg, B, S, conditioned, 3), "cpu", TIERS[k])


def _backend_run(be, model, B: int, n_frames: int, seed: int = 5):
    """n_frames teacher-forced frames of backend ``be`` from a random history and state (on the
    model's device): per frame the logits and every tier's h, c and upper output, on the CPU."""
    from fastsrnn.backends.base import DecodeState

    cfg, dev = model.cfg, next(model.parameters()).device
    F, S, Q = cfg.frame_size, cfg.lookback, cfg.q_levels
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(0, Q, (B, S), generator=g).to(dev)
    rnn = model.initial_state(B, "random", torch.Generator().manual_seed(seed + 1))
    st = DecodeState.begin(cfg, rnn, hist[:, S - F:].clone(), history=hist.clone())
    frames = []
    for _ in range(n_frames):
        tgt = torch.randint(0, Q, (B, F), generator=g).to(dev)
        lg = torch.full((B, F, Q), float("nan"), device=dev)
        drawn = be.step_frame(st, torch.rand(B, F, generator=g).to(dev), Sampling(torch.ones(B, device=dev)),
                              forced=tgt, logits_out=lg)
        assert torch.equal(drawn, tgt)
        tiers = [t for s in st.rnn.tiers() for t in (s.h, s.c) if t is not None]
        frames.append([lg.cpu()] + [t.cpu().clone() for t in tiers + list(st.conds)])
    return frames


def _backends_close(got, want, rtol: float = 1e-4):
    for n, (a, b) in enumerate(zip(got, want)):
        for i, (x, y) in enumerate(zip(a, b)):
            close_rel(x, y, f"frame {n}, tensor {i} (logits, tiers' h, c, upper outputs)", rtol)


@pytest.mark.interpret
@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_fused_frame_backend_steps_every_tier_with_the_kernels(rnn):
    """FusedFrameBackend.tier_step on the fused path (forced on the CPU: the interpreter runs the
    kernels) steps every tier of a 3-tier model through frame_step_triton, one FusedFrameWeights
    per tier: 6 frames (3 top steps) of logits, states and upper outputs as the eager backend's."""
    from fastsrnn.backends import make_backend

    kmod = frame_step_kernels()
    cfg, model = _model(rnn, True, 2, frame_sizes=(3, 2))
    fused, plain = FusedFrameBackend(model, "cpu"), make_backend("folded", model)
    fused._fused_frame = {}  # the decision a CUDA device with Triton takes (backends/fused_frame.py)
    calls, restore = record_launches(kmod)
    try:
        got = _backend_run(fused, model, 3, 6)
    finally:
        restore()
    want = _backend_run(plain, model, 3, 6)
    _backends_close(got, want)
    tiers = [fused.w, *fused.w.upper]
    assert len(fused._fused_frame) == len(tiers) == 2
    assert all(fused._fused_frame[id(t)][0] is t for t in tiers)
    per_step = cfg.n_rnn + 2
    assert len(calls) == per_step * (6 + 3), "every bottom frame and every top step through the kernels"
    assert plain.__dict__.get("_fused_frame") is None


# ---------------------------------------------------------------------------------------------
# Bad inputs: refused before any launch (any Triton mode, CPU tensors)

def _bad_cases():
    H = NTIER["dim"]
    # case -> (tier, make (window, cond) from valid ones, exception, message after "frame_step_triton: ")
    return {
        "cond-width": (1, lambda w, c: (w, torch.zeros(2, H + 1)), ValueError,
                       f"cond must be (2, {H}) float32 on cpu, got (2, {H + 1})"),
        "cond-batch": (1, lambda w, c: (w, torch.zeros(3, H)), ValueError, f"cond must be (2, {H}) float32"),
        "cond-3d": (0, lambda w, c: (w, c[:, None]), ValueError, f"cond must be (2, {H}) float32"),
        "cond-float64": (1, lambda w, c: (w, c.double()), ValueError, f"cond must be (2, {H}) float32 on cpu, got "
                         f"(2, {H}) torch.float64"),
        "cond-device": (0, lambda w, c: (w, torch.zeros(2, H, device="meta")), ValueError,
                        f"cond must be (2, {H}) float32 on cpu, got (2, {H}) torch.float32 on meta"),
        "cond-missing": (1, lambda w, c: (w, None), ValueError,
                         f"layer 0 takes {H + 6} inputs, got a 6-sample window (a conditioned tier: pass its cond)"),
        "cond-to-top": (2, lambda w, c: (w, torch.zeros(2, H)), ValueError,
                        f"layer 0 takes 18 inputs, got a 18-sample window and a (2, {H}) cond"),
        "window-width": (0, lambda w, c: (w[:, :2], c), ValueError,
                         f"layer 0 takes {H + 3} inputs, got a 2-sample window and a (2, {H}) cond"),
        "window-int32": (2, lambda w, c: (w.int(), c), ValueError, "window must be (B, F) int64"),
        "window-1d": (2, lambda w, c: (w[0], c), ValueError, "window must be (B, F) int64"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_inputs_are_refused(case):
    """A wrong cond (shape, dtype, device, missing or extra) or window raises a readable error
    naming frame_step_triton, and leaves the state untouched."""
    k = frame_step_kernels()
    tier, make, exc, msg = _bad_cases()[case]
    cfg, model = _model("lstm", True)
    w, S, _, conditioned = tier_of(cfg, export_inference(model), tier)
    st = _states(model, 2)[tier]
    h, c = st.h.clone(), st.c.clone()
    window, cond = make(*_inputs(cfg, 2, S, True, 1)[0])
    calls, restore = record_launches(k, run=False)
    try:
        with pytest.raises(exc, match=re.escape(f"frame_step_triton: {msg}")):
            frame_step_triton(FusedFrameWeights.from_inference(w), window, st, cond)
    finally:
        restore()
    assert not calls and torch.equal(st.h, h) and torch.equal(st.c, c)


def test_fused_weights_per_tier():
    """FusedFrameWeights takes an InferenceWeights or a TierWeights: n_out from up_w, output
    buffers sized (B, n_out, H), each tier's its own; int8 tier weights are refused."""
    cfg, model = _model("gru", True)
    w = export_inference(model)
    fws = [FusedFrameWeights.from_inference(tier_of(cfg, w, k)[0]) for k in TIERS]
    assert [fw.n_out for fw in fws] == [3, 2, 3]
    bufs = [fw.get_buffers(4, torch.device("cpu")) for fw in fws]
    assert [tuple(b["cond"].shape) for b in bufs] == [(4, 3, 23), (4, 2, 23), (4, 3, 23)]
    assert len({b["cond"].data_ptr() for b in bufs}) == 3 and len({b["hs"].data_ptr() for b in bufs}) == 3
    with pytest.raises(TypeError, match="all float32 or all bfloat16"):
        FusedFrameWeights.from_inference(w.to(frame_dtype=torch.int8).upper[0])


# ---------------------------------------------------------------------------------------------
# Compiled for sm_90 / sm_80 without a GPU, at the 3-tier presets' shapes

def _meta_tier(cfg, S: int, conditioned: bool, n_out: int, dtype):
    """Tier weights (the attributes FusedFrameWeights reads) as meta tensors of the real shapes."""
    H, L, G = cfg.dim, cfg.n_rnn, cfg.gates
    skip = cfg.skip and L > 1
    m = lambda *s: torch.zeros(*s, dtype=dtype, device="meta")  # noqa: E731
    f = lambda *s: torch.zeros(*s, device="meta")  # noqa: E731
    ins = [S + (H if conditioned else 0)] + [H + S if skip else H] * (L - 1)
    return SimpleNamespace(cfg=cfg, w_ih=[m(G * H, i) for i in ins], w_hh=[m(G * H, H) for _ in ins],
                           b_ih=[f(G * H) for _ in ins], b_hh=[f(G * H) for _ in ins],
                           skip_w=[m(H, H) for _ in range(L if skip else 0)], skip_b=f(H) if skip else None,
                           up_w=m(n_out * H, H), up_b=f(n_out * H))


def _compile_cases():
    cases = [("samplernn-pytorch-3tier", (), B, dt) for B in (1, 128) for dt in ("fp32", "bf16")]
    cases += [("tiny-3tier", (), 16, "bf16"), ("prism-3tier", (16, 4, 4), 1, "bf16"),
              ("prism-3tier", (16, 4, 4), 128, "bf16")]  # (16, 4, 4): the top tier's S 256 loops (XIN_LOOP)
    return [pytest.param(p, fs, B, dt, id=f"{p}{'-' + 'x'.join(map(str, fs)) if fs else ''}-B{B}-{dt}")
            for p, fs, B, dt in cases]


@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("preset,frame_sizes,B,wdt", _compile_cases())
def test_kernels_compile_for_gpu(preset, frame_sizes, B, wdt, arch):
    """Every launch of every tier's step at the preset's shapes (conditioned layer 0, wide
    frames), with the launcher's tiles and warps, through Triton's whole compiler for sm_<arch>:
    no spills, shared memory within the limit."""
    k = frame_step_kernels()
    if type(k._layer_kernel).__name__ == "InterpretedFunction":
        pytest.skip("this process runs Triton's interpreter (TRITON_INTERPRET=1)")
    cfg = SampleRNNConfig.from_name(preset, **({"frame_sizes": frame_sizes} if frame_sizes else {}))
    dtype = torch.bfloat16 if wdt == "bf16" else torch.float32
    H, L = cfg.dim, cfg.n_rnn
    seen, problems = set(), []
    for t in range(len(cfg.frame_sizes)):
        n_up = len(cfg.frame_sizes) - 1
        S, conditioned = cfg.tier_samples(t), t < n_up
        n_out = cfg.frame_size if t == 0 else cfg.frame_sizes[t]
        fw = FusedFrameWeights.from_inference(_meta_tier(cfg, S, conditioned, n_out, dtype))
        z = lambda: torch.zeros(L, B, H, device="meta")  # noqa: E731
        state = RNNState(z(), z() if cfg.gates == 4 else None)
        window = torch.zeros(B, S, dtype=torch.int64, device="meta")
        cond = torch.zeros(B, H, device="meta") if conditioned else None
        calls, restore = record_launches(k, run=False)
        try:
            frame_step_triton(fw, window, state, cond)
        finally:
            restore()
        assert len(calls) == L + (2 if fw.skip_w is not None else 1)
        problems += compile_problems(calls, arch, f"{preset} tier {t} B={B} {wdt}", seen)
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# On a CUDA device (compiled kernels)

def _gpu_cases():
    for rnn, skip in (("lstm", True), ("gru", False), ("gru", True)):
        for B in (1, 3, 16, 128):
            for dt in ("fp32", "bf16"):
                yield pytest.param(rnn, skip, B, dt, id=f"{rnn}-{'skip' if skip else 'noskip'}-B{B}-{dt}")


@pytest.mark.parametrize("rnn,skip,B,wdt", list(_gpu_cases()))
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_tier_on_gpu(rnn, skip, B, wdt):
    """Every tier of a 4-tier model (F 16, S 64 and 128: upper frames loop over x_in tiles at
    most sizes; H 256, 3 layers) on CUDA: fp32 within ~1e-5 relative of frame_step_ref, bf16 within
    twice the reference's own bf16 error."""
    frame_step_kernels()
    cfg, model = _model(rnn, skip, 3, frame_sizes=(16, 4, 2), dim=256)
    w = export_inference(model)
    states = _states(model, B)
    for k, st in enumerate(states):
        tw, S, n_out, conditioned = tier_of(cfg, w, k)
        inputs = _inputs(cfg, B, S, conditioned, 3, device="cuda")
        if wdt == "bf16":
            _bf16_within_twice(tw, st, inputs, "cuda", TIERS[k])
            continue
        twc = tw.to("cuda")
        ref = RNNState(st.h.cuda(), None if st.c is None else st.c.cuda())
        _steps_close(twc, FusedFrameWeights.from_inference(twc), ref, ref.clone(), inputs, n_out, TIERS[k])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("rnn", ["lstm", "gru"])
@pytest.mark.parametrize("B", [1, 16, 128])
@pytest.mark.parametrize("frame_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_frame_backend_on_gpu_steps_every_tier_with_the_kernels(rnn, B, frame_dtype):
    """The fused frame tier on CUDA (3-tier model, H 256) runs every tier through the fused kernels
    (one FusedFrameWeights per tier); 8 teacher-forced frames (2 top steps) against the same
    backend held on the eager frame_step_ref: fp32 ~1e-4 relative (errors compound over frames);
    bf16: every tensor's error against an fp32 run at most twice the eager bf16 run's."""
    from fastsrnn.backends import make_backend

    frame_step_kernels()
    cfg, model = _model(rnn, True, 3, frame_sizes=(16, 4), dim=256)
    model = model.cuda()
    fused = FusedFrameBackend(model, "cuda", frame_dtype=frame_dtype)
    plain = make_backend("folded", model, device="cuda", frame_dtype=frame_dtype)  # the torch twins, on a GPU too
    got, want = _backend_run(fused, model, B, 8), _backend_run(plain, model, B, 8)
    if frame_dtype == torch.float32:
        _backends_close(got, want, 1e-4)
    else:
        exact_be = make_backend("folded", model, device="cuda")
        exact = _backend_run(exact_be, model, B, 8)
        for n, (a, b, e) in enumerate(zip(got, want, exact)):
            for i, (g, r, x) in enumerate(zip(a, b, e)):
                err_k, err_r = (g - x).abs().max().item(), (r - x).abs().max().item()
                assert err_k <= 2 * err_r + 1e-6, (f"frame {n}, tensor {i} (logits, tiers' h, c, upper outputs): "
                                                   f"kernel error {err_k:.3g} > 2 x reference's {err_r:.3g}")
    tiers = [fused.w, *fused.w.upper]
    assert isinstance(fused._fused_frame, dict) and len(fused._fused_frame) == len(tiers)
    assert plain.__dict__.get("_fused_frame") is None, "folded ran the kernels: it is the torch twins"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_int8_ntier_on_gpu_takes_the_reference_step():
    """int8 frame weights on CUDA: no tier takes the kernels; every tier is frame_step_ref's."""

    cfg, model = _model("gru", True, 2, frame_sizes=(16, 4), dim=64)
    model = model.cuda()
    be = FusedFrameBackend(model, "cuda", frame_dtype=torch.int8)
    frames = _backend_run(be, model, 3, 4)
    assert be.w.int8 and be.__dict__.get("_fused_frame") is None
    assert all(torch.isfinite(t).all() for f in frames for t in f)

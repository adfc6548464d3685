"""The fused C++ CPU kernel against its eager twin (sample_frame_ref) and the cpu backend
against the eager model. The extension must build here: a failed build fails these tests
(CI installs g++ and ninja), it never skips them."""
import re

import pytest
import torch
from model_helpers import random_model

from fastsrnn import SampleRNN, SampleRNNConfig
from fastsrnn.backends import DecodeState, backend_status, make_backend, resolve_backend
from fastsrnn.backends.cpu import CpuBackend, build_extension, sample_frame_cpu
from fastsrnn.backends.folded import FusedBackend
from fastsrnn.ops.build import BuildError, _key, csrc_dir, isa_level, load_extension, main
from fastsrnn.ops.frame_step import frame_step
from fastsrnn.ops.sample_frame import sample_frame_ref
from fastsrnn.ops.sampling import cdf_margin

ODD = dict(frame_size=3, dim=100, q_levels=7, emb_size=5, n_rnn=3)
TINY = SampleRNNConfig.from_name("tiny")
MARGIN = 1e-5  # a draw may differ from the reference only this close to a CDF boundary


@pytest.fixture(scope="module")
def op():
    return build_extension()  # raises BuildError (test fails) when the build fails


def _weights(F, Q, H, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: torch.randn(*s, generator=g) * scale  # noqa: E731
    w = dict(table=r(F, Q, H, scale=0.3), w3=r(H, H, scale=H ** -0.5), b3=r(H, scale=0.1),
             wo=r(Q, H, scale=3 * H ** -0.5), bo=r(Q, scale=0.1))
    return {k: v.to(dtype) if k in ("table", "w3", "wo") else v for k, v in w.items()}


def _compare(got, want, u, inv_t, atol=1e-5):
    """Draws, logits and final windows of two generations (samples (B, T), logits (B, T, Q),
    window): the same integers, or, per sequence, a first mismatch at a CDF near-tie (its
    margin reported), after which that sequence's inputs differ and are not compared."""
    (xs, lg, win), (xs_r, lg_r, win_r) = got, want
    for b in range(xs.shape[0]):
        bad = (xs[b] != xs_r[b]).nonzero()
        t = int(bad[0]) if len(bad) else xs.shape[1]
        if t < xs.shape[1]:
            m = cdf_margin(lg_r[b, t][None], u[b, t][None], inv_t[b][None]).item()
            assert m < MARGIN, f"seq {b} step {t}: drew {int(xs[b, t])}, reference {int(xs_r[b, t])}, CDF margin {m:.2e}"
        torch.testing.assert_close(lg[b, :t + 1], lg_r[b, :t + 1], rtol=1e-5, atol=atol)
        if t == xs.shape[1]:
            assert torch.equal(win[b], win_r[b])


def _run_frames(fn, w, B, n_frames, argmax, inv_t, forced, threads, seed=1):
    """n_frames frames with `fn` (the op or its reference): samples (B, T), logits (B, T, Q),
    the final window (B, F) and the uniforms (B, T)."""
    F, Q, H = w["table"].shape
    g = torch.Generator().manual_seed(seed)
    window = torch.randint(0, Q, (B, F), generator=g)
    outs, logits, us = [], [], []
    for n in range(n_frames):
        cond = torch.randn(B, F, H, generator=g)
        u = torch.rand(B, F, generator=g)
        out = torch.full((B, F), -1, dtype=torch.long)  # poisoned: unwritten elements fail
        lg = torch.full((B, F, Q), float("nan"))
        frc = torch.randint(0, Q, (B, F), generator=g) if forced else None
        args = (w["table"], cond, w["w3"], w["b3"], w["wo"], w["bo"], window, u, inv_t, argmax, out, frc, lg)
        fn(*args, **({"num_threads": threads} if threads is not None else {}))
        outs.append(out), logits.append(lg), us.append(u)
    return (torch.cat(outs, 1), torch.cat(logits, 1), window), torch.cat(us, 1)


SHAPES = {"tiny": (16, 256, 128), "odd": (3, 7, 100), "odd-H5": (5, 3, 5)}


def _op_cases():
    for shape in SHAPES:
        for B in (1, 3, 8):
            for threads in (1, 2):
                yield pytest.param(shape, B, threads, id=f"{shape}-B{B}-threads{threads}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape,B,threads", list(_op_cases()))
def test_op_matches_reference(op, shape, B, threads, dtype):
    """bf16 weights are widened exactly, so the reference on the same bf16 weights is as tight."""
    F, Q, H = SHAPES[shape]
    w = _weights(F, Q, H, dtype)
    inv_t = torch.linspace(0.5, 2.0, B)  # per-sequence temperature
    got, u = _run_frames(sample_frame_cpu, w, B, 4, False, inv_t, False, threads)
    want, _ = _run_frames(sample_frame_ref, w, B, 4, False, inv_t, False, None)
    _compare(got, want, u, inv_t)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode", ["argmax", "forced"])
def test_op_argmax_and_forced(op, mode, threads):
    F, Q, H = SHAPES["tiny"]
    w = _weights(F, Q, H, seed=3)
    inv_t = torch.tensor([0.7, 1.0, 1.9])
    (xs, lg, win), _ = _run_frames(sample_frame_cpu, w, 3, 3, mode == "argmax", inv_t, mode == "forced", threads)
    (xs_r, lg_r, win_r), _ = _run_frames(sample_frame_ref, w, 3, 3, mode == "argmax", inv_t, mode == "forced", None)
    assert torch.equal(xs, xs_r) and torch.equal(win, win_r)
    torch.testing.assert_close(lg, lg_r, rtol=1e-5, atol=1e-5)
    if mode == "argmax":
        assert torch.equal(xs, lg.argmax(-1))


def test_op_temperature_changes_draws(op):
    """Per-sequence temperature is applied per sequence: a cold sequence is near argmax."""
    F, Q, H = SHAPES["tiny"]
    w = _weights(F, Q, H, seed=4)
    inv_t = torch.tensor([100.0, 1.0])
    (samples, logits, _), _ = _run_frames(sample_frame_cpu, w, 2, 4, False, inv_t, False, 2)
    assert torch.equal(samples[0], logits[0].argmax(-1))
    assert not torch.equal(samples[1], logits[1].argmax(-1))


def _inputs(F=3, Q=7, H=100, B=2):
    w = _weights(F, Q, H)
    return dict(table=w["table"], cond=torch.randn(B, F, H), w3=w["w3"], b3=w["b3"], wo=w["wo"], bo=w["bo"],
                window=torch.randint(0, Q, (B, F)), uniforms=torch.rand(B, F), inv_temperature=torch.ones(B),
                argmax=False, out=torch.empty(B, F, dtype=torch.long))


BAD = {
    "cond-float64": ("cond", lambda a: a["cond"].double(), TypeError, "cond must be Float"),
    "cond-shape": ("cond", lambda a: a["cond"][:, :2].contiguous(), ValueError, "cond must have shape"),
    "w3-other-dtype": ("w3", lambda a: a["w3"].bfloat16(), TypeError, "w3 must be Float"),
    "window-int32": ("window", lambda a: a["window"].int(), TypeError, "window must be Long"),
    "window-range": ("window", lambda a: a["window"] + 7, ValueError, "window holds samples outside"),
    "forced-range": ("forced", lambda a: torch.full_like(a["window"], -2), ValueError, "forced holds samples"),
    "table-2d": ("table", lambda a: a["table"][0], ValueError, "table must be (F, Q, H)"),
    "uniforms-noncontig": ("uniforms", lambda a: torch.rand(a["uniforms"].shape[::-1]).t(), ValueError,
                           "uniforms must be contiguous"),
    "out-shape": ("out", lambda a: torch.empty(2, 4, dtype=torch.long), ValueError, "out must have shape"),
    "logits-out-shape": ("logits_out", lambda a: torch.empty(2, 3, 8), ValueError, "logits_out must have shape"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_op_rejects_bad_inputs(op, case):
    name, make, exc, msg = BAD[case]
    args = _inputs()
    args[name] = make(args)
    with pytest.raises(exc, match=re.escape(msg)):
        sample_frame_cpu(**args)



def _model_cases():
    for rnn in ("lstm", "gru"):
        for B in (1, 3):
            yield pytest.param(ODD, rnn, B, id=f"odd-{rnn}-B{B}")
        yield pytest.param(dict(ODD, skip=False), rnn, 3, id=f"odd-{rnn}-noskip-B3")
    yield pytest.param({}, "lstm", 3, id="tiny-lstm-B3")


def _generate(backends, model, B, n_frames, inv_t):
    """The same generation on two backends, compared frame by frame; returns their states.
    A near-tie mismatch (checked by _compare) would make the states differ: seeds avoid one."""
    F, Q = model.cfg.frame_size, model.cfg.q_levels
    window = torch.randint(0, Q, (B, F))
    states = [DecodeState(model.initial_state(B), window.clone()) for _ in backends]
    for n in range(n_frames):
        u = torch.rand(B, F)
        runs = []
        for be, st in zip(backends, states):
            lg = torch.full((B, F, Q), float("nan"))  # poisoned
            runs.append((be.step_frame(st, u, inv_t, logits_out=lg), lg, st.window))
        _compare(*runs, u, inv_t, atol=1e-4)
        assert torch.equal(runs[0][0], runs[1][0]), "a near-tie changed the draw: the states would differ"
    return states


@pytest.mark.parametrize("over,rnn,B", list(_model_cases()))
def test_backend_generation_matches_eager(over, rnn, B):
    """Whole generations (several frames) of the cpu backend against the eager model: same
    integers, logits within fp32 tolerance, and the same state (window, h, c)."""
    cfg = SampleRNNConfig.from_name("tiny", rnn_type=rnn, **over)
    model = random_model(cfg)
    cpu, eager = make_backend("cpu", model, num_threads=2), make_backend("eager", model)
    states = _generate([cpu, eager], model, B, 4, torch.linspace(0.8, 1.25, B))
    assert torch.equal(states[0].window, states[1].window)
    torch.testing.assert_close(states[0].rnn.h, states[1].rnn.h, rtol=1e-4, atol=1e-5)
    if rnn == "lstm":
        torch.testing.assert_close(states[0].rnn.c, states[1].rnn.c, rtol=1e-4, atol=1e-5)


def _frame_cases():
    for rnn in ("lstm", "gru"):
        for skip in (True, False):
            for B in (1, 3):
                for threads in (1, 2):
                    yield pytest.param(rnn, skip, B, threads, id=f"{rnn}-{'skip' if skip else 'noskip'}-B{B}-threads{threads}")


@pytest.mark.parametrize("rnn,skip,B,threads", list(_frame_cases()))
def test_op_frame_step_matches_reference(op, rnn, skip, B, threads):
    """The C++ frame step against frame_step.py (its spec) on the same exported weights:
    cond and the updated h, c."""
    cfg = SampleRNNConfig(rnn_type=rnn, skip=skip, **ODD)
    w = make_backend("ref", random_model(cfg)).w
    window = torch.randint(0, cfg.q_levels, (B, cfg.frame_size))
    rnn_ref = random_model(cfg).initial_state(B, "random", torch.Generator().manual_seed(2))
    h, c = rnn_ref.h.clone(), None if rnn_ref.c is None else rnn_ref.c.clone()
    want = frame_step(w, window, rnn_ref)
    got = op.frame_step(w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.skip_w, w.skip_b, w.up_w, w.up_b, window, h, c,
                        cfg.q_levels, threads)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, rnn_ref.h, rtol=1e-5, atol=1e-6)
    if rnn == "lstm":
        torch.testing.assert_close(c, rnn_ref.c, rtol=1e-5, atol=1e-6)


def test_op_frame_step_rejects_bad_inputs(op):
    cfg = SampleRNNConfig(**ODD)
    w = make_backend("ref", random_model(cfg)).w
    st = random_model(cfg).initial_state(2)
    window = torch.zeros(2, cfg.frame_size, dtype=torch.long)
    with pytest.raises(ValueError, match=re.escape("frame_step: c must have shape")):
        op.frame_step(w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.skip_w, w.skip_b, w.up_w, w.up_b, window, st.h,
                      st.c[:, :1].contiguous(), cfg.q_levels)
    with pytest.raises(ValueError, match="expected 3 layers"):
        op.frame_step(w.w_ih[:2], w.w_hh, w.b_ih, w.b_hh, w.skip_w, w.skip_b, w.up_w, w.up_b, window, st.h,
                      st.c, cfg.q_levels)
    with pytest.raises(TypeError, match=re.escape("frame_step: w_hh[i] must be Float")):
        op.frame_step(w.w_ih, [t.double() for t in w.w_hh], w.b_ih, w.b_hh, w.skip_w, w.skip_b, w.up_w, w.up_b,
                      window, st.h, st.c, cfg.q_levels)


def test_op_linear_matches_torch(op):
    x, wt, b = torch.randn(3, 100), torch.randn(37, 100), torch.randn(37)
    torch.testing.assert_close(op.linear(x, wt, b, 2), torch.addmm(b, x, wt.t()), rtol=1e-5, atol=1e-5)
    got = op.linear(x, wt.bfloat16(), b, 2)  # bf16 weights widened exactly, fp32 activations
    torch.testing.assert_close(got, torch.addmm(b, x, wt.bfloat16().float().t()), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="linear: b must have shape"):
        op.linear(x, wt, b[:5], 0)


@pytest.mark.parametrize("rnn,B", [("lstm", 1), ("gru", 3)], ids=["lstm-B1", "gru-B3"])
def test_backend_teacher_forced_logits_match_parallel_forward(rnn, B):
    cfg = SampleRNNConfig(rnn_type=rnn, **ODD)
    model = random_model(cfg)
    F, Q, n_frames = cfg.frame_size, cfg.q_levels, 5
    x = torch.randint(0, Q, (B, F * (n_frames + 1)))
    with torch.no_grad():
        ref_logits, ref_state = model(x, model.initial_state(B))
    be = make_backend("cpu", model, num_threads=2)
    state = DecodeState(model.initial_state(B), x[:, :F].clone())
    got = torch.full((B, n_frames * F, Q), float("nan"))
    for n in range(n_frames):
        tgt = x[:, F * (n + 1): F * (n + 2)]
        drawn = be.step_frame(state, torch.rand(B, F), torch.ones(B), forced=tgt, logits_out=got[:, n * F:(n + 1) * F])
        assert torch.equal(drawn, tgt)
    torch.testing.assert_close(got, ref_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(state.rnn.h, ref_state.h, rtol=1e-4, atol=1e-5)
    assert torch.equal(state.window, x[:, -F:])


def _forced_logits(be, model, x, B):
    """Teacher-forced logits (B, T, Q) of backend `be` on samples x (B, F + T)."""
    F, Q = model.cfg.frame_size, model.cfg.q_levels
    state = DecodeState(model.initial_state(B), x[:, :F].clone())
    got = torch.full((B, x.shape[1] - F, Q), float("nan"))
    for n in range(x.shape[1] // F - 1):
        be.step_frame(state, torch.rand(B, F), torch.ones(B), forced=x[:, F * (n + 1): F * (n + 2)],
                      logits_out=got[:, n * F:(n + 1) * F])
    return got


@pytest.mark.parametrize("dtype,B", [(torch.float32, 129), (torch.bfloat16, 3), (torch.bfloat16, 6)],
                         ids=["fp32-B129-torch-frame-step", "bf16-B3-fused-frame-step", "bf16-B6-torch-frame-step"])
def test_backend_paths_by_batch_and_precision(dtype, B):
    """Large batches hand the frame step to torch's BLAS, bf16 weights change the error: the
    cpu backend's error against the fp32 model is at most twice the `ref` backend's in the
    same precision (plain PyTorch on the same bf16 weights)."""
    cfg = SampleRNNConfig.from_name("tiny", n_rnn=3)
    model = random_model(cfg)
    x = torch.randint(0, cfg.q_levels, (B, cfg.frame_size * 4))
    with torch.no_grad():
        exact = model(x, model.initial_state(B))[0]
    opts = dict(dtype=dtype, frame_dtype=dtype)
    err = (_forced_logits(make_backend("cpu", model, **opts), model, x, B) - exact).abs().max().item()
    err_ref = (_forced_logits(make_backend("ref", model, **opts), model, x, B) - exact).abs().max().item()
    assert err <= 2 * err_ref + 1e-6, f"cpu error {err:.2e} vs plain PyTorch's {err_ref:.2e}"


class _RefView(FusedBackend):
    """The `ref` fused backend sharing another backend's exported weights (no second export)."""

    def __init__(self, other):
        self.w, self.cfg = other.w, other.cfg


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_backend_dadabots_preset_matches_ref(dtype):
    """The paper's shapes (F16 Q256 H1024, 5 x LSTM) at B = 1 and 2 threads: the cpu backend
    against the folded `ref` backend on the same exported weights."""
    cfg = SampleRNNConfig.from_name("dadabots-2tier")
    torch.manual_seed(0)
    model = SampleRNN(cfg).eval()
    cpu = make_backend("cpu", model, dtype=dtype, num_threads=2)
    states = _generate([cpu, _RefView(cpu)], model, 1, 2, torch.ones(1))
    torch.testing.assert_close(states[0].rnn.c, states[1].rnn.c)


def test_backend_dispatch():
    assert resolve_backend("auto", "cpu") == "cpu"
    ok, why = backend_status("cpu", "cpu")
    assert ok and "fused C++ kernel" in why
    ok, why = CpuBackend.is_available(torch.device("cuda"))
    assert not ok and "CPU only" in why


def test_isa_levels_and_cache_key():
    assert isa_level(frozenset({"avx2", "fma", "sse2"}))[0] in ("avx2", "generic")  # generic off x86
    assert isa_level(frozenset({"sse2"}))[0] == "generic"
    src = [csrc_dir() / "cpu" / "sample_frame.cpp"]
    # a cache built with AVX-512 flags must not be found by a build without them
    assert _key("cpu", src, isa_level(frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"}))[1]) \
        != _key("cpu", src, isa_level(frozenset({"avx2", "fma"}))[1])


def test_build_errors_are_clear_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTSRNN_BUILD_DIR", str(tmp_path / "build"))
    with pytest.raises(BuildError, match="nope.cpp is missing"):
        load_extension("t_missing", [tmp_path / "nope.cpp"])
    bad = tmp_path / "broken.cpp"
    bad.write_text("this is not C++\n")
    with pytest.raises(BuildError, match="building the t_broken extension .* failed"):
        load_extension("t_broken", [bad])
    monkeypatch.setattr("fastsrnn.ops.build._build", lambda *a, **k: pytest.fail("a failed build was retried"))
    with pytest.raises(BuildError, match="failed"):
        load_extension("t_broken", [bad])


def test_build_reports_missing_tools(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.utils.cpp_extension.is_ninja_available", lambda: False)
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    src = tmp_path / "a.cpp"
    src.write_text("int x;\n")
    with pytest.raises(BuildError, match=r"ninja \(pip install ninja\).*no-such-compiler-xyz"):
        load_extension("t_tools", [src])


def test_build_cli(op, capsys):
    assert main(["cpu"]) == 0
    assert "cpu    ok     ready" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["nonsense"])


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_narrower_isa_builds_match_reference(isa):
    """The AVX2 and portable code paths (other CPUs) give the reference's draws here too."""
    if isa == "avx2" and isa_level()[0] == "generic":
        pytest.skip("this CPU has no AVX2")  # only on a non-x86 or pre-2013 CPU
    mod = build_extension(isa)
    assert mod.isa == isa
    F, Q, H = SHAPES["odd"]
    w = _weights(F, Q, H)
    inv_t = torch.tensor([0.5, 1.0, 2.0])
    got, u = _run_frames(lambda *a, num_threads: mod.sample_frame(*a, num_threads), w, 3, 4, False, inv_t, False, 2)
    want, _ = _run_frames(sample_frame_ref, w, 3, 4, False, inv_t, False, None)
    _compare(got, want, u, inv_t)


def test_stale_build_lock_is_removed(tmp_path):
    """A build killed mid-way leaves torch's lock file, on which later builds would wait forever."""
    import os
    import time

    from fastsrnn.ops.build import _clear_stale_lock

    lock = tmp_path / "lock"
    lock.touch()
    _clear_stale_lock(tmp_path)
    assert lock.exists()  # a build may be running: a fresh lock stays
    old = time.time() - 3600
    os.utime(lock, (old, old))
    _clear_stale_lock(tmp_path)
    assert not lock.exists()

"""The Triton sample-frame kernel against its eager twin (sample_frame_ref) and the triton backend
against the eager model, on the CPU through Triton's interpreter.

Triton fixes interpreted-or-compiled when ``triton`` is first imported, so TRITON_INTERPRET=1
must be set before that, and setting it in the pytest process would leak into every other
module (and be too late if one of them imported triton at collection). So the checks here are
named ``check_*``: the one ``test_*`` below runs this file in a fresh interpreter with
TRITON_INTERPRET=1 and ``-o python_functions=check_``, and fails with its output unless every
check passed and none was skipped. To run the checks one by one:
    TRITON_INTERPRET=1 python -m pytest tests/test_triton_backend.py -o python_functions=check_
The interpreter is slow: shapes are tiny and the preset-sized case runs two frames.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from model_helpers import random_model

from fastsrnn import SampleRNNConfig
from fastsrnn.backends import _AUTO_ORDER, DecodeState, backend_status, make_backend
from fastsrnn.ops.sample_frame import sample_frame_ref
from fastsrnn.ops.sampling import cdf_margin

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
if INTERPRETED:  # only in the child: importing the kernel imports triton
    from fastsrnn.backends.triton import TritonBackend
    from fastsrnn.kernels.sample_frame import launch_config, sample_frame_triton

ODD = dict(frame_size=3, dim=100, q_levels=7, emb_size=5, n_rnn=3)
MARGIN = 1e-5  # a draw may differ from the reference only this close to a CDF boundary
SHAPES = {"odd": (3, 7, 100), "odd-H5": (5, 3, 5), "tiny": (16, 256, 128)}

MIN_CHECKS = 34  # the child must have run at least this many (guards against a silent collection loss)


def test_triton_interpreter_checks():
    """Every check_* of this file, under TRITON_INTERPRET=1 in a fresh Python."""
    pytest.importorskip("triton")  # in the test extra on Linux: CI has it, this does not skip there
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "python_functions=check_",
           "-rs", __file__]
    r = subprocess.run(cmd, env=env, cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=600)
    log = r.stdout[-6000:] + r.stderr[-3000:]
    assert r.returncode == 0, f"interpreter checks failed:\n{log}"
    m = re.search(r"(\d+) passed", r.stdout)
    assert m and int(m.group(1)) >= MIN_CHECKS and "skipped" not in r.stdout, f"checks were lost:\n{log}"


COMPILE_CASES = {  # (F, Q, H, B, weights, mode, GPU arch)
    "paper-bf16-sample-sm90": (16, 256, 1024, 3, "bf16", "sample", 90),
    "paper-fp32-argmax-sm80": (16, 256, 1024, 1, "fp32", "argmax", 80),
    "odd-fp32-forced-sm90": (3, 7, 100, 3, "fp32", "forced", 90),
}


@pytest.mark.parametrize("case", list(COMPILE_CASES))
def test_kernel_compiles_for_gpu(case):
    """The kernel through Triton's whole compiler (TTIR, TTGIR, LLVM, PTX, cubin) for a GPU
    target, without a GPU: catches what the interpreter does not check (types of loop-carried
    values, layouts, register limits)."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fastsrnn.kernels.sample_frame import _sample_frame_kernel, launch_config

    if type(_sample_frame_kernel).__name__ == "InterpretedFunction":
        pytest.skip("this process runs Triton's interpreter (TRITON_INTERPRET=1)")
    F, Q, H, B, wdt, mode, arch = COMPILE_CASES[case]
    cfg = launch_config(B, F, Q, H)
    warps = cfg.pop("num_warps")
    w = "*bf16" if wdt == "bf16" else "*fp32"
    types = [w, "*fp32", w, "*fp32", w, "*fp32", "*i64", "*fp32", "*fp32", "*i64", "*i64", "*fp32", "i32", "i32", "i32"]
    names = ["table", "cond", "w3", "b3", "wo", "bo", "window", "uniforms", "inv_t", "out", "forced", "logits_out",
             "B", "Q", "H"]
    const = dict(F=F, ARGMAX=mode == "argmax", HAS_FORCED=mode == "forced", HAS_LOGITS=True, **cfg)
    sig = dict(zip(names, types), **{k: "constexpr" for k in const})
    src = ASTSource(fn=_sample_frame_kernel, signature=sig, constexprs=const)
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps))
    assert ".visible .entry _sample_frame_kernel" in kernel.asm["ptx"] and len(kernel.asm["cubin"]) > 0


def _weights(F, Q, H, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: torch.randn(*s, generator=g) * scale  # noqa: E731
    w = dict(table=r(F, Q, H, scale=0.3), w3=r(H, H, scale=H ** -0.5), b3=r(H, scale=0.1),
             wo=r(Q, H, scale=3 * H ** -0.5), bo=r(Q, scale=0.1))
    return {k: v.to(dtype) if k in ("table", "w3", "wo") else v for k, v in w.items()}


def _compare(got, want, u, inv_t, atol=1e-5):
    """Draws, logits and final windows of two generations (samples (B, T), logits (B, T, Q),
    window (B, F)): the same integers, or, per sequence, a first mismatch at a CDF near-tie
    (its margin reported), after which that sequence's inputs differ and are not compared."""
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


def _run_frames(fn, w, B, n_frames, argmax=False, inv_t=None, forced=False, seed=1, **kw):
    """n_frames frames with `fn` (the kernel or its reference) -> ((samples (B, T), logits
    (B, T, Q), final window (B, F)), uniforms (B, T)). Outputs are poisoned before each call."""
    F, Q, H = w["table"].shape
    inv_t = torch.ones(B) if inv_t is None else inv_t
    g = torch.Generator().manual_seed(seed)
    window = torch.randint(0, Q, (B, F), generator=g)
    outs, logits, us = [], [], []
    for _ in range(n_frames):
        cond = torch.randn(B, F, H, generator=g)
        u = torch.rand(B, F, generator=g)
        out = torch.full((B, F), -1, dtype=torch.long)
        lg = torch.full((B, F, Q), float("nan"))
        frc = torch.randint(0, Q, (B, F), generator=g) if forced else None
        fn(w["table"], cond, w["w3"], w["b3"], w["wo"], w["bo"], window, u, inv_t, argmax, out, frc, lg, **kw)
        outs.append(out), logits.append(lg), us.append(u)
    return (torch.cat(outs, 1), torch.cat(logits, 1), window), torch.cat(us, 1)


def _kernel_cases():
    for shape, Bs, frames in (("odd", (1, 3), 4), ("odd-H5", (3,), 4), ("tiny", (3,), 2)):
        for B in Bs:
            for dtype in ("fp32", "bf16"):
                yield pytest.param(shape, B, frames, dtype, id=f"{shape}-B{B}-{dtype}")


@pytest.mark.parametrize("shape,B,frames,dtype", list(_kernel_cases()))
def check_kernel_matches_reference(shape, B, frames, dtype):
    """bf16 weights are widened exactly, so the reference on the same bf16 weights is as tight."""
    F, Q, H = SHAPES[shape]
    w = _weights(F, Q, H, torch.float32 if dtype == "fp32" else torch.bfloat16)
    inv_t = torch.linspace(0.5, 2.0, B)  # per-sequence temperature
    got, u = _run_frames(sample_frame_triton, w, B, frames, inv_t=inv_t)
    want, _ = _run_frames(sample_frame_ref, w, B, frames, inv_t=inv_t)
    _compare(got, want, u, inv_t)
    assert (got[0] >= 0).all() and not got[1].isnan().any()  # every poisoned element was written


@pytest.mark.parametrize("block_b", [1, 2, 8])
def check_kernel_block_sizes(block_b):
    """Programs of 1, 2 (the last one half masked) and 8 (five rows masked) sequences."""
    w = _weights(*SHAPES["odd"], seed=2)
    inv_t = torch.tensor([0.8, 1.0, 1.3])
    got, u = _run_frames(sample_frame_triton, w, 3, 3, inv_t=inv_t, block_b=block_b)
    want, _ = _run_frames(sample_frame_ref, w, 3, 3, inv_t=inv_t)
    _compare(got, want, u, inv_t)


@pytest.mark.parametrize("mode", ["argmax", "forced"])
def check_kernel_argmax_and_forced(mode):
    w = _weights(*SHAPES["odd"], seed=3)
    inv_t = torch.tensor([0.7, 1.0, 1.9])
    kw = dict(argmax=mode == "argmax", inv_t=inv_t, forced=mode == "forced")
    (xs, lg, win), _ = _run_frames(sample_frame_triton, w, 3, 3, **kw)
    (xs_r, lg_r, win_r), _ = _run_frames(sample_frame_ref, w, 3, 3, **kw)
    assert torch.equal(xs, xs_r) and torch.equal(win, win_r)
    torch.testing.assert_close(lg, lg_r, rtol=1e-5, atol=1e-5)
    if mode == "argmax":
        assert torch.equal(xs, lg.argmax(-1))


def check_kernel_temperature_is_per_sequence():
    """A cold sequence (inv_t 100) draws the argmax; a warm one (inv_t 0.5) does not, always."""
    w = _weights(*SHAPES["odd"], seed=4)
    (xs, lg, _), _ = _run_frames(sample_frame_triton, w, 2, 4, inv_t=torch.tensor([100.0, 0.5]))
    assert torch.equal(xs[0], lg[0].argmax(-1))
    assert not torch.equal(xs[1], lg[1].argmax(-1))


def _inputs(F=3, Q=7, H=100, B=2):
    w = _weights(F, Q, H)
    return dict(table=w["table"], cond=torch.randn(B, F, H), w3=w["w3"], b3=w["b3"], wo=w["wo"], bo=w["bo"],
                window=torch.randint(0, Q, (B, F)), uniforms=torch.rand(B, F), inv_temperature=torch.ones(B),
                argmax=False, out=torch.empty(B, F, dtype=torch.long))


BAD = {
    "cond-float64": ("cond", lambda a: a["cond"].double(), TypeError, "cond must be torch.float32"),
    "cond-shape": ("cond", lambda a: a["cond"][:, :2].contiguous(), ValueError, "cond must have shape (2, 3, 100)"),
    "w3-other-dtype": ("w3", lambda a: a["w3"].bfloat16(), TypeError, "w3 must be torch.float32"),
    "window-int32": ("window", lambda a: a["window"].int(), TypeError, "window must be torch.int64"),
    "table-2d": ("table", lambda a: a["table"][0], ValueError, "table must be (F, Q, H)"),
    "table-float16": ("table", lambda a: a["table"].half(), TypeError, "table must be float32 or bfloat16"),
    "uniforms-noncontig": ("uniforms", lambda a: torch.rand(3, 2).t(), ValueError, "uniforms must be contiguous"),
    "logits-out-shape": ("logits_out", lambda a: torch.empty(2, 3, 8), ValueError, "logits_out must have shape"),
}


@pytest.mark.parametrize("case", list(BAD))
def check_kernel_rejects_bad_inputs(case):
    name, make, exc, msg = BAD[case]
    args = _inputs()
    args[name] = make(args)
    with pytest.raises(exc, match=re.escape(msg)):
        sample_frame_triton(**args)


def check_launch_config():
    cfg = launch_config(B=3, F=16, Q=256, H=1024)
    assert cfg["BLOCK_B"] == 4 and cfg["BLOCK_H"] == 1024 and cfg["BLOCK_Q"] == 256
    assert cfg["BLOCK_N"] & (cfg["BLOCK_N"] - 1) == 0 and cfg["BLOCK_B"] * cfg["BLOCK_N"] * 1024 <= 8192
    assert launch_config(B=1, F=3, Q=7, H=100)["BLOCK_B"] == 1
    with pytest.raises(ValueError, match="block_b must be a power of two"):
        launch_config(B=3, F=3, Q=7, H=100, block_b=3)



def _model_cases():
    for rnn in ("lstm", "gru"):
        for B in (1, 3):
            yield pytest.param(ODD, rnn, B, 3, id=f"odd-{rnn}-B{B}")
    yield pytest.param(dict(ODD, skip=False), "gru", 3, 3, id="odd-gru-noskip-B3")
    yield pytest.param({}, "lstm", 3, 2, id="tiny-lstm-B3")


@pytest.mark.parametrize("over,rnn,B,n_frames", list(_model_cases()))
def check_backend_generation_matches_eager(over, rnn, B, n_frames):
    """Whole generations of the triton backend against the eager model, frame by frame: same
    integers, logits within fp32 tolerance, and the same state (window, h, c)."""
    cfg = SampleRNNConfig.from_name("tiny", rnn_type=rnn, **over)
    model = random_model(cfg)
    F, Q = cfg.frame_size, cfg.q_levels
    backends = [make_backend("triton", model, "cpu"), make_backend("eager", model)]
    window = torch.randint(0, Q, (B, F))
    states = [DecodeState(model.initial_state(B), window.clone()) for _ in backends]
    inv_t = torch.linspace(0.8, 1.25, B)
    for _ in range(n_frames):
        u = torch.rand(B, F)
        runs = []
        for be, st in zip(backends, states):
            lg = torch.full((B, F, Q), float("nan"))  # poisoned
            runs.append((be.step_frame(st, u, inv_t, logits_out=lg), lg, st.window))
        _compare(*runs, u, inv_t, atol=1e-4)
        assert torch.equal(runs[0][0], runs[1][0]), "a near-tie changed the draw: the states would differ"
    assert torch.equal(states[0].window, states[1].window)
    torch.testing.assert_close(states[0].rnn.h, states[1].rnn.h, rtol=1e-4, atol=1e-5)
    if rnn == "lstm":
        torch.testing.assert_close(states[0].rnn.c, states[1].rnn.c, rtol=1e-4, atol=1e-5)


def _forced_logits(be, model, x, B):
    """Teacher-forced logits (B, T, Q) of backend `be` on samples x (B, F + T) (on the model's
    device), written into slices (views) of one poisoned buffer; also the final state."""
    F, Q, dev = model.cfg.frame_size, model.cfg.q_levels, x.device
    state = DecodeState(model.initial_state(B), x[:, :F].clone())
    got = torch.full((B, x.shape[1] - F, Q), float("nan"), device=dev)
    for n in range(x.shape[1] // F - 1):
        tgt = x[:, F * (n + 1): F * (n + 2)]
        drawn = be.step_frame(state, torch.rand(B, F, device=dev), torch.ones(B, device=dev), forced=tgt,
                              logits_out=got[:, n * F:(n + 1) * F])
        assert torch.equal(drawn, tgt)
    assert torch.equal(state.window, x[:, -F:])
    return got, state


@pytest.mark.parametrize("rnn,B", [("lstm", 1), ("gru", 3)], ids=["lstm-B1", "gru-B3"])
def check_backend_teacher_forced_logits_match_parallel_forward(rnn, B):
    cfg = SampleRNNConfig(rnn_type=rnn, **ODD)
    model = random_model(cfg)
    x = torch.randint(0, cfg.q_levels, (B, cfg.frame_size * 6))
    with torch.no_grad():
        ref_logits, ref_state = model(x, model.initial_state(B))
    got, state = _forced_logits(make_backend("triton", model, "cpu"), model, x, B)
    torch.testing.assert_close(got, ref_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(state.rnn.h, ref_state.h, rtol=1e-4, atol=1e-5)


def check_backend_bf16_error_at_most_twice_plain_pytorch():
    """bf16 weights: the triton backend's logits error against the fp32 model is at most twice
    the `ref` backend's (plain PyTorch on the same bf16 weights), flash-attention's rule."""
    cfg = SampleRNNConfig(**ODD)
    model = random_model(cfg, seed=5)
    B = 3
    x = torch.randint(0, cfg.q_levels, (B, cfg.frame_size * 5))
    with torch.no_grad():
        exact = model(x, model.initial_state(B))[0]
    opts = dict(dtype=torch.bfloat16, frame_dtype=torch.bfloat16)
    err = (_forced_logits(make_backend("triton", model, "cpu", **opts), model, x, B)[0] - exact).abs().max().item()
    err_ref = (_forced_logits(make_backend("ref", model, "cpu", **opts), model, x, B)[0] - exact).abs().max().item()
    assert 0 < err <= 2 * err_ref + 1e-6, f"triton bf16 error {err:.2e} vs plain PyTorch's {err_ref:.2e}"


def check_dispatch_and_availability(monkeypatch):
    ok, why = backend_status("triton", "cpu")
    assert ok and "interpreter" in why
    model = random_model(SampleRNNConfig(**ODD))
    with pytest.raises(ValueError, match="graphs=True but CUDA graphs need a CUDA device"):
        TritonBackend(model, "cpu", graphs=True)
    assert TritonBackend(model, "cpu").graphs is False
    monkeypatch.delenv("TRITON_INTERPRET")
    ok, why = TritonBackend.is_available(torch.device("cpu"))
    assert not ok and "needs a CUDA device" in why and "TRITON_INTERPRET=1" in why
    assert "triton" not in _AUTO_ORDER["cpu"]  # auto on a CPU never picks the interpreter
    with pytest.raises(RuntimeError, match="triton backend unavailable"):
        TritonBackend(model, "cpu")


def check_kernel_mode_matches_triton():
    from fastsrnn.kernels import sample_frame as kmod

    assert kmod.INTERPRETED and kmod._MODE_MISMATCH is None
    assert type(kmod._sample_frame_kernel).__name__ == "InterpretedFunction"

"""Every implementation of each op against the op's torch reference, over shapes.

Implementations are found, not listed: every ``sample_frame_<impl>`` function in a module of
fastsrnn/ops/ (a new one is tested the day it appears). Where each runs:
``ref`` and ``cpu`` (and its variants: one thread, the AVX2 and portable builds) on the CPU; a
Triton one on the CPU interpreter (marked ``interpret``: run by
``TRITON_INTERPRET=1 python -m pytest -m interpret``) and compiled on a GPU (``<impl>-gpu``);
a CUDA one on a GPU. GPU cases skip without one.

sample_frame, fp32: the same integers as sample_frame_ref (a mismatch only at a CDF near-tie, its
margin reported), logits within fp32 tolerance, the same updated window, outputs poisoned before
every call. bf16: along the implementation's own draws, its logits error against the fp32
reference at most twice plain PyTorch's in bf16 (flash-attention's rule), and every draw the
inverse-CDF sample of its own logits. Bad inputs: every launcher raises the same exception with
its own name as prefix. The frame step's implementations: tests/test_frame_step.py.
"""
from __future__ import annotations

import inspect
import re
from typing import Callable, NamedTuple

import pytest
import torch
from helpers import (
    BAD_INPUTS,
    INTERPRETED,
    MARGIN,
    ON_GPU,
    assert_written,
    compare,
    expect_bad_input,
    find_op_impls,
    isa_extension,
    make_weights,
    need_triton,
    on_device,
    run_frames,
)

from fastsrnn.ops.frame_step import torch_linear
from fastsrnn.ops.sample_frame import sample_frame_cpu, sample_frame_ref
from fastsrnn.ops.sampling import Sampling, cdf_margin, sample_ref

# ---------------------------------------------------------------------------------------------
# The implementations


SAMPLE_FRAME, _BROKEN = find_op_impls("sample_frame")


class Impl(NamedTuple):
    name: str  # in test ids
    fn: Callable  # the op's contract, on `device` tensors
    device: str
    opts: dict  # the op's own keyword options
    marks: tuple
    variant: bool = False  # of another implementation (threads, ISA): fewer shapes


def _isa_sample_frame(isa: str) -> Callable:
    def run(table, cond, w3, b3, wo, bo, window, u, sampling, out, forced=None, logits_out=None,
            num_threads=2):
        isa_extension(isa).sample_frame(table, cond, w3, b3, wo, bo, window, u, sampling, out, forced,
                                        logits_out, num_threads)
    return run


def _impls(found: dict, isa_variant: Callable) -> list:
    """Where and how each found implementation runs (module docstring)."""
    out = []
    for name, fn in sorted(found.items()):
        if "triton" in name:
            out += [Impl(name, fn, "cpu", {}, INTERPRETED), Impl(f"{name}-gpu", fn, "cuda", {}, ON_GPU)]
        elif "cuda" in name:
            out.append(Impl(name, fn, "cuda", {}, ON_GPU))
        elif name == "cpu":
            out += [Impl("cpu", fn, "cpu", dict(num_threads=2), ()),
                    Impl("cpu-1t", fn, "cpu", dict(num_threads=1), (), variant=True)]
            out += [Impl(f"cpu-{isa}", isa_variant(isa), "cpu", {}, (pytest.mark.slow,), variant=True)
                    for isa in ("avx2", "generic")]
        else:
            out.append(Impl(name, fn, "cpu", {}, ()))
    return out


SF_IMPLS = _impls(SAMPLE_FRAME, _isa_sample_frame)


def _interpreted(impl: Impl) -> bool:
    return pytest.mark.interpret in impl.marks


def test_ops_modules_import():
    assert not _BROKEN, f"modules of fastsrnn/ops failed to import: {_BROKEN}"


def test_known_implementations_are_found():
    """A rename must not silently drop an implementation from these tests."""
    assert {"ref", "cpu", "triton", "cuda"} <= set(SAMPLE_FRAME), sorted(SAMPLE_FRAME)
    assert SAMPLE_FRAME["ref"] is sample_frame_ref


def _prepare(impl: Impl) -> None:
    if "triton" in impl.name:
        need_triton()


# ---------------------------------------------------------------------------------------------
# sample_frame

SHAPES = {"odd": (3, 7, 100), "odd-H5": (5, 3, 5), "tiny": (16, 256, 128), "small": (4, 32, 64),
          "paper": (16, 256, 1024)}
# (shape, B): odd sizes at B = 1 and 3, the tiny preset, and B = 16, 32 (the Triton kernel's
# tensor-core path) on a shape small enough for the interpreter.
COMMON = [("odd", 1), ("odd", 3), ("odd-H5", 3), ("tiny", 3), ("small", 16), ("small", 32)]
EXTRA = {"cpu": [("odd", 8), ("tiny", 8), ("tiny", 16), ("tiny", 32)],
         "cuda": [("odd", 9), ("odd-H5", 200), ("tiny", 16), ("tiny", 200), ("paper", 1), ("paper", 3)]}
VARIANT = [("odd", 1), ("odd", 3), ("odd-H5", 3), ("tiny", 3), ("tiny", 16)]


def _frames(impl: Impl, shape: str) -> int:
    return 2 if _interpreted(impl) and shape in ("tiny", "small") else 4


def _atol(impl: Impl) -> float:
    return 1e-4 if impl.device == "cuda" else 1e-5  # fused multiply-adds on a GPU


def _sf_cases():
    for impl in SF_IMPLS:
        if impl.variant:
            shapes = VARIANT
        elif impl.device == "cuda":
            shapes = COMMON + EXTRA["cuda"]
        else:
            shapes = COMMON + (EXTRA["cpu"] if impl.name == "cpu" else [])
        for shape, B in shapes:
            for dtype in ("fp32", "bf16"):
                yield pytest.param(impl, shape, B, dtype, id=f"{impl.name}-{shape}-B{B}-{dtype}", marks=impl.marks)


def sample_frame_plain_bf16(table, cond, w3, b3, wo, bo, window, uniforms, sampling, out,
                            forced=None, logits_out=None) -> None:
    """sample_frame_ref as plain PyTorch runs it in bf16: the products' inputs and outputs
    rounded to bf16 (torch_linear's bf16 path, as frame_step_ref's), fp32 sums elsewhere."""
    F = table.shape[0]
    slots = torch.arange(F)
    for j in range(F):
        a2 = torch.relu(cond[:, j] + table[slots, window].float().sum(dim=1))
        logits = torch_linear(torch.relu(torch_linear(a2, w3, b3)), wo, bo)
        if logits_out is not None:
            logits_out[:, j] = logits
        x = forced[:, j] if forced is not None else sample_ref(logits, uniforms[:, j], sampling)
        out[:, j] = x
        window.copy_(torch.cat([window[:, 1:], x[:, None]], dim=1))


def _assert_draws_follow_own_logits(got) -> None:
    """Each draw is the inverse-CDF sample of the op's own logits (up to a CDF near-tie)."""
    for t in range(got.samples.shape[1]):
        want = sample_ref(got.logits[:, t], got.uniforms[:, t], got.sampling)
        for b in (got.samples[:, t] != want).nonzero().flatten().tolist():
            m = cdf_margin(got.logits[b, t][None], got.uniforms[b, t][None], got.sampling.rows([b])).item()
            assert m < MARGIN, f"seq {b} step {t}: drew {int(got.samples[b, t])}, its logits give {int(want[b])}"


def _widens_bf16_exactly(impl: Impl, B: int) -> bool:
    """bf16 weights widened exactly to fp32, fp32 activations: the logits of sample_frame_ref on
    the same bf16 weights, at fp32 tolerance. Not promised by a Triton kernel at B >= 16 (its
    tensor-core path may round activations to bf16): the 2x rule alone binds it there."""
    return not ("triton" in impl.name and B >= 16)


@pytest.mark.parametrize("impl,shape,B,dtype", list(_sf_cases()))
def test_sample_frame(impl, shape, B, dtype):
    _prepare(impl)
    F, Q, H = SHAPES[shape]
    fn, n = on_device(impl.fn, impl.device), _frames(impl, shape)
    s = Sampling(torch.linspace(0.5, 2.0, B))  # per-sequence temperature
    w32 = make_weights(F, Q, H)
    if dtype == "fp32":
        got = run_frames(fn, w32, B, n, s, **impl.opts)
        compare(got, run_frames(sample_frame_ref, w32, B, n, s), atol=_atol(impl))
        return
    w16 = make_weights(F, Q, H, torch.bfloat16)
    got = run_frames(fn, w16, B, n, s, **impl.opts)
    assert_written(got, Q)
    _assert_draws_follow_own_logits(got)
    # The same frames fed the op's draws: the fp32 reference, and plain PyTorch in bf16.
    exact = run_frames(sample_frame_ref, w32, B, n, s, forced=got.samples)
    plain = run_frames(sample_frame_plain_bf16, w16, B, n, s, forced=got.samples)
    assert torch.equal(got.window, exact.window)
    err = (got.logits - exact.logits).abs().max().item()
    err_plain = (plain.logits - exact.logits).abs().max().item()
    assert err <= 2 * err_plain + 1e-6, f"bf16 logits error {err:.2e}, plain PyTorch's {err_plain:.2e}"
    if _widens_bf16_exactly(impl, B):
        same = run_frames(sample_frame_ref, w16, B, n, s, forced=got.samples)
        torch.testing.assert_close(got.logits, same.logits, rtol=1e-5, atol=_atol(impl))


def _impl_params(impls, pred=lambda impl: True, modes=None):
    """One parameter per implementation (``impl``), or per implementation and mode (``impl, mode``)."""
    if modes is None:
        return [pytest.param(impl, id=impl.name, marks=impl.marks) for impl in impls if pred(impl)]
    return [pytest.param(impl, m, id=f"{impl.name}-{m}", marks=impl.marks)
            for impl in impls if pred(impl) for m in modes]


@pytest.mark.parametrize("impl,mode", _impl_params(SF_IMPLS, modes=("argmax", "forced")))
def test_sample_frame_argmax_and_forced(impl, mode):
    """Argmax draws the first maximum; forced samples are fed instead of drawn (teacher forcing)."""
    _prepare(impl)
    shape = "odd" if _interpreted(impl) else "tiny"
    w = make_weights(*SHAPES[shape], seed=3)
    kw = dict(sampling=Sampling(torch.tensor([0.7, 1.0, 1.9]), argmax=mode == "argmax"), forced=mode == "forced")
    got = run_frames(on_device(impl.fn, impl.device), w, 3, 3, **kw, **impl.opts)
    want = run_frames(sample_frame_ref, w, 3, 3, **kw)
    assert torch.equal(got.samples, want.samples) and torch.equal(got.window, want.window)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=_atol(impl))
    if mode == "argmax":
        assert torch.equal(got.samples, got.logits.argmax(-1))


@pytest.mark.parametrize("impl", _impl_params(SF_IMPLS))
def test_sample_frame_temperature_is_per_sequence(impl):
    """A cold sequence (inv_t 100) draws the argmax; a warm one (inv_t 0.5) does not, always."""
    _prepare(impl)
    w = make_weights(*SHAPES["odd"], seed=4)
    got = run_frames(on_device(impl.fn, impl.device), w, 2, 4, Sampling(torch.tensor([100.0, 0.5])), **impl.opts)
    assert torch.equal(got.samples[0], got.logits[0].argmax(-1))
    assert not torch.equal(got.samples[1], got.logits[1].argmax(-1))


# top-k / top-p (docs/DESIGN.md §4): (id, top_k, top_p)
CUTS = [("k3", 3, 1.0), ("p0.8", 0, 0.8), ("k5-p0.6", 5, 0.6)]


def _cut_cases():
    """Every implementation on odd sizes at B = 3; the compiled ones also on the tiny preset (Q 256)
    and B = 16 (the Triton split path); the Triton kernels' split path at B = 3 too."""
    for impl in SF_IMPLS:
        cases = [("odd", 3, {})]
        if not impl.variant:
            cases += [("small", 16, {})] + ([] if _interpreted(impl) else [("tiny", 3, {})])
        if "triton" in impl.name:
            cases += [("odd", 3, dict(path="split"))]
        for shape, B, opts in cases:
            for name, k, p in CUTS:
                tag = "".join(f"-{v}" for v in opts.values())
                yield pytest.param(impl, shape, B, opts, k, p, id=f"{impl.name}-{shape}-B{B}{tag}-{name}",
                                   marks=impl.marks)


@pytest.mark.parametrize("impl,shape,B,opts,k,p", list(_cut_cases()))
def test_sample_frame_cut_offs(impl, shape, B, opts, k, p):
    """top-k and top-p draw the reference's integers (a mismatch only at a near-tie of the CDF or
    of a cut, cdf_margin), and the cut changes some draw (so a kernel that ignored it would fail)."""
    _prepare(impl)
    F, Q, H = SHAPES[shape]
    w = make_weights(F, Q, H, seed=6)
    s = Sampling(torch.linspace(0.5, 2.0, B), top_k=k, top_p=p)
    n = _frames(impl, shape)
    got = run_frames(on_device(impl.fn, impl.device), w, B, n, s, **impl.opts, **opts)
    want = run_frames(sample_frame_ref, w, B, n, s)
    compare(got, want, atol=_atol(impl))
    rows = Sampling(s.inv_temperature.repeat_interleave(F * n))  # (B * T,): the same draws, uncut
    uncut = sample_ref(want.logits.flatten(0, 1), want.uniforms.flatten(), rows).view(B, -1)
    assert (uncut != want.samples).any(), "the cut changed no draw: the case tests nothing"


# Logits = bo exactly when Wo = 0 (a3 Wo^T sums zeros): ties that every kernel sees bit for bit.
TIED_BO = [1.0, 2.5, 2.5, 0.5, 2.0, 2.0, -1.0]
# (top_k, top_p, the levels kept at every inverse temperature of the test)
TIED_CUTS = [(1, 1.0, {1, 2}), (3, 1.0, {1, 2, 4, 5}), (0, 0.5, None), (2, 0.9, {1, 2})]


@pytest.mark.parametrize("k,p,kept", TIED_CUTS, ids=[f"k{k}-p{p}" for k, p, _ in TIED_CUTS])
@pytest.mark.parametrize("impl", _impl_params(SF_IMPLS, lambda impl: not impl.variant))
def test_sample_frame_cut_keeps_ties(impl, k, p, kept):
    """Exactly tied logits at the cut: every level tied with the k-th highest is kept, and top-p
    takes a tie whole; every implementation draws the reference's integers, bit for bit."""
    _prepare(impl)
    F, Q, H = SHAPES["odd"]
    w = make_weights(F, Q, H, seed=7)
    w["wo"], w["bo"] = torch.zeros(Q, H), torch.tensor(TIED_BO)
    inv_t = torch.tensor([0.5, 1.0, 2.0])
    s = Sampling(inv_t, top_k=k, top_p=p)
    for b in range(3):  # top_p far from every upper set's mass fraction: no near-tie by design
        e = torch.exp((torch.tensor(TIED_BO, dtype=torch.float64) - 2.5) * float(inv_t[b]))
        fracs = torch.tensor([e[e >= e[i]].sum() / e.sum() for i in range(Q)])
        assert p == 1.0 or (fracs - p).abs().min() > 1e-3, "pick a top_p away from the mass fractions"
    got = run_frames(on_device(impl.fn, impl.device), w, 3, 2, s, **impl.opts)
    want = run_frames(sample_frame_ref, w, 3, 2, s)
    assert torch.equal(got.logits, want.logits), "Wo = 0 must give logits = bo exactly"
    assert torch.equal(got.samples, want.samples) and torch.equal(got.window, want.window)
    assert set(got.samples.flatten().tolist()) <= (kept or set(range(Q)))
    if kept is None:  # top-p 0.5: the two 2.5 at inverse temperature 2, more levels when warmer
        assert set(got.samples[2].tolist()) <= {1, 2} and not set(got.samples[0].tolist()) <= {1, 2}


@pytest.mark.parametrize("block_b", [1, 2, 8], ids=lambda b: f"block{b}")
@pytest.mark.parametrize("impl", _impl_params(SF_IMPLS, lambda impl: "triton" in impl.name))
def test_sample_frame_triton_block_sizes(impl, block_b):
    """Programs of 1, 2 (the last one half masked) and 8 (five rows masked) sequences."""
    _prepare(impl)
    w = make_weights(*SHAPES["odd"], seed=2)
    s = Sampling(torch.tensor([0.8, 1.0, 1.3]))
    got = run_frames(on_device(impl.fn, impl.device), w, 3, 3, s, block_b=block_b)
    compare(got, run_frames(sample_frame_ref, w, 3, 3, s), atol=_atol(impl))


def _has_option(fn: Callable, name: str) -> bool:
    return name in inspect.signature(fn).parameters


# (path, B, block_b): each path of sample_frame_triton away from its default n_seq.
TRITON_PATHS = [("small", 16, None), ("split", 3, None), ("split", 16, 32)]


@pytest.mark.parametrize("path,B,block_b", TRITON_PATHS, ids=[f"{p}-B{b}" + (f"-block{k}" if k else "")
                                                             for p, b, k in TRITON_PATHS])
@pytest.mark.parametrize("impl", _impl_params(SF_IMPLS, lambda impl: "triton" in impl.name))
def test_sample_frame_triton_paths(impl, path, B, block_b):
    """Either path at any n_seq (the default picks by n_seq), masked rows included."""
    _prepare(impl)
    if not _has_option(impl.fn, "path"):
        pytest.fail(f"{impl.fn.__name__} has no `path` option any more: update this test")
    w = make_weights(*SHAPES["small"], seed=5)
    s = Sampling(torch.linspace(0.5, 2.0, B))
    got = run_frames(on_device(impl.fn, impl.device), w, B, 2, s, path=path, block_b=block_b)
    compare(got, run_frames(sample_frame_ref, w, B, 2, s), atol=_atol(impl))
    with pytest.raises(ValueError, match="sample_frame_triton: path must be 'split' or 'small'"):
        run_frames(impl.fn, w, B, 1, path="nonsense")


@pytest.mark.interpret
def test_sample_frame_triton_launch_config():
    """Tiles are powers of two; the small path's programs take at most 4 sequences unless told."""
    launch_config = need_triton().launch_config
    cfg = launch_config(B=3, F=16, Q=256, H=1024)
    assert cfg["BLOCK_B"] == 4 and cfg["BLOCK_Q"] == 256 and cfg["BLOCK_F"] == 16
    assert all(v & (v - 1) == 0 for k, v in cfg.items() if k.startswith("BLOCK_")), cfg
    assert launch_config(B=1, F=3, Q=7, H=100)["BLOCK_B"] == 1
    assert launch_config(B=3, F=3, Q=7, H=100, block_b=8)["BLOCK_B"] == 8
    with pytest.raises(ValueError, match="block_b must be a power of two"):
        launch_config(B=3, F=3, Q=7, H=100, block_b=3)


def _launcher_cases():
    """Every launcher (all but the reference), on CPU tensors: the argument check runs before
    anything is built or launched, so the cuda launcher's is tested without a GPU too."""
    for name, fn in sorted(SAMPLE_FRAME.items()):
        if name == "ref":
            continue
        for case in BAD_INPUTS:
            yield pytest.param(fn, case, id=f"{name}-{case}", marks=INTERPRETED if "triton" in name else ())


@pytest.mark.parametrize("fn,case", list(_launcher_cases()))
def test_sample_frame_rejects_bad_inputs(fn, case):
    if "triton" in fn.__name__:
        need_triton()
    expect_bad_input(fn, case)


def test_sample_frame_cpu_rejects_negative_threads():
    w = make_weights(*SHAPES["odd"])
    with pytest.raises(ValueError, match=re.escape("sample_frame_cpu: num_threads must be >= 0")):
        run_frames(sample_frame_cpu, w, 2, 1, num_threads=-1)

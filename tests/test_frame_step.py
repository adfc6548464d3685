"""The frame step: every implementation of ``frame_step`` against its torch twin frame_step_ref,
on every kind of frame tier, cell type and weight dtype; then the tests that are one
implementation's own (C++ argument checks, Triton launch variants and GPU compiles) and the
backends that step the frame tiers with them.

Implementations are found, not listed: every ``frame_step_<impl>`` function in a module of
fastsrnn/ops/ (a new one joins the table the day it appears). Where each runs: ``ref`` and
``cpu`` (and its variants: one thread, the AVX2 and portable builds) on the CPU; a Triton one on
the CPU interpreter (marked ``interpret``: ``TRITON_INTERPRET=1 python -m pytest -m interpret``)
and compiled on a GPU (``<impl>-gpu``, marked ``gpu``). GPU cases skip without one.

``test_frame_step`` is parametrized over implementation x tier x cell x dtype (ids
``<impl>-<tier>-<cell>-<dtype>-<shape>[-noskip]-L<layers>-B<batch>[-t<threads>]``). Tiers: a
2-tier model's bottom tier (``2tier``), and the bottom (conditioned: cond (B, H) before the frame
in layer 0's input), middle (conditioned, above the bottom) and top tier (S_k samples in,
frame_sizes[k] != S_k positions out) of 3- and 4-tier models. Every case steps the tier n times
from a random state on inputs laid out as the n-tier schedule passes them (the window a column
slice of the history, cond a view of one position of the tier above's output) and compares the
output and the in-place updated h, c:

- fp32 and int8 frame weights: against frame_step_ref on the same weights, within ~1e-5 relative
  (``close_rel``) or, for the shape table's cases (``tiny``, ``tiny-odd``), rtol 1e-5 and atol 1e-5
  (1e-4 on a GPU: fused multiply-adds);
- bf16 frame weights, one of three rules by case: ``widened`` (the C++ kernel widens bf16 exactly
  and sums in fp32: frame_step_ref with the same widened products, ~1e-5 relative); the 2x rule
  (flash-attention's): the error against the fp32 reference at most twice frame_step_ref's own
  on the bf16 weights (plain PyTorch's), with 1e-6 of slack for the shape table's cases;
- the Triton launches of every step: L + 2 launches (L + 1 without the skip sum), layer 0 reading
  a cond exactly when the tier is conditioned, x_in tiles looped exactly when the frame is wider
  than one.

Tolerances come from the arithmetic: fp32 sums in another order (1e-5), bf16 weights' own
rounding (the 2x rule), int8 weights widened exactly on both sides (fp32 tolerance).
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from types import SimpleNamespace
from typing import Callable, NamedTuple, Optional

import pytest
import torch
from helpers import (
    INTERPRETED,
    ODD,
    ON_GPU,
    close_rel,
    compile_problems,
    find_op_impls,
    frame_step_kernels,
    generate_and_compare,
    isa_extension,
    random_model,
    record_launches,
    tier_of,
)
from torch.utils._python_dispatch import TorchDispatchMode

import fastsrnn.backends.cpu as cpu_mod
from fastsrnn import SampleRNNConfig
from fastsrnn.backends import make_backend
from fastsrnn.backends.base import DecodeState
from fastsrnn.backends.fused_frame import FusedFrameBackend
from fastsrnn.config import RNN_TYPES
from fastsrnn.model import RNNState
from fastsrnn.ops.export import InferenceWeights, export_inference
from fastsrnn.ops.frame_step import (
    FusedFrameWeights,
    frame_step_cpu,
    frame_step_ref,
    frame_step_triton,
    int8_scales,
    linear_cpu,
    torch_linear,
)
from fastsrnn.ops.sampling import Sampling
from fastsrnn.ops.thresholds import CPU_STREAM_MAX_B

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}

# ---------------------------------------------------------------------------------------------
# The implementations


FRAME_STEP, _BROKEN = find_op_impls("frame_step")


class Impl(NamedTuple):
    name: str  # in test ids
    fn: Callable  # fn(weights, window, rnn, cond=..., **opts), weights in the layout fn takes
    device: str
    opts: dict  # the op's own keyword options
    marks: tuple
    variant: bool = False  # of another implementation (threads, ISA): fewer shapes


def _isa_frame_step(isa: str) -> Callable:
    """frame_step_cpu's contract in the CPU extension built for a narrower ISA than this CPU's
    (skips when the CPU lacks it; a failed build fails the test)."""
    def run(w, window, rnn, cond=None, num_threads=2):
        return isa_extension(isa).frame_step(w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.skip_w, w.skip_b, w.up_w, w.up_b,
                                             window.contiguous(), rnn.h, rnn.c, w.cfg.q_levels, num_threads,
                                             cond=None if cond is None else cond.contiguous(), **int8_scales(w))
    run.__name__ = f"frame_step_cpu_{isa}"
    return run


def _impls(found: dict) -> dict:
    """{name: Impl}: where and how each found implementation runs (module docstring)."""
    out = []
    for name, fn in sorted(found.items()):
        if "triton" in name:
            out += [Impl(name, fn, "cpu", {}, INTERPRETED), Impl(f"{name}-gpu", fn, "cuda", {}, ON_GPU)]
        elif "cuda" in name:
            out.append(Impl(name, fn, "cuda", {}, ON_GPU))
        elif name == "cpu":
            out += [Impl("cpu", fn, "cpu", dict(num_threads=2), ()),
                    Impl("cpu-1t", fn, "cpu", dict(num_threads=1), (), variant=True)]
            out += [Impl(f"cpu-{isa}", _isa_frame_step(isa), "cpu", {}, (pytest.mark.slow,), variant=True)
                    for isa in ("avx2", "generic")]
        else:
            out.append(Impl(name, fn, "cpu", {}, ()))
    return {impl.name: impl for impl in out}


IMPLS = _impls(FRAME_STEP)


def test_ops_modules_import():
    assert not _BROKEN, f"modules of fastsrnn/ops failed to import: {_BROKEN}"


def test_known_implementations_are_found():
    """A rename must not silently drop an implementation from these tests."""
    assert {"ref", "cpu", "triton"} <= set(FRAME_STEP), sorted(FRAME_STEP)
    assert FRAME_STEP["ref"] is frame_step_ref
    assert {"cpu-1t", "cpu-avx2", "cpu-generic", "triton-gpu"} <= set(IMPLS), sorted(IMPLS)


def _weights_for(fn: Callable, w):
    """The exported weights ``w`` in the layout ``fn`` takes: an implementation whose first
    argument is annotated with a class that has ``from_inference`` (e.g. frame_step_triton's
    FusedFrameWeights) gets them converted by it."""
    ann = next(iter(inspect.signature(fn).parameters.values())).annotation
    cls = fn.__globals__.get(ann) if isinstance(ann, str) else ann
    return cls.from_inference(w) if hasattr(cls, "from_inference") else w


# ---------------------------------------------------------------------------------------------
# The cases: implementation x tier x cell x dtype

# shape -> (preset or None for SampleRNNConfig's defaults, config fields). `tiny` and `tiny-odd`:
# the shape table of the op tests (the tiny preset; odd sizes F 3, Q 7, H 100); `odd`: the same
# odd sizes on the default config; `h<H>-<frame sizes>`: n-tier models at odd sizes (nothing a
# power of two or a multiple of a vector width), `h256`: a GPU-sized 4-tier model.
SHAPES = {
    "tiny": ("tiny", {}),
    "tiny-odd": ("tiny", ODD),
    "odd-L1": (None, dict(ODD, n_rnn=1)),
    "odd-L3": (None, ODD),
    "odd-L1-h64": (None, dict(ODD, n_rnn=1, dim=64)),
    "h37-3": (None, dict(frame_sizes=(3,), dim=37, q_levels=7, emb_size=5, n_rnn=3)),
    "h37-3x2": (None, dict(frame_sizes=(3, 2), dim=37, q_levels=7, emb_size=5, n_rnn=3)),
    "h53-3x2": (None, dict(frame_sizes=(3, 2), dim=53, q_levels=7, emb_size=5, n_rnn=3)),
    "h37-3x2x2": (None, dict(frame_sizes=(3, 2, 2), dim=37, q_levels=7, emb_size=5, n_rnn=3)),
    "h37-3x2x2-L1": (None, dict(frame_sizes=(3, 2, 2), dim=37, q_levels=7, emb_size=5, n_rnn=1)),
    "h23-3x2x3": (None, dict(frame_sizes=(3, 2, 3), dim=23, q_levels=7, emb_size=5, n_rnn=2)),
    "h256-16x4x2": (None, dict(frame_sizes=(16, 4, 2), dim=256, n_rnn=3)),
}


class Case(NamedTuple):
    impl: Impl
    shape: str
    k: int  # the tier: 0 the bottom
    cell: str
    skip: bool
    dtype: str
    B: int
    steps: int = 2
    tol: str = "rel"  # fp32/int8: "rel" (close_rel) or "abs" (rtol 1e-5, atol 1e-5; 1e-4 on a GPU)
    bf16: str = "2x"  # "widened" (the C++ kernel's products), "2x", "2x+" (2x with 1e-6 of slack)
    num_threads: Optional[int] = None
    seed: int = 0
    ref_on_device: bool = False  # the references on the implementation's device (else the CPU)

    def config(self) -> SampleRNNConfig:
        preset, fields = SHAPES[self.shape]
        fields = dict(fields, rnn_type=self.cell, skip=self.skip)
        return SampleRNNConfig.from_name(preset, **fields) if preset else SampleRNNConfig(**fields)

    def tier(self) -> str:
        n = len(SHAPES[self.shape][1].get("frame_sizes", (0,))) + 1
        if n == 2:
            return "2tier"
        return f"{n}tier-" + ("bottom" if self.k == 0 else "top" if self.k == n - 2 else "middle")

    def id(self) -> str:
        L = self.config().n_rnn
        threads = "" if self.num_threads is None else f"-t{self.num_threads}"
        shape = re.sub(r"-L\d+", "", self.shape)  # the layers are in the id anyway
        return (f"{self.impl.name}-{self.tier()}-{self.cell}-{self.dtype}-{shape}"
                f"{'' if self.skip else '-noskip'}-L{L}-B{self.B}{threads}{'' if self.seed == 0 else f'-s{self.seed}'}")


def _on(names, pred=lambda impl: True):
    return [IMPLS[n] for n in names if n in IMPLS and pred(IMPLS[n])]


def _cases():
    cells, skips = RNN_TYPES, (True, False)
    # The shape table (was test_ops.py's test_frame_step): every implementation, one step.
    odd = [("tiny-odd", cell, skip, B) for cell in cells for skip in skips for B in (1, 3)]
    table = odd + [("tiny", "lstm", True, 16), ("tiny", "gru", True, 32)]
    variant = odd[2:6] + table[-1:]
    for impl in IMPLS.values():
        for shape, cell, skip, B in (variant if impl.variant else table):
            yield Case(impl, shape, 0, cell, skip, "fp32", B, steps=1, tol="abs")
        for shape, cell, B in (("tiny-odd", "lstm", 3), ("tiny", "gru", 4), ("tiny", "lstm", 16)):
            yield Case(impl, shape, 0, cell, True, "bf16", B, steps=1, bf16="2x+")
    # A 2-tier model's frame tier on the Triton kernels (were test_frame_tier.py's): 1 and 3
    # layers, B 1, 3 and 16 (both product forms).
    for impl in _on(["triton"]):
        for cell in cells:
            for skip in skips:
                for B in (1, 3, 16):
                    for L in (1, 3):
                        yield Case(impl, f"odd-L{L}", 0, cell, skip, "fp32", B)
            for B in (1, 16):
                yield Case(impl, "odd-L3", 0, cell, True, "bf16", B, steps=3)
    # Every tier of 2-, 3- and 4-tier models in C++ (were test_ntier_cpu.py's), fp32, bf16, int8.
    for impl in _on(["cpu"]):
        for shape in ("h37-3", "h37-3x2", "h37-3x2x2"):
            for cell in cells:
                for skip in skips:
                    for dt in DTYPES:
                        for k in range(len(SHAPES[shape][1]["frame_sizes"])):
                            yield Case(impl, shape, k, cell, skip, dt, 3, steps=3, bf16="widened")
        for B in (1, 5):  # batch and threads
            for nt in (1, 3):
                for k in (0, 1):
                    yield Case(impl, "h53-3x2", k, "gru", True, "fp32", B, steps=3, num_threads=nt, seed=3)
        for k in range(3):  # one-layer tiers, int8
            yield Case(impl, "h37-3x2x2-L1", k, "lstm", False, "int8", 2, steps=3, seed=4)
        # int8 frame weights on the 2-tier model (were test_int8.py's)
        for cell in cells:
            for skip in skips:
                for B in (1, 3, 8):
                    yield Case(impl, "odd-L3", 0, cell, skip, "int8", B)
        yield Case(impl, "odd-L1-h64", 0, "lstm", True, "int8", 3, num_threads=1)
    for impl in _on(["cpu-avx2", "cpu-generic"]):  # every ISA build on int8 weights
        for cell, B in (("lstm", 1), ("gru", 3)):
            yield Case(impl, "odd-L3", 0, cell, True, "int8", B)
    # Every tier of a 4-tier model on the Triton kernels (were test_ntier_triton.py's).
    for impl in _on(["triton"]):
        for cell in cells:
            for skip in skips:
                for k in range(3):
                    for B in (1, 16):
                        yield Case(impl, "h23-3x2x3", k, cell, skip, "fp32", B)
            for B in (1, 16):
                for k in range(3):
                    yield Case(impl, "h23-3x2x3", k, cell, True, "bf16", B, steps=3)
    for impl in _on(["triton-gpu"]):  # F 16, S 64 and 128: upper frames loop over x_in tiles
        for cell, skip in (("lstm", True), ("gru", False), ("gru", True)):
            for B in (1, 3, 16, 128):
                for dt in ("fp32", "bf16"):
                    for k in range(3):
                        yield Case(impl, "h256-16x4x2", k, cell, skip, dt, B, steps=3, ref_on_device=True)


CASES = list(_cases())


def _inputs(cfg, k: int, B: int, n: int, seed: int):
    """n steps' (window, cond) of tier k as the n-tier schedule gives them (fastsrnn/backends/
    tiers.py): the window a column slice of a longer history (row stride > S), cond (B, H) a view
    of one position of a (B, 3, H) output (row stride 3H), None for an unconditioned tier."""
    S, conditioned = cfg.tier_samples(k), k + 1 < len(cfg.frame_sizes)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        hist = torch.randint(0, cfg.q_levels, (B, S + 5), generator=g)
        cond = torch.randn(B, 3, cfg.dim, generator=g)[:, 1] if conditioned else None
        out.append((hist[:, 2:2 + S], cond))
    return out


def _widened(x, w, b, scale=None):
    """torch_linear with bf16 weights widened exactly to fp32 and fp32 activations: the C++ kernel's
    product (torch_linear itself rounds x to bf16 for bf16 weights)."""
    return torch_linear(x, w.float() if w.dtype == torch.bfloat16 else w, b, scale=scale)


def _to(t, device):
    return None if t is None else t.to(device)


def _state_to(st: RNNState, device) -> RNNState:
    return RNNState(st.h.to(device).clone(), None if st.c is None else st.c.to(device).clone())


def _launch_rules(kmod, calls, cfg, fw, k: int, steps: int) -> None:
    """Per step L + 2 launches (L + 1 without a skip sum), layer 0 reading a cond exactly when the
    tier is conditioned, x_in tiles looped exactly when the frame is wider than one."""
    S, conditioned = cfg.tier_samples(k), k + 1 < len(cfg.frame_sizes)
    L = cfg.n_rnn
    per_step = L + (2 if fw.skip_w is not None else 1)
    assert len(calls) == steps * per_step, f"{len(calls)} launches in {steps} steps, want {per_step} a step"
    layers = [kw for kern, _, _, kw in calls if kern is kmod._layer_kernel]
    assert [kw["HAS_X"] for kw in layers[:L]] == [conditioned] + [True] * (L - 1)
    assert all(kw["XIN_LOOP"] == (S > kw["BLOCK_F"]) for kw in layers)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id(), marks=c.impl.marks) for c in CASES])
def test_frame_step(case: Case):
    """``steps`` steps of tier k: the output (B, n_out, H) and the in-place updated h, c against
    frame_step_ref (the rule per dtype in the module docstring)."""
    impl = case.impl
    kmod = frame_step_kernels() if "triton" in impl.name else None
    cfg = case.config()
    model = random_model(cfg, seed=case.seed)
    w32 = export_inference(model)
    w = w32 if case.dtype == "fp32" else export_inference(model, DTYPES[case.dtype])
    assert all(t.up_w.dtype == DTYPES[case.dtype] for t in [w, *w.upper])
    tw, S, n_out, conditioned = tier_of(cfg, w, case.k)
    tw32 = tier_of(cfg, w32, case.k)[0]
    assert n_out != S or case.k == 0
    dev, H = impl.device, cfg.dim
    rdev = dev if case.ref_on_device else "cpu"
    state0 = model.frame_tiers[case.k].initial_state(case.B, "random", torch.Generator().manual_seed(case.seed + 2))
    opts = dict(impl.opts) if case.num_threads is None else dict(impl.opts, num_threads=case.num_threads)
    weights = _weights_for(impl.fn, tw.to(dev))
    got = _state_to(state0, dev)
    ref, exact = _state_to(state0, rdev), _state_to(state0, rdev)  # frame_step_ref: same weights, fp32 weights
    tw_r, tw32_r = tw.to(rdev), tw32.to(rdev)
    mm = _widened if case.dtype == "bf16" and case.bf16 == "widened" else None
    calls, restore = record_launches(kmod) if kmod is not None else ([], lambda: None)
    try:
        for t, (window, cond) in enumerate(_inputs(cfg, case.k, case.B, case.steps, case.seed + 1)):
            h_ptr = got.h.data_ptr()
            out = impl.fn(weights, _to(window, dev), got, cond=_to(cond, dev), **opts).clone()
            assert out.shape == (case.B, n_out, H) and got.h.data_ptr() == h_ptr
            want = frame_step_ref(tw_r, _to(window, rdev), ref, mm=mm, cond=_to(cond, rdev))
            outs = [("output", out, want), ("h", got.h, ref.h), ("c", got.c, ref.c)]
            if case.dtype == "bf16" and case.bf16 != "widened":
                e = frame_step_ref(tw32_r, _to(window, rdev), exact, cond=_to(cond, rdev))
                slack = 1e-6 if case.bf16 == "2x+" else 0.0
                for (name, g, r), x in zip(outs, (e, exact.h, exact.c)):
                    if r is None:
                        continue
                    err_k, err_r = (g.to(rdev) - x).abs().max().item(), (r - x).abs().max().item()
                    assert err_r > 0, "bf16 weights should differ from fp32 ones"
                    assert err_k <= 2 * err_r + slack, (f"{name}, step {t}: bf16 error {err_k:.3g} "
                                                        f"> 2 x plain PyTorch's {err_r:.3g}")
                continue
            for name, g, r in outs:
                if r is None:
                    continue
                if case.tol == "abs":
                    torch.testing.assert_close(g.cpu(), r.cpu(), rtol=1e-5, atol=1e-4 if dev == "cuda" else 1e-5,
                                               msg=lambda m: f"{name}, step {t}: {m}")
                else:
                    close_rel(g.cpu(), r.cpu(), f"tier {case.k} {name}, step {t}")
    finally:
        restore()
    if kmod is not None:
        _launch_rules(kmod, calls, cfg, weights, case.k, case.steps)


# ---------------------------------------------------------------------------------------------
# The C++ frame step's own: argument checks, the top tier's shapes, its product


def _ntier_model(frame_sizes, rnn="lstm", skip=True, seed=0, **over):
    fields = dict(SHAPES["h37-3"][1], frame_sizes=frame_sizes, rnn_type=rnn, skip=skip, **over)
    return random_model(SampleRNNConfig(**fields), seed=seed)


def test_cpu_rejects_bad_inputs():
    """The C++ frame step checks its own arguments (op name 'frame_step')."""
    fn = FRAME_STEP["cpu"]
    cfg = SampleRNNConfig.from_name("tiny", **ODD)
    model = random_model(cfg)
    w = export_inference(model)
    st = model.initial_state(2)
    window = torch.zeros(2, cfg.frame_size, dtype=torch.long)
    with pytest.raises(ValueError, match=re.escape("frame_step: c must have shape")):
        fn(w, window, RNNState(st.h, st.c[:, :1].contiguous()))
    with pytest.raises(ValueError, match="frame_step: expected 3 layers"):
        fn(dataclasses.replace(w, w_ih=w.w_ih[:2]), window, st)
    with pytest.raises(TypeError, match=re.escape("frame_step: w_hh[i] must be Float")):
        fn(dataclasses.replace(w, w_hh=[t.double() for t in w.w_hh]), window, st)


def test_cpu_top_tier_shapes():
    """The top tier of frame_sizes (3, 2): a 6-sample frame in, 2 positions out, no cond."""
    model = _ntier_model((3, 2))
    w = export_inference(model)
    top = w.upper[0]
    H = model.cfg.dim
    assert top.w_ih[0].shape == (4 * H, 6) and top.up_w.shape == (2 * H, H)
    assert w.w_ih[0].shape == (4 * H, H + 3) and w.up_w.shape == (3 * H, H)
    st = model.frame_tiers[1].initial_state(2)
    assert frame_step_cpu(top, torch.zeros(2, 6, dtype=torch.long), st, 2).shape == (2, 2, H)


def test_cpu_bad_tier_arguments():
    """cond's shape and dtype, the frame's width, up_w's rows: readable errors."""
    model = _ntier_model((3, 2))
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


def test_linear_cpu_matches_torch():
    """The frame step's weight-streaming product: fp32, and bf16 weights widened exactly."""
    x, wt, b = torch.randn(3, 100), torch.randn(37, 100), torch.randn(37)
    torch.testing.assert_close(linear_cpu(x, wt, b, 2), torch.addmm(b, x, wt.t()), rtol=1e-5, atol=1e-5)
    got = linear_cpu(x, wt.bfloat16(), b, 2)
    torch.testing.assert_close(got, torch.addmm(b, x, wt.bfloat16().float().t()), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="linear: b must have shape"):
        linear_cpu(x, wt, b[:5], 0)


# ---------------------------------------------------------------------------------------------
# The Triton frame step's own (kernels/frame_step.py): launch variants, strides, bad inputs

# 4 tiers: bottom F 3 (conditioned, n_out 3); tier 1: S 6, n_out 2 (conditioned); top: S 18, n_out 3.
NTIER = SHAPES["h23-3x2x3"][1]
TIER_NAMES = {0: "bottom", 1: "middle", 2: "top"}


def _triton_model(rnn: str = "lstm", skip: bool = True, L: int = 2, seed: int = 0, **over):
    cfg = SampleRNNConfig(rnn_type=rnn, skip=skip, **dict(NTIER, n_rnn=L, **over))
    return cfg, random_model(cfg, seed=seed)


def _states(model, B: int, seed: int = 2):
    """Every tier's random state (RNNState per tier, bottom first), on the model's device."""
    return model.initial_state(B, "random", torch.Generator().manual_seed(seed)).tiers()


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


def _strided(t):
    """(L, B, H) values in a (B, L, H) buffer, seen as (L, B, H)."""
    if t is None:
        return None
    return torch.empty(t.shape[1], t.shape[0], t.shape[2]).copy_(t.transpose(0, 1)).transpose(0, 1)


@pytest.mark.interpret
@pytest.mark.parametrize("rnn", RNN_TYPES)
@pytest.mark.parametrize("B", [1, 16])
def test_triton_aligned_shapes_and_strided_state_2tier(rnn, B):
    """F 16, H 32 (a 2-tier model): the launches take the aligned, no-partial-tile variants
    (ALIGNED, EVEN); the state is a strided view (h, c as (B, L, H) buffers transposed), updated
    in place."""
    k = frame_step_kernels()
    cfg = SampleRNNConfig(rnn_type=rnn, skip=True, **dict(ODD, frame_size=16, dim=32))  # 3 layers
    model = random_model(cfg)
    w = export_inference(model)
    ref = model.frame_rnn.initial_state(B, "random", torch.Generator().manual_seed(2))
    got = RNNState(_strided(ref.h), _strided(ref.c))
    assert not got.h.is_contiguous() or B == 1
    g = torch.Generator().manual_seed(1)
    inputs = [(torch.randint(0, cfg.q_levels, (B, cfg.frame_size), generator=g), None) for _ in range(2)]
    calls, restore = record_launches(k)
    try:
        _steps_close(w, FusedFrameWeights.from_inference(w), ref, got, inputs, cfg.frame_size, "2-tier")
    finally:
        restore()
    assert calls and all(kw["EVEN"] and kw["ALIGNED"] for _, _, _, kw in calls)


@pytest.mark.interpret
@pytest.mark.parametrize("rnn", RNN_TYPES)
@pytest.mark.parametrize("B", [1, 16])
def test_triton_aligned_shapes_and_strided_views(rnn, B):
    """F 16, S 64, H 32: every launch of both tiers takes the aligned, no-partial-tile variants
    (ALIGNED, EVEN), with cond a view of the (B, 4, H) upper output, the window a slice of the
    history and h, c strided views (B, L, H buffers transposed), updated in place."""
    kmod = frame_step_kernels()
    cfg, model = _triton_model(rnn, True, 3, frame_sizes=(16, 4), dim=32)
    w = export_inference(model)
    for k, ref in enumerate(_states(model, B)):
        tw, S, n_out, conditioned = tier_of(cfg, w, k)
        g = torch.Generator().manual_seed(3)
        hist = torch.randint(0, cfg.q_levels, (B, 2 * S), generator=g)
        ups = torch.randn(B, 4, cfg.dim, generator=g)
        inputs = [(hist[:, j * S:(j + 1) * S], ups[:, j] if conditioned else None) for j in range(2)]
        got = RNNState(_strided(ref.h), _strided(ref.c))
        assert not got.h.is_contiguous() or B == 1
        calls, restore = record_launches(kmod)
        try:
            _steps_close(tw, FusedFrameWeights.from_inference(tw), ref, got, inputs, n_out, TIER_NAMES[2 * k])
        finally:
            restore()
        assert calls and all(kw["EVEN"] and kw["ALIGNED"] for _, _, _, kw in calls), f"tier {k}"


@pytest.mark.interpret
@pytest.mark.parametrize("rnn", RNN_TYPES)
@pytest.mark.parametrize("B", [5, 16])
def test_triton_wide_frame_loops_over_tiles(rnn, B):
    """A top tier whose frame (S 70) is wider than one x_in tile (BLOCK_F = BLOCK_K: 64 at B 5,
    16 at B 16, fp32): the layer kernels loop over the frame (XIN_LOOP); the conditioned bottom
    tier of the same model (F 5) does not. Both against frame_step_ref."""
    kmod = frame_step_kernels()
    cfg, model = _triton_model(rnn, True, 2, frame_sizes=(5, 14), dim=20)
    w = export_inference(model)
    states = _states(model, B)
    for k in (0, 1):
        tw, S, n_out, conditioned = tier_of(cfg, w, k)
        calls, restore = record_launches(kmod)
        try:
            _steps_close(tw, FusedFrameWeights.from_inference(tw), states[k], states[k].clone(),
                         _inputs(cfg, k, B, 2, 1), n_out, TIER_NAMES[2 * k])
        finally:
            restore()
        loops = {kw["XIN_LOOP"] for kern, _, _, kw in calls if kern is kmod._layer_kernel}
        assert loops == {k == 1}, f"tier {k} (S {S}): XIN_LOOP {loops}"


@pytest.mark.interpret
@pytest.mark.parametrize("rnn", RNN_TYPES)
def test_triton_cond_with_any_strides(rnn):
    """A cond whose columns are not adjacent (a transposed buffer) and a window of one column
    per row stride: the same results as dense copies."""
    frame_step_kernels()
    cfg, model = _triton_model(rnn, True)
    w, S, n_out, conditioned = tier_of(cfg, export_inference(model), 1)
    ref = _states(model, 3)[1]
    g = torch.Generator().manual_seed(4)
    inputs = [(torch.randint(0, cfg.q_levels, (S, 3), generator=g).t(), torch.randn(cfg.dim, 3, generator=g).t())
              for _ in range(2)]
    assert inputs[0][1].stride(1) != 1 and inputs[0][0].stride(1) != 1
    _steps_close(w, FusedFrameWeights.from_inference(w), ref, ref.clone(), inputs, n_out, "middle, transposed")


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
def test_triton_bad_inputs_are_refused(case):
    """A wrong cond (shape, dtype, device, missing or extra) or window raises a readable error
    naming frame_step_triton, and leaves the state untouched."""
    k = frame_step_kernels()
    tier, make, exc, msg = _bad_cases()[case]
    cfg, model = _triton_model("lstm", True)
    w, S, _, conditioned = tier_of(cfg, export_inference(model), tier)
    st = _states(model, 2)[tier]
    h, c = st.h.clone(), st.c.clone()
    g = torch.Generator().manual_seed(1)
    window, cond = make(torch.randint(0, cfg.q_levels, (2, S + 5), generator=g)[:, 2:2 + S],
                        torch.randn(2, 3, cfg.dim, generator=g)[:, 1])
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
    cfg, model = _triton_model("gru", True)
    w = export_inference(model)
    fws = [FusedFrameWeights.from_inference(tier_of(cfg, w, k)[0]) for k in TIER_NAMES]
    assert [fw.n_out for fw in fws] == [3, 2, 3]
    bufs = [fw.get_buffers(4, torch.device("cpu")) for fw in fws]
    assert [tuple(b["cond"].shape) for b in bufs] == [(4, 3, 23), (4, 2, 23), (4, 3, 23)]
    assert len({b["cond"].data_ptr() for b in bufs}) == 3 and len({b["hs"].data_ptr() for b in bufs}) == 3
    with pytest.raises(TypeError, match="all float32 or all bfloat16"):
        FusedFrameWeights.from_inference(w.to(frame_dtype=torch.int8).upper[0])
    with pytest.raises(TypeError, match="all float32 or all bfloat16"):
        FusedFrameWeights.from_inference(w.to(frame_dtype=torch.int8))


# ---------------------------------------------------------------------------------------------
# The Triton kernels compiled for sm_90 / sm_80 without a GPU (meta tensors: no memory, no device)

def _meta_tier(cfg, S: int, conditioned: bool, n_out: int, dtype, device="meta"):
    """Tier weights (the attributes FusedFrameWeights reads) as tensors of the real shapes."""
    H, L, G = cfg.dim, cfg.n_rnn, cfg.gates
    skip = cfg.skip and L > 1
    m = lambda *s: torch.zeros(*s, dtype=dtype, device=device)  # noqa: E731
    f = lambda *s: torch.zeros(*s, device=device)  # noqa: E731
    ins = [S + (H if conditioned else 0)] + [H + S if skip else H] * (L - 1)
    return SimpleNamespace(cfg=cfg, w_ih=[m(G * H, i) for i in ins], w_hh=[m(G * H, H) for _ in ins],
                           b_ih=[f(G * H) for _ in ins], b_hh=[f(G * H) for _ in ins],
                           skip_w=[m(H, H) for _ in range(L if skip else 0)], skip_b=f(H) if skip else None,
                           up_w=m(n_out * H, H), up_b=f(n_out * H))


def _meta_weights(cfg: SampleRNNConfig, dtype: torch.dtype, device="meta") -> InferenceWeights:
    """A 2-tier model's InferenceWeights of the real shapes (zeros)."""
    F, H, L, G, Q = cfg.frame_size, cfg.dim, cfg.n_rnn, cfg.gates, cfg.q_levels
    t = _meta_tier(cfg, F, False, F, dtype, device)
    f = lambda *s: torch.zeros(*s, device=device)  # noqa: E731
    return InferenceWeights(
        cfg=cfg, w_ih=t.w_ih, w_hh=t.w_hh, b_ih=t.b_ih, b_hh=t.b_hh, h0=f(L, 1, H), c0=f(L, 1, H) if G == 4 else None,
        skip_w=t.skip_w, skip_b=t.skip_b, up_w=t.up_w, up_b=t.up_b, table=f(F, Q, H), w3=f(H, H), b3=f(H),
        wo=f(Q, H), bo=f(Q))


def _record(fw, cfg, B: int, S: int, cond, device="meta", counter=None):
    """The launches (kernel, grid, args, kwargs) of one frame step; launched nothing."""
    k = frame_step_kernels()
    L, H = cfg.n_rnn, cfg.dim
    z = lambda: torch.zeros(L, B, H, device=device)  # noqa: E731
    state = RNNState(z(), z() if cfg.gates == 4 else None)
    window = torch.zeros(B, S, dtype=torch.int64, device=device)
    calls, restore = record_launches(k, run=False)
    try:
        frame_step_triton(fw, window, state, cond)  # buffers allocated here
        calls.clear()
        if counter is None:
            frame_step_triton(fw, window, state, cond)
        else:
            with counter:
                frame_step_triton(fw, window, state, cond)
    finally:
        restore()
    return calls


def _compile_cases():
    cases = [("dadabots-2tier", (), B, dt) for B in (1, 16, 128) for dt in ("fp32", "bf16")]
    cases += [("dadabots-2tier-gru", (), 1, "bf16"), ("dadabots-2tier-gru", (), 128, "bf16")]
    cases += [("samplernn-pytorch-3tier", (), B, dt) for B in (1, 128) for dt in ("fp32", "bf16")]
    cases += [("tiny-3tier", (), 16, "bf16"), ("prism-3tier", (16, 4, 4), 1, "bf16"),
              ("prism-3tier", (16, 4, 4), 128, "bf16")]  # (16, 4, 4): the top tier's S 256 loops (XIN_LOOP)
    return [pytest.param(p, fs, B, dt, id=f"{p}{'-' + 'x'.join(map(str, fs)) if fs else ''}-B{B}-{dt}")
            for p, fs, B, dt in cases]


@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("preset,frame_sizes,B,wdt", _compile_cases())
def test_triton_kernels_compile_for_gpu(preset, frame_sizes, B, wdt, arch):
    """Every launch of every tier's step at the preset's shapes (conditioned layer 0, wide
    frames), with the launcher's tiles and warps, through Triton's whole compiler for sm_<arch>:
    no spills, shared memory within the limit."""
    k = frame_step_kernels()
    if type(k._layer_kernel).__name__ == "InterpretedFunction":
        pytest.skip("this process runs Triton's interpreter (TRITON_INTERPRET=1)")
    cfg = SampleRNNConfig.from_name(preset, **({"frame_sizes": frame_sizes} if frame_sizes else {}))
    dtype = torch.bfloat16 if wdt == "bf16" else torch.float32
    seen, problems = set(), []
    n_up = len(cfg.frame_sizes) - 1
    for t in range(len(cfg.frame_sizes)):
        S, conditioned = cfg.tier_samples(t), t < n_up
        n_out = cfg.frame_size if t == 0 else cfg.frame_sizes[t]
        fw = FusedFrameWeights.from_inference(_meta_tier(cfg, S, conditioned, n_out, dtype))
        cond = torch.zeros(B, cfg.dim, device="meta") if conditioned else None
        calls = _record(fw, cfg, B, S, cond)
        assert len(calls) == cfg.n_rnn + (2 if fw.skip_w is not None else 1)
        problems += compile_problems(calls, arch, f"{preset} tier {t} B={B} {wdt}", seen)
    assert not problems, "\n".join(problems)


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


MAX_OPS = 15  # torch ops + Triton launches of one frame step (issue 9)


@pytest.mark.parametrize("rnn", RNN_TYPES)
@pytest.mark.parametrize("wdt", ["fp32", "bf16"])
def test_triton_op_count(rnn, wdt):
    """One frame step of a dadabots-2tier-shaped tier (5 layers, skip; H 64: the counts do not
    depend on H): torch ops + Triton launches of the fused path <= 15. The launches are counted,
    not run (CPU tensors, any Triton mode); the eager frame_step_ref's count is printed."""
    dtype = torch.bfloat16 if wdt == "bf16" else torch.float32
    cfg = SampleRNNConfig(rnn_type=rnn, dim=64, frame_size=16, n_rnn=5, skip=True)
    counter = _OpCounter()
    fw = FusedFrameWeights.from_inference(_meta_weights(cfg, dtype, "cpu"))
    calls = _record(fw, cfg, 3, 16, None, device="cpu", counter=counter)
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


# ---------------------------------------------------------------------------------------------
# The backends that step the frame tiers: folded (the torch twins, frame_step_ref bit for bit),
# the fused frame tier (FusedFrameBackend, under triton and cuda: the Triton kernels on every
# tier; int8 frame weights the reference) and cpu (the C++ step on every tier up to a batch size)


def test_folded_backend_on_cpu_is_the_reference():
    """The folded backend on the CPU keeps the eager frame step, bit for bit."""
    cfg = SampleRNNConfig(rnn_type="lstm", skip=True, **ODD)  # 3 layers
    model = random_model(cfg)
    st = model.frame_rnn.initial_state(3, "random", torch.Generator().manual_seed(2))
    backend = make_backend("folded", model)
    window = torch.randint(0, cfg.q_levels, (3, cfg.frame_size), generator=torch.Generator().manual_seed(1))
    a, b = st.clone(), st.clone()
    got = backend.frame_step(DecodeState(a, window.clone()))
    want = frame_step_ref(backend.w, window, b)
    assert torch.equal(got, want) and torch.equal(a.h, b.h) and torch.equal(a.c, b.c)


def test_int8_frame_weights_take_the_reference_step():
    """int8 frame weights have no Triton kernel: FusedFrameWeights refuses them, and the fused
    frame backend (on any device) runs frame_step_ref, which dequantizes them."""
    cfg = SampleRNNConfig(rnn_type="gru", skip=True, **ODD)
    model = random_model(cfg)
    st = model.frame_rnn.initial_state(3, "random", torch.Generator().manual_seed(2))
    with pytest.raises(TypeError, match="all float32 or all bfloat16"):
        FusedFrameWeights.from_inference(export_inference(model).to(frame_dtype=torch.int8))
    backend = FusedFrameBackend(model, "cpu", frame_dtype=torch.int8)
    window = torch.randint(0, cfg.q_levels, (3, cfg.frame_size), generator=torch.Generator().manual_seed(1))
    a, b = st.clone(), st.clone()
    got = backend.frame_step(DecodeState(a, window.clone()))
    assert backend.w.int8 and backend.__dict__.get("_fused_frame") is None
    assert torch.equal(got, frame_step_ref(backend.w, window, b)) and torch.equal(a.h, b.h)


def _backend_run(be, model, B: int, n_frames: int, seed: int = 5):
    """n_frames teacher-forced frames of backend ``be`` from a random history and state (on the
    model's device): per frame the logits and every tier's h, c and upper output, on the CPU."""
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
@pytest.mark.parametrize("rnn", RNN_TYPES)
def test_fused_frame_backend_steps_every_tier_with_the_kernels(rnn):
    """FusedFrameBackend.tier_step on the fused path (forced on the CPU: the interpreter runs the
    kernels) steps every tier of a 3-tier model through frame_step_triton, one FusedFrameWeights
    per tier: 6 frames (3 top steps) of logits, states and upper outputs as the eager backend's."""
    kmod = frame_step_kernels()
    cfg, model = _triton_model(rnn, True, 2, frame_sizes=(3, 2))
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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("rnn", RNN_TYPES)
@pytest.mark.parametrize("B", [1, 3, 16, 128])
@pytest.mark.parametrize("frame_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_frame_backend_on_gpu_uses_the_kernels(rnn, B, frame_dtype):
    """On a CUDA device FusedFrameBackend.frame_step (the triton and cuda backends') of a 2-tier
    model runs the fused kernels (fp32: ~1e-5 of the reference; bf16: within twice the
    reference's bf16 error against fp32)."""
    cfg = SampleRNNConfig(rnn_type=rnn, dim=256, n_rnn=3)
    model = random_model(cfg).cuda()
    backend = FusedFrameBackend(model, "cuda", frame_dtype=frame_dtype)
    exact = export_inference(model).to("cuda")
    st = model.frame_rnn.initial_state(B, "random", torch.Generator().manual_seed(2))
    st = RNNState(st.h.cuda(), None if st.c is None else st.c.cuda())
    s_ref, s_exact, s_k = st.clone(), st.clone(), st.clone()
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        window = torch.randint(0, cfg.q_levels, (B, cfg.frame_size), generator=g).cuda()
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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("rnn", RNN_TYPES)
@pytest.mark.parametrize("B", [1, 16, 128])
@pytest.mark.parametrize("frame_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_frame_backend_on_gpu_steps_every_tier_with_the_kernels(rnn, B, frame_dtype):
    """The fused frame tier on CUDA (3-tier model, H 256) runs every tier through the fused kernels
    (one FusedFrameWeights per tier); 8 teacher-forced frames (2 top steps) against the same
    backend held on the eager frame_step_ref: fp32 ~1e-4 relative (errors compound over frames);
    bf16: every tensor's error against an fp32 run at most twice the eager bf16 run's."""
    frame_step_kernels()
    cfg, model = _triton_model(rnn, True, 3, frame_sizes=(16, 4), dim=256)
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
    cfg, model = _triton_model("gru", True, 2, frame_sizes=(16, 4), dim=64)
    model = model.cuda()
    be = FusedFrameBackend(model, "cuda", frame_dtype=torch.int8)
    frames = _backend_run(be, model, 3, 4)
    assert be.w.int8 and be.__dict__.get("_fused_frame") is None
    assert all(torch.isfinite(t).all() for f in frames for t in f)


@pytest.mark.parametrize("tiers", [(3, 2), (3, 2, 2)], ids=["3tier", "4tier"])
@pytest.mark.parametrize("frame_dtype", [torch.float32, torch.int8], ids=["fp32", "int8"])
def test_cpu_backend_runs_every_tier_in_cpp(monkeypatch, tiers, frame_dtype):
    """cpu generates what folded generates, and every tier step (the upper ones, the conditioned
    bottom one) went through the C++ frame step, never frame_step_ref."""
    model = _ntier_model(tiers, "lstm", True, seed=5)
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
    n_up = len(tiers) - 1
    bottom = [c for c in calls if c[0] is cpu.w]
    assert len(bottom) == n_frames and all(cond for _, _, cond in bottom), "the bottom tier must get its cond"
    for k, tw in enumerate(cpu.w.upper, start=1):
        mine = [c for c in calls if c[0] is tw]
        steps = n_frames * model.cfg.frame_size // model.cfg.tier_samples(k)  # one per S_k samples
        assert len(mine) == steps and all(c[1] == model.cfg.tier_samples(k) for c in mine), f"tier {k}"
        assert all(c[2] == (k < n_up) for c in mine), f"tier {k}: cond iff a tier above"


def test_cpu_backend_large_batch_takes_the_reference(monkeypatch):
    """Above the streaming batch the tiers take frame_step_ref with the op's products, cond included."""
    model = _ntier_model((3, 2), "gru", False, seed=6)
    monkeypatch.setitem(CPU_STREAM_MAX_B, "fp32", 1)
    cpu = make_backend("cpu", model, num_threads=2)
    calls = []
    real_cpu = cpu_mod.frame_step_cpu
    monkeypatch.setattr(cpu_mod, "frame_step_cpu", lambda *a, **k: (calls.append(1), real_cpu(*a, **k))[1])
    generate_and_compare([make_backend("folded", model), cpu], model, B=2, n_frames=4)
    assert not calls

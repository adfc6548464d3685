"""Every Triton kernel of kernels/sample_frame*.py through Triton's whole compiler (TTIR, TTGIR,
LLVM, PTX, cubin) for sm_90 (H100) and sm_80 (A100), without a GPU, at the dadabots-2tier shapes
(F 16, Q 256, H 1024) for n_seq 1, 16 and 128, fp32 and bf16 weights, with the tiles and warps
the launchers would use. Fails on register spills (local memory), shared memory over the SM's
limit or a register file overflow (fastsrnn.tools.gpu_compile.Resources.problems): what the
interpreter cannot see.

Runs in the plain pytest process (compiled mode); skipped only where this process runs Triton's
interpreter (TRITON_INTERPRET=1), where kernels are not compiled. Each compile takes seconds, so
each kernel variant is compiled once per target; the modes (sampling, argmax, forcing, logits)
differ only in a few epilogue instructions, and the heaviest (sampling with logits) is the one
compiled.
"""
import pytest

triton = pytest.importorskip("triton")

from fastsrnn.kernels import sample_frame as small  # noqa: E402
from fastsrnn.kernels import sample_frame_split as split  # noqa: E402
from fastsrnn.ops.thresholds import TRITON_SAMPLE_SPLIT_MIN_B  # noqa: E402
from fastsrnn.tools.gpu_compile import triton_resources  # noqa: E402

F, Q, H = 16, 256, 1024  # dadabots-2tier
ARCHS = (90, 80)


def _ptr(dtype: str) -> str:
    return "*bf16" if dtype == "bf16" else "*fp32"


def _small(B: int, wdt: str, cut: bool = False):
    """(kernel, signature, constexprs, num_warps, num_stages) of the one-launch kernel at n_seq B
    (cut: with top-k and top-p on)."""
    cfg = small.launch_config(B, F, Q, H)
    warps = cfg.pop("num_warps")
    w = _ptr(wdt)
    sig = dict(table=w, cond="*fp32", w3=w, b3="*fp32", wo=w, bo="*fp32", window="*i64", uniforms="*fp32",
               inv_t="*fp32", out="*i64", forced="*i64", logits_out="*fp32", a2s="*fp32", B="i32", Q="i32", H="i32",
               top_k="i32", top_p="fp32")
    const = dict(F=F, ARGMAX=False, TOP_K=cut, TOP_P=cut, HAS_FORCED=False, HAS_LOGITS=True, **cfg)
    return small._sample_frame_kernel, sig, const, warps, 3


def _stage_a(B: int, wdt: str):
    ca = dict(split.launch_config(B, F, Q, H, w_bf16=wdt == "bf16")["stage_a"])
    warps, stages = ca.pop("num_warps"), ca.pop("num_stages")
    w = _ptr(wdt)
    sig = dict(a2="*fp32", w3=w, b3="*fp32", wo=w, part="*fp32", B="i32", Q="i32", H="i32", NS="i32")
    return split._stage_a_kernel, sig, dict(W_BF16=wdt == "bf16", WIDEN=False, **ca), warps, stages


def _stage_b(B: int, wdt: str, prologue: bool = False, cut: bool = False):
    cb = dict(split.launch_config(B, F, Q, H)["stage_b"])
    warps, stages = cb.pop("num_warps"), cb.pop("num_stages")
    sig = dict(table=_ptr(wdt), cond="*fp32", bo="*fp32", window="*i64", uniforms="*fp32", inv_t="*fp32",
               out="*i64", forced="*i64", logits_out="*fp32", a2="*fp32", part="*fp32", B="i32", Q="i32",
               H="i32", NS="i32", j="i32", top_k="i32", top_p="fp32")
    const = dict(F=F, PROLOGUE=prologue, ARGMAX=False, TOP_K=cut, TOP_P=cut, HAS_FORCED=False, HAS_LOGITS=True,
                 **cb)
    return split._stage_b_kernel, sig, const, warps, stages


def _cases():
    """The kernels each launch path runs: small below TRITON_SAMPLE_SPLIT_MIN_B, split (stage A, B) from it."""
    for B in (1, 16, 128):
        for wdt in ("fp32", "bf16"):
            if B < TRITON_SAMPLE_SPLIT_MIN_B:
                yield pytest.param(_small, B, wdt, id=f"small-B{B}-{wdt}")
            else:
                yield pytest.param(_stage_a, B, wdt, id=f"split-a-B{B}-{wdt}")
            # Stage B does not depend on the weights' dtype beyond the table gather: one per n_seq.
            if B >= TRITON_SAMPLE_SPLIT_MIN_B and wdt == "fp32":
                yield pytest.param(_stage_b, B, wdt, id=f"split-b-B{B}")
    # The split path at n_seq 1 (the default at H >= TRITON_SAMPLE_SPLIT_MIN_H, as dadabots-2tier's 1024), the
    # small kernel at n_seq 8 (its largest default tile), and stage B's prologue variant.
    yield pytest.param(_stage_a, 1, "bf16", id="split-a-B1-bf16")
    yield pytest.param(_stage_a, 1, "fp32", id="split-a-B1-fp32")
    yield pytest.param(_stage_b, 1, "fp32", id="split-b-B1")
    yield pytest.param(_small, 8, "bf16", id="small-B8-bf16")
    yield pytest.param(lambda B, wdt: _stage_b(B, wdt, prologue=True), 16, "bf16", id="split-b-prologue-B16-bf16")
    # top-k and top-p on (the draw's bisections): the small kernel's 4 rows and stage B's one
    yield pytest.param(lambda B, wdt: _small(B, wdt, cut=True), 4, "fp32", id="small-B4-fp32-cut")
    yield pytest.param(lambda B, wdt: _stage_b(B, wdt, cut=True), 16, "fp32", id="split-b-B16-cut")


@pytest.mark.parametrize("make,B,wdt", list(_cases()))
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm{a}")
def test_kernel_compiles_without_spills(make, B, wdt, arch):
    kernel, sig, const, warps, stages = make(B, wdt)
    if type(kernel).__name__ == "InterpretedFunction":
        pytest.skip("this process runs Triton's interpreter (TRITON_INTERPRET=1): kernels are not compiled")
    res = triton_resources(kernel, sig, const, arch, num_warps=warps, num_stages=stages)
    print(f"{res.name} B{B} {wdt} sm_{arch}: {res.registers} regs, {res.shared} B shared, "
          f"spills {res.spill_stores}/{res.spill_loads} B, stack {res.stack} B, {warps} warps")
    assert res.registers > 0
    assert not res.problems(), "; ".join(res.problems())
    # ptxas puts spilled registers in the stack frame; cuobjdump's LOCAL (what problems() reads)
    # can stay 0 while STACK grows, so a stack frame counts as a spill here too.
    assert res.stack == 0, f"{res.name} sm_{arch}: {res.stack} B stack frame (register spills)"

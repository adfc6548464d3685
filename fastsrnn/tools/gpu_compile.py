"""Compile GPU kernels for a named target on a machine without a GPU, and read what they use.

Triton's whole compiler (TTIR, TTGIR, LLVM, PTX, cubin) runs without a device when given a
``GPUTarget``; ptxas (Triton's own, or the CUDA toolkit's) then reports registers, spills and
stack. Tests use this to fail on register spills or shared memory over the SM's limit at the
shapes a real launch would use, before any GPU run.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# Usable shared memory per block (opt-in) on the targets we check: sm_80 (A100) 163 KB, sm_90 (H100) 227 KB.
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


@dataclass
class Resources:
    """What one compiled kernel uses per thread / block (ptxas -v and Triton's metadata)."""

    name: str
    arch: int
    registers: int
    spill_stores: int  # bytes
    spill_loads: int  # bytes
    stack: int  # bytes of stack frame
    shared: int  # bytes of shared memory per block (static + Triton's dynamic)
    num_warps: int

    def problems(self) -> list:
        """Human-readable reasons this kernel is not fit to run (empty when fine)."""
        out = []
        if self.spill_stores or self.spill_loads:
            out.append(f"{self.name} sm_{self.arch}: spills ({self.spill_stores} B stores, {self.spill_loads} B loads)")
        if self.stack:  # a stack frame without local memory is still register pressure spilled to the stack
            out.append(f"{self.name} sm_{self.arch}: {self.stack} B stack frame")
        if self.shared > SMEM_LIMIT.get(self.arch, 227 * 1024):
            out.append(f"{self.name} sm_{self.arch}: {self.shared} B shared memory > {SMEM_LIMIT[self.arch]} B")
        if self.registers * 32 * self.num_warps > 65536:
            out.append(f"{self.name} sm_{self.arch}: {self.registers} registers x {32 * self.num_warps} threads "
                       "exceed the SM's 64 K registers")
        return out


def cuobjdump() -> Optional[str]:
    """Triton's bundled cuobjdump, else the CUDA toolkit's; None when neither exists."""
    try:
        import triton

        path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    return shutil.which("cuobjdump") or next((p for p in ["/usr/local/cuda/bin/cuobjdump"] if Path(p).exists()), None)


def cubin_resources(cubin: bytes) -> dict:
    """``cuobjdump -res-usage`` of a cubin (the ptxas that made it already ran):
    {registers, stack, local, shared} of its (largest) function. LOCAL is spill space."""
    exe = cuobjdump()
    if exe is None:
        raise RuntimeError("no cuobjdump found (install triton or the CUDA toolkit)")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(cubin)
        r = subprocess.run([exe, "-res-usage", str(path)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"cuobjdump failed: {(r.stdout + r.stderr)[-2000:]}")
    num = lambda key: max([int(m) for m in re.findall(rf"\b{key}:(\d+)", r.stdout)] or [0])  # noqa: E731
    return dict(registers=num("REG"), stack=num("STACK"), local=num("LOCAL"), shared=num("SHARED"))


def parse_ptxas(log: str) -> dict:
    """The numbers of a ``ptxas -v`` (or ``nvcc -Xptxas -v``) log, summed over its entries' maxima."""
    num = lambda pat: max([int(m) for m in re.findall(pat, log)] or [0])  # noqa: E731
    return dict(registers=num(r"Used (\d+) registers"), spill_stores=num(r"(\d+) bytes spill stores"),
                spill_loads=num(r"(\d+) bytes spill loads"), stack=num(r"(\d+) bytes stack frame"),
                smem=num(r"(\d+) bytes smem"))


def compile_triton(fn, signature: dict, constexprs: dict, arch: int, num_warps: int = 4, num_stages: int = 3):
    """Compile a @triton.jit ``fn`` for sm_<arch> without a GPU; returns Triton's compiled kernel.

    signature: {arg name: Triton type, e.g. '*fp32', 'i32'}; constexprs: {name: value}.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = dict(signature, **{k: "constexpr" for k in constexprs})
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages))


def triton_resources(fn, signature: dict, constexprs: dict, arch: int, num_warps: int = 4,
                     num_stages: int = 3) -> Resources:
    """Compile (see :func:`compile_triton`) and report the kernel's registers, spills and shared memory."""
    k = compile_triton(fn, signature, constexprs, arch, num_warps, num_stages)
    name = getattr(fn, "__name__", None) or fn.fn.__name__
    rep = cubin_resources(k.asm["cubin"])
    shared = max(int(getattr(k.metadata, "shared", 0) or 0), rep["shared"])
    # Local memory is where ptxas spills: count it as spill traffic.
    return Resources(name, arch, rep["registers"], rep["local"], rep["local"], rep["stack"], shared, num_warps)

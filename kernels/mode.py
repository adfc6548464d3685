"""Whether Triton's interpreter runs the kernels: one check for every kernel module.

Triton fixes interpreted-or-compiled when it is first imported (TRITON_INTERPRET=1, CPU tensors,
the tests marked `interpret`); a kernel decorated after the variable changed runs in the other
mode, which each kernel module reports with :func:`mode_mismatch` instead of failing obscurely.
"""
from __future__ import annotations

from typing import Optional

import triton.language as tl


def interpreted(fn) -> bool:
    """Whether ``fn`` (a triton.jit function, or one of triton.language's) is the interpreter's."""
    return type(fn).__name__ == "InterpretedFunction"


INTERPRETED = interpreted(tl.sum)  # True when Triton's interpreter runs the kernels (on CPU tensors)


def mode_mismatch(kernel, module: str) -> Optional[str]:
    """None when ``kernel`` runs in Triton's own mode; else why not and what to do."""
    if interpreted(kernel) == INTERPRETED:
        return None
    return (f"TRITON_INTERPRET changed between the import of triton and of {module} "
            f"(triton's library is {'interpreted' if INTERPRETED else 'compiled'}, this kernel is not); "
            "set TRITON_INTERPRET before anything imports triton")

"""Every environment variable fastsrnn reads, in one place (listed in the README's table)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def _get(name: str) -> Optional[str]:
    v = os.environ.get(name)
    return v if v not in (None, "") else None


def default_backend() -> str:
    """FASTSRNN_BACKEND: backend used when none is given (default 'auto')."""
    return _get("FASTSRNN_BACKEND") or "auto"


def num_threads() -> Optional[int]:
    """FASTSRNN_NUM_THREADS: CPU threads for the fused CPU kernel and torch (default: torch's)."""
    v = _get("FASTSRNN_NUM_THREADS")
    if v is None:
        return None
    if not v.isdigit() or int(v) < 1:
        raise ValueError(f"FASTSRNN_NUM_THREADS must be a positive integer, got {v!r}")
    return int(v)


def build_dir() -> Path:
    """FASTSRNN_BUILD_DIR: where compiled extensions are cached (default ~/.cache/fastsrnn/build)."""
    v = _get("FASTSRNN_BUILD_DIR")
    return Path(v) if v else Path.home() / ".cache" / "fastsrnn" / "build"


def build_verbose() -> bool:
    """FASTSRNN_BUILD_VERBOSE=1: show the compiler's output when building extensions."""
    return _get("FASTSRNN_BUILD_VERBOSE") == "1"


def cxx_compiler() -> str:
    """CXX (torch.utils.cpp_extension's own): the C++ compiler extensions are built with (default 'c++')."""
    return _get("CXX") or "c++"


def triton_interpret() -> bool:
    """TRITON_INTERPRET=1 (Triton's own): run Triton kernels on the CPU interpreter (tests)."""
    return _get("TRITON_INTERPRET") == "1"


def torchrun_ranks() -> tuple:
    """WORLD_SIZE, RANK, LOCAL_RANK (set by torchrun): (world, rank, local_rank); (1, 0, 0) when absent."""
    def num(name: str, default: int) -> int:
        v = _get(name)
        if v is None:
            return default
        if not v.isdigit():
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        return int(v)

    return num("WORLD_SIZE", 1), num("RANK", 0), num("LOCAL_RANK", 0)

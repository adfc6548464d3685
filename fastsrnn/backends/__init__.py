"""Backend dispatch: the one place that knows which backends exist (no plugin registry).

``resolve_backend(name, device)`` turns "auto" into the fastest backend that works on the
device and turns an unavailable request into :class:`BackendUnavailable`, whose message says why.
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional, Tuple

import torch

from fastsrnn.backends.base import Backend, BackendUnavailable, DecodeState
from fastsrnn.ops.thresholds import AUTO_TRITON_MIN_SEQ

BACKENDS = ("eager", "folded", "cpu", "triton", "cuda")
# Old names that still work, with a warning: old -> new.
ALIASES = {"ref": "folded"}
# Fastest first, per device type; on a GPU from AUTO_TRITON_MIN_SEQ[weights] sequences
# (fastsrnn/ops/thresholds.py, with the measurements behind it) the many-sequence order.
_AUTO_ORDER = {"cpu": ("cpu", "eager"), "cuda": ("cuda", "triton", "eager")}
_AUTO_ORDER_MANY_SEQ = {"cpu": ("cpu", "eager"), "cuda": ("triton", "cuda", "eager")}


def auto_many_seq(dtype: Optional[torch.dtype] = None) -> int:
    """From how many sequences 'auto' prefers the Triton backend on a GPU, for sample-tier weights
    of ``dtype`` (None: float32)."""
    return AUTO_TRITON_MIN_SEQ["bf16" if dtype == torch.bfloat16 else "fp32"]


def backend_class(name: str) -> type:
    """The class of backend ``name`` (one of BACKENDS), imported on demand: the kernel backends
    import their compilers (Triton, the C++ build) only when asked for."""
    if name == "eager":
        from fastsrnn.backends.eager import EagerBackend as cls
    elif name == "folded":
        from fastsrnn.backends.folded import FoldedBackend as cls
    elif name == "cpu":
        from fastsrnn.backends.cpu import CpuBackend as cls
    elif name == "triton":
        from fastsrnn.backends.triton import TritonBackend as cls
    elif name == "cuda":
        from fastsrnn.backends.cuda import CudaBackend as cls
    else:
        raise ValueError(f"unknown backend {name!r}; choose one of {('auto',) + BACKENDS}")
    return cls


def canonical_name(name: str) -> str:
    """``name`` with an old alias replaced by the current name (and a DeprecationWarning)."""
    if name in ALIASES:
        warnings.warn(f"backend {name!r} is now called {ALIASES[name]!r}", DeprecationWarning, stacklevel=3)
        return ALIASES[name]
    return name


def backend_status(name: str, device) -> Tuple[bool, str]:
    """(available, reason) for backend ``name`` on ``device``."""
    name = canonical_name(name)
    if name not in BACKENDS:
        return False, f"unknown backend {name!r}; choose one of {('auto',) + BACKENDS}"
    if name in ("eager", "folded"):
        return True, "always available"
    try:
        cls = backend_class(name)
    except ImportError as e:  # an optional dependency (triton) that is absent or broken
        return False, f"{name} backend failed to import: {e}"
    return cls.is_available(torch.device(device))


def available_backends(device) -> Dict[str, Tuple[bool, str]]:
    return {n: backend_status(n, device) for n in BACKENDS}


def resolve_backend(name: str = "auto", device="cpu", n_seq: Optional[int] = None,
                    dtype: Optional[torch.dtype] = None) -> str:
    """A concrete backend name for ``device``: 'auto' picks the fastest that works for ``n_seq``
    sequences (None: few) with sample-tier weights of ``dtype`` (None: float32)."""
    dev = torch.device(device)
    if name == "auto":
        reasons = []
        many = n_seq is not None and n_seq >= auto_many_seq(dtype)
        order = _AUTO_ORDER_MANY_SEQ if many else _AUTO_ORDER
        for cand in order.get(dev.type, ("eager",)):
            ok, why = backend_status(cand, dev)
            if ok:
                return cand
            reasons.append(f"{cand}: {why}")
        raise BackendUnavailable(f"no backend works on {dev}: " + "; ".join(reasons))
    name = canonical_name(name)
    ok, why = backend_status(name, dev)
    if not ok:
        raise BackendUnavailable(f"backend {name!r} is not available on {dev}: {why}")
    return name


def make_backend(name: str, model, device="cpu", n_seq: Optional[int] = None, **options) -> Backend:
    """Instantiate the backend ``name`` ('auto' allowed; ``n_seq`` guides its choice) for ``model``
    on ``device``. options: the backend's own (dtype, frame_dtype, graphs, num_threads, block_b)."""
    concrete = resolve_backend(name, device, n_seq, options.get("dtype"))
    cls = backend_class(concrete)
    return cls(model, device, **options) if concrete != "eager" else cls(model, device)


__all__ = ["Backend", "DecodeState", "BACKENDS", "ALIASES", "BackendUnavailable", "available_backends",
           "backend_class", "backend_status", "resolve_backend", "make_backend", "auto_many_seq"]

"""Backend dispatch: the one place that knows which backends exist (no plugin registry).

``resolve_backend(name, device)`` turns "auto" into the fastest backend that works on the
device and turns an unavailable request into a clear error that says why.
"""
from __future__ import annotations

import importlib
from typing import Dict, Tuple

import torch

from .base import Backend, DecodeState

BACKENDS = ("eager", "ref", "cpu", "triton", "cuda")
# Fastest first, per device type.
_AUTO_ORDER = {"cpu": ("cpu", "eager"), "cuda": ("cuda", "triton", "eager")}
_MODULES = {"eager": ("eager", "EagerBackend"), "ref": ("fused", "FusedBackend"),
            "cpu": ("cpu", "CpuBackend"), "triton": ("triton", "TritonBackend"), "cuda": ("cuda", "CudaBackend")}


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why and what to do."""


def _load(name: str):
    mod_name, cls_name = _MODULES[name]
    return getattr(importlib.import_module(f"{__name__}.{mod_name}"), cls_name)


def backend_status(name: str, device) -> Tuple[bool, str]:
    """(available, reason) for backend ``name`` on ``device``."""
    if name not in BACKENDS:
        return False, f"unknown backend {name!r}; choose one of {('auto',) + BACKENDS}"
    if name in ("eager", "ref"):
        return True, "always available"
    try:
        cls = _load(name)
    except Exception as e:  # an import error of an optional dependency
        return False, f"{name} backend failed to import: {e}"
    return cls.is_available(torch.device(device))


def available_backends(device) -> Dict[str, Tuple[bool, str]]:
    return {n: backend_status(n, device) for n in BACKENDS}


def resolve_backend(name: str = "auto", device="cpu") -> str:
    """A concrete backend name for ``device``: 'auto' picks the fastest that works."""
    dev = torch.device(device)
    if name == "auto":
        reasons = []
        for cand in _AUTO_ORDER.get(dev.type, ("eager",)):
            ok, why = backend_status(cand, dev)
            if ok:
                return cand
            reasons.append(f"{cand}: {why}")
        raise BackendUnavailable(f"no backend works on {dev}: " + "; ".join(reasons))
    ok, why = backend_status(name, dev)
    if not ok:
        raise BackendUnavailable(f"backend {name!r} is not available on {dev}: {why}")
    return name


def make_backend(name: str, model, device="cpu", **options) -> Backend:
    """Instantiate the backend ``name`` ('auto' allowed) for ``model`` on ``device``."""
    concrete = resolve_backend(name, device)
    cls = _load(concrete)
    return cls(model, device, **options) if concrete != "eager" else cls(model, device)


__all__ = ["Backend", "DecodeState", "BACKENDS", "BackendUnavailable", "available_backends",
           "backend_status", "resolve_backend", "make_backend"]

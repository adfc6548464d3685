"""The ``cuda`` backend: the persistent CUDA sample-frame kernel (csrc/cuda/sample_frame.cu).

The frame step is FusedBackend's (cuBLAS); all F sample steps of a frame run in one launch in
which every block keeps its slice of W3 and Wo in shared memory and the blocks exchange only
activations, with grid-wide barriers between phases (nv-wavenet's persistent kernel). The
whole frame can be replayed as a CUDA graph (graphs.py). The extension is JIT-built on first
use (fastsrnn.build) for this GPU's architecture and cached on disk.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..build import BuildError, load_extension
from .graphs import GraphedFusedBackend

_SOURCES = ["cuda/binding.cpp", "cuda/sample_frame.cu"]
_HINT = "install the CUDA toolkit matching torch.version.cuda (nvcc, CUDA_HOME) and ninja, or use backend='triton'"


def _arch_flags() -> list:
    """nvcc flags for the current GPU only (torch would otherwise build for every arch it knows);
    being flags, they also key the build cache per architecture."""
    major, minor = torch.cuda.get_device_capability()
    return [f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}"]


def build_extension():
    """Build (or load from the cache) the CUDA extension; raises BuildError with a hint."""
    if torch.version.cuda is None:
        raise BuildError(f"torch {torch.__version__} is a CPU-only build: the cuda backend needs a CUDA build of torch")
    if not torch.cuda.is_available():
        raise BuildError("torch sees no CUDA device: the cuda extension is built for the GPU it will run on")
    try:
        return load_extension("cuda", _SOURCES, extra_cflags=["-O3"],
                              extra_cuda_cflags=["-O3", "-lineinfo", *_arch_flags()])
    except BuildError as e:
        raise BuildError(f"{e}\nTo fix: {_HINT}.") from e


def sample_frame_cuda(table, cond, w3, b3, wo, bo, window, uniforms, inv_temperature, argmax: bool, out,
                      forced: Optional[torch.Tensor] = None, logits_out: Optional[torch.Tensor] = None,
                      cooperative: Optional[bool] = None) -> None:
    """The fused op in one persistent launch; same contract and shapes as reference.sample_frame_ref.

    table: (F, Q, H), w3: (H, H), wo: (Q, H) all float32 or all bfloat16; cond: (B, F, H) float32;
    b3: (H,), bo: (Q,) float32; window: (B, F) int64 updated in place; uniforms: (B, F) float32;
    inv_temperature: (B,) float32; out: (B, F) int64; forced: (B, F) int64; logits_out: (B, F, Q)
    float32; all dense on one CUDA device. cooperative: a cooperative launch (default: yes,
    except while a CUDA graph is being captured, where a plain launch sized to fit is used).
    """
    if cooperative is None:
        cooperative = not torch.cuda.is_current_stream_capturing()
    build_extension().sample_frame(table, cond, w3, b3, wo, bo, window, uniforms, inv_temperature, bool(argmax),
                                   out, forced, logits_out, bool(cooperative))


class CudaBackend(GraphedFusedBackend):
    name = "cuda"
    _status: Optional[Tuple[bool, str]] = None  # the build's outcome, once per process

    def __init__(self, model, device="cuda", dtype: torch.dtype = torch.float32,
                 frame_dtype: Optional[torch.dtype] = None, graphs: Optional[bool] = None):
        """dtype: sample-tier weights (float32 or bfloat16); frame_dtype: frame-tier weights;
        graphs: replay each frame (frame step + the persistent launch) as a CUDA graph
        (default on)."""
        ok, why = self.is_available(torch.device(device))
        if not ok:
            raise RuntimeError(f"cuda backend unavailable: {why}")
        super().__init__(model, device, dtype, frame_dtype)
        self._op = build_extension()
        self._setup_graphs(graphs)

    def sample_frame(self, cond, window, uniforms, inv_temperature, argmax, out, forced=None, logits_out=None):
        capturing = torch.cuda.is_current_stream_capturing()  # no cooperative launch inside a graph
        self.call_dense(lambda w, c, *rest: self._op.sample_frame(w.table, c, w.w3, w.b3, w.wo, w.bo, *rest, not capturing),
                        cond, window, uniforms, inv_temperature, argmax, out, forced, logits_out)

    @classmethod
    def is_available(cls, device) -> Tuple[bool, str]:
        """(ok, reason): a CUDA device and an extension that builds (cached per process)."""
        device = torch.device(device)
        if device.type != "cuda":
            return False, f"the cuda backend runs on CUDA devices only, not on {device}"
        if not torch.cuda.is_available():
            return False, "torch sees no CUDA device (CPU-only torch build or no driver)"
        if cls._status is None:
            try:
                build_extension()
                cls._status = (True, f"persistent CUDA kernel on {torch.cuda.get_device_name(device)}")
            except BuildError as e:
                cls._status = (False, str(e))
        return cls._status

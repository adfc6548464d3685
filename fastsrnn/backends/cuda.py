"""The ``cuda`` backend: the persistent CUDA sample-frame kernel (csrc/cuda/sample_frame.cu).

The frame step is ops/frame_step.py's (cuBLAS); all F sample steps of a frame run in one launch in
which every block keeps its slice of W3 and Wo in shared memory and the blocks exchange only
activations, with grid-wide barriers between phases (nv-wavenet's persistent kernel). The
whole frame can be replayed as a CUDA graph (graphs.py). The extension is JIT-built on first
use (fastsrnn.ops.build) for this GPU's architecture and cached on disk.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from fastsrnn.backends.base import BackendUnavailable
from fastsrnn.backends.graphs import GraphedBackend
from fastsrnn.ops.build import BuildError, cuda_extension
from fastsrnn.ops.sample_frame import sample_frame_cuda


class CudaBackend(GraphedBackend):
    name = "cuda"
    _status: Optional[Tuple[bool, str]] = None  # the build's outcome, once per process

    def __init__(self, model, device="cuda", dtype: torch.dtype = torch.float32,
                 frame_dtype: Optional[torch.dtype] = None, graphs: Optional[bool] = None):
        """dtype: sample-tier weights (float32 or bfloat16); frame_dtype: frame-tier weights;
        graphs: replay each frame (frame step + the persistent launch) as a CUDA graph
        (default on)."""
        ok, why = self.is_available(torch.device(device))
        if not ok:
            raise BackendUnavailable(f"cuda backend unavailable: {why}")
        super().__init__(model, device, dtype, frame_dtype)
        self._setup_graphs(graphs)

    def sample_frame(self, cond, window, uniforms, inv_temperature, argmax, out, forced=None, logits_out=None):
        self.call_dense(sample_frame_cuda, cond, window, uniforms, inv_temperature, argmax, out, forced, logits_out)

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
                cuda_extension()
                cls._status = (True, f"persistent CUDA kernel on {torch.cuda.get_device_name(device)}")
            except BuildError as e:
                cls._status = (False, str(e))
        return cls._status

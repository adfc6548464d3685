"""The ``cuda`` backend: the persistent CUDA sample-frame kernel (csrc/cuda/sample_frame.cu).

The frame step is the fused Triton frame tier (ops/frame_step.py, backends/fused_frame.py);
all F sample steps of a frame run in one cooperative launch in which every block keeps its
slice of W3 and Wo in shared memory and the blocks exchange only activations, with two
grid-wide barriers per sample (nv-wavenet's persistent kernel). The launch is cooperative
inside CUDA graphs too (graphs.py replays the frames), so the driver guarantees that all blocks
are resident: the barriers cannot hang. The backend owns one zeroed workspace per batch size
(the kernel's scratch and its barrier word), allocated once, outside graph capture. The
extension is JIT-built on first use (fastsrnn.ops.build) for this GPU's architecture and cached
on disk.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from fastsrnn.backends.base import BackendUnavailable
from fastsrnn.backends.graphs import GraphedBackend
from fastsrnn.ops.build import BuildError, cuda_extension
from fastsrnn.ops.sample_frame import sample_frame_cuda


class CudaBackend(GraphedBackend):
    name = "cuda"

    def __init__(self, model, device="cuda", dtype: torch.dtype = torch.float32,
                 frame_dtype: Optional[torch.dtype] = None, graphs: Optional[bool] = None):
        """dtype: sample-tier weights (float32 or bfloat16); frame_dtype: frame-tier weights;
        graphs: replay each frame (frame step + the persistent launch) as a CUDA graph
        (default on)."""
        ok, why = self.is_available(torch.device(device))
        if not ok:
            raise BackendUnavailable(f"cuda backend unavailable: {why}")
        super().__init__(model, device, dtype, frame_dtype)
        self._workspaces: Dict[int, torch.Tensor] = {}  # batch size -> the kernel's workspace
        self._setup_graphs(graphs)

    def workspace(self, batch: int) -> torch.Tensor:
        """This backend's zeroed workspace for ``batch`` sequences, allocated on first use. Never
        freed: a captured graph holds its address. Not while capturing (the zeroing would only
        run at replay): graphs.py warms up eagerly before it captures."""
        ws = self._workspaces.get(batch)
        if ws is None:
            if torch.cuda.is_current_stream_capturing():
                raise RuntimeError(f"cuda backend: no workspace for batch {batch} yet while capturing a CUDA graph "
                                   "(run one frame eagerly first)")
            _, q_levels, dim = self.w.table.shape
            nbytes = cuda_extension().workspace_bytes(batch, dim, q_levels)
            ws = self._workspaces[batch] = torch.zeros(nbytes, dtype=torch.uint8, device=self.device)
        return ws

    def sample_frame(self, cond, window, uniforms, sampling, out, forced=None, logits_out=None):
        self.call_dense(sample_frame_cuda, cond, window, uniforms, sampling, out, forced, logits_out,
                        workspace=self.workspace(cond.shape[0]))

    @classmethod
    def is_available(cls, device) -> Tuple[bool, str]:
        """(ok, reason): a CUDA device and an extension that builds (cached per process)."""
        device = torch.device(device)
        if device.type != "cuda":
            return False, f"the cuda backend runs on CUDA devices only, not on {device}"
        if not torch.cuda.is_available():
            return False, "torch sees no CUDA device (CPU-only torch build or no driver)"
        try:  # cuda_extension() resolves the build once per process and then returns its outcome
            cuda_extension()
        except BuildError as e:
            return False, str(e)
        return True, f"persistent CUDA kernel on {torch.cuda.get_device_name(device)}"

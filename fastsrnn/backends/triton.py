"""The ``triton`` backend: the fused Triton frame tier (backends/fused_frame.py, on CUDA), then
the F sample steps of a frame in Triton (fastsrnn.ops.sample_frame.sample_frame_triton): one
launch per frame for few sequences (kernels/sample_frame.py), 2F + 1 launches spreading each
step over the GPU with tensor cores from TRITON_SAMPLE_SPLIT_MIN_B sequences or
TRITON_SAMPLE_SPLIT_MIN_H hidden units (fastsrnn/ops/thresholds.py; kernels/sample_frame_split.py);
on CUDA the whole frame is replayed as one CUDA graph, which makes the split path's launches cheap.

On a CUDA device it runs compiled; on the CPU it runs only under TRITON_INTERPRET=1 (Triton's
interpreter, for tests: slow, but the same kernel code; the frame step is then frame_step_ref).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from fastsrnn import env
from fastsrnn.backends.base import BackendUnavailable
from fastsrnn.backends.graphs import GraphedBackend
from fastsrnn.ops.sample_frame import sample_frame_triton


class TritonBackend(GraphedBackend):
    name = "triton"

    def __init__(self, model, device="cuda", dtype: torch.dtype = torch.float32,
                 frame_dtype: Optional[torch.dtype] = None, graphs: Optional[bool] = None,
                 block_b: Optional[int] = None, sample_path: Optional[str] = None):
        """dtype: sample-tier weights (float32 or bfloat16); frame_dtype: frame-tier weights;
        graphs: replay each frame as a CUDA graph (default: on CUDA devices); block_b: sequences
        per Triton program (a power of two; default: the path's launch_config); sample_path:
        "small" or "split" (default: by n_seq, see sample_frame_triton)."""
        ok, why = self.is_available(torch.device(device))
        if not ok:
            raise BackendUnavailable(f"triton backend unavailable: {why}")
        super().__init__(model, device, dtype, frame_dtype)
        if sample_path not in (None, "small", "split"):
            raise ValueError(f"triton backend: sample_path must be 'small' or 'split', got {sample_path!r}")
        self.block_b = block_b
        self.sample_path = sample_path
        # The kernels' scratch buffers (a2, partial logits), one set per batch shape, owned by this
        # backend: never shared with another backend's stream, alive as long as its CUDA graphs.
        self._scratch: dict = {}
        self._setup_graphs(graphs)

    def sample_frame(self, cond, window, uniforms, sampling, out, forced=None, logits_out=None):
        self.call_dense(sample_frame_triton, cond, window, uniforms, sampling, out, forced, logits_out,
                        block_b=self.block_b, path=self.sample_path, scratch=self._scratch)

    @classmethod
    def is_available(cls, device) -> Tuple[bool, str]:
        """(ok, reason): a CUDA device with Triton, or the CPU under TRITON_INTERPRET=1."""
        device = torch.device(device)
        try:
            import triton  # noqa: F401  (only whether it imports)
        except ImportError as e:
            return False, f"triton is not installed ({e}); pip install triton"
        if device.type == "cpu":
            if not env.triton_interpret():
                return False, ("the triton backend needs a CUDA device (on the CPU only with "
                               "TRITON_INTERPRET=1, for tests)")
            try:
                from fastsrnn.kernels import sample_frame as kmod
                from fastsrnn.kernels import sample_frame_split as smod
            except Exception as e:
                return False, f"the Triton kernel failed to import: {e}"
            from fastsrnn.kernels.mode import INTERPRETED

            if not INTERPRETED or kmod.MODE_MISMATCH or smod.MODE_MISMATCH:
                return False, (kmod.MODE_MISMATCH or smod.MODE_MISMATCH or "TRITON_INTERPRET=1 was set after "
                               "triton was imported (compiled mode); set it before anything imports triton")
            return True, "Triton interpreter on the CPU (TRITON_INTERPRET=1; slow, for tests)"
        if device.type != "cuda":
            return False, f"the triton backend runs on CUDA devices, not {device}"
        if not torch.cuda.is_available():
            return False, "torch sees no CUDA device (CPU-only torch build or no driver)"
        try:
            from fastsrnn.kernels import sample_frame, sample_frame_split  # noqa: F401
        except Exception as e:  # a Triton too old for the kernel's language features
            return False, f"the Triton kernel failed to import: {e}"
        return True, f"Triton kernel on {torch.cuda.get_device_name(device)}"

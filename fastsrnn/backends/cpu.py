"""The ``cpu`` backend: fused C++ kernels (csrc/cpu/), JIT-built on first use and cached.

Per frame, two calls: the frame step (csrc/cpu/frame_step.h, the twin of ops/frame_step.py) and
all F sample steps (csrc/cpu/sample_frame.cpp, the twin of ops/sample_frame.py), each
multi-threaded (OpenMP, rows of every matrix split across cores) and vectorized (AVX-512,
AVX2 or portable), with nothing returning to Python per sample. Large batches hand the frame
step's products to torch's BLAS, which wins there. Weights: fp32, or bf16 storage (dtype,
frame_dtype) widened exactly to fp32 in the kernels, or int8 frame weights (frame_dtype=torch.int8,
per-row scales, ops/export.py); activations and sums stay fp32.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from fastsrnn import env
from fastsrnn.backends.base import BackendUnavailable
from fastsrnn.backends.folded import FoldedBackend, dense
from fastsrnn.model import RNNState
from fastsrnn.ops.build import BuildError, cpu_extension
from fastsrnn.ops.frame_step import frame_step_cpu, frame_step_ref, linear_cpu, torch_linear
from fastsrnn.ops.sample_frame import sample_frame_cpu
from fastsrnn.ops.thresholds import CPU_STREAM_MAX_B, dtype_key


class CpuBackend(FoldedBackend):
    name = "cpu"

    def __init__(self, model, device="cpu", dtype: torch.dtype = torch.float32,
                 frame_dtype: Optional[torch.dtype] = None, num_threads: Optional[int] = None):
        ok, why = self.is_available(torch.device(device))
        if not ok:
            raise BackendUnavailable(f"cpu backend unavailable: {why}")
        super().__init__(model, device, dtype, frame_dtype)
        self.num_threads = num_threads if num_threads is not None else (env.num_threads() or 0)
        if env.num_threads():  # FASTSRNN_NUM_THREADS covers the torch frame step as well
            torch.set_num_threads(env.num_threads())

    def frame_mm(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                 scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, K) @ w.T + b for the frame step: the op's weight-streaming kernel where it beats
        torch's BLAS (measured on a 2-core EPYC: fp32 at every B up to 128, 2x at B = 1 where the
        frame tier is DRAM-bound; bf16 up to B = 4; int8 up to 256 at least, 2x torch's, which
        must widen the whole matrix first), else frame_step's torch product. int8 w: with its
        row ``scale``."""
        if x.shape[0] <= CPU_STREAM_MAX_B.get(dtype_key(w.dtype), 0):  # ops/thresholds.py
            return linear_cpu(x, w, b, self.num_threads, scale=scale)
        return torch_linear(x, w, b, scale=scale)

    def tier_step(self, w, window: torch.Tensor, rnn, cond: Optional[torch.Tensor]) -> torch.Tensor:
        """Any frame tier's step (the bottom one or one above, conditioned or not): the op's fused
        C++ step where it is faster (see frame_mm), else ops/frame_step.py with the op's
        products. Updates rnn in place; returns its output (B, n_out, H)."""
        if window.shape[0] > CPU_STREAM_MAX_B.get(dtype_key(w.up_w.dtype), 0):
            return frame_step_ref(w, window, rnn, mm=self.frame_mm, cond=cond)
        h, c = dense(rnn.h), dense(rnn.c)
        out = frame_step_cpu(w, window, RNNState(h, c), self.num_threads, cond=cond)
        for dst, src in ((rnn.h, h), (rnn.c, c)):
            if dst is not None and dst is not src:
                dst.copy_(src)
        return out

    def sample_frame(self, cond, window, uniforms, sampling, out, forced=None, logits_out=None):
        self.call_dense(sample_frame_cpu, cond, window, uniforms, sampling, out, forced, logits_out,
                        num_threads=self.num_threads)

    @classmethod
    def is_available(cls, device) -> Tuple[bool, str]:
        """(ok, reason): the device must be the CPU and the extension must build (cached)."""
        device = torch.device(device)
        if device.type != "cpu":
            return False, f"the cpu backend runs on the CPU only, not on {device}"
        try:  # cpu_extension() resolves the build once per process and then returns its outcome
            mod = cpu_extension()
        except BuildError as e:
            return False, str(e)
        return True, f"fused C++ kernel ({mod.isa}, {torch.get_num_threads()} threads)"

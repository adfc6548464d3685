"""The fused Triton frame tier under a backend: the frame step of the ``triton`` and ``cuda``
backends (through graphs.GraphedBackend).

:class:`FusedFrameBackend` is a FoldedBackend whose frame step, on a CUDA device where the Triton
kernels import, runs ops/frame_step.py::frame_step_triton for every tier (L + 2 launches, one
FusedFrameWeights per tier); elsewhere (the CPU, int8 frame weights) it keeps the torch twin, so
under TRITON_INTERPRET=1 the triton backend's frame step is frame_step_ref unless a test forces
the fused path (``_fused_frame = {}``).
"""
from __future__ import annotations

from typing import Optional

import torch

from fastsrnn.backends.folded import FoldedBackend
from fastsrnn.ops.frame_step import frame_step_ref


class FusedFrameBackend(FoldedBackend):
    """FoldedBackend with the fused Triton frame tier on CUDA (the module docstring)."""

    def tier_step(self, w, window: torch.Tensor, rnn, cond: Optional[torch.Tensor]) -> torch.Tensor:
        """One step of the frame tier whose weights are ``w`` (self.w: the bottom tier; a
        TierWeights: one above), its state ``rnn`` updated in place; cond: from the tier above.

        On a CUDA device with Triton, every tier: the fused kernels (ops.frame_step.frame_step_triton,
        L + 2 launches; each tier's weights prepared on its first call, its output a buffer reused
        per batch size); elsewhere, and for int8 frame weights, the torch twin frame_step_ref."""
        fused = self._fused_tier(w)
        if fused is None:
            return frame_step_ref(w, window, rnn, cond=cond)
        from fastsrnn.ops.frame_step import frame_step_triton

        return frame_step_triton(fused, window, rnn, cond)

    def _fused_tier(self, w):
        """The FusedFrameWeights of tier weights ``w`` (built once per weights object, kept in
        ``_fused_frame``: id(w) -> (w, fused)), or None where the Triton frame step does not run
        (decided once: a CUDA device, kernels that import, no int8 frame weights)."""
        fused = self.__dict__.get("_fused_frame", False)
        if fused is False:
            from fastsrnn.ops.frame_step import triton_frame_step_available

            # int8 frame weights have no Triton kernel: frame_step_ref dequantizes them
            ok = self.device.type == "cuda" and not self.w.int8 and triton_frame_step_available()[0]
            fused = self._fused_frame = {} if ok else None
        if fused is None:
            return None
        hit = fused.get(id(w))
        if hit is None or hit[0] is not w:
            from fastsrnn.ops.frame_step import FusedFrameWeights

            hit = fused[id(w)] = (w, FusedFrameWeights.from_inference(w))
        return hit[1]


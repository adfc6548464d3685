"""The ``folded`` backend, and the base of the kernel backends: exported (folded) weights,
the frame step, and a sample-frame op.

FoldedBackend runs both ops' torch twins (ops/frame_step.py, ops/sample_frame.py) on the folded
weights of ops/export.py, on every device: it is how tests and the bench tell the folds' error
from a kernel's. Subclasses override :meth:`FoldedBackend.tier_step` (cpu: the C++ step;
backends/fused_frame.py: the Triton frame tier on CUDA, under triton and cuda) and
:meth:`FoldedBackend.sample_frame`. The name ``ref`` is an old alias of ``folded``.
"""
from __future__ import annotations

from typing import Optional

import torch

from fastsrnn.backends.base import Backend, DecodeState
from fastsrnn.backends.tiers import record_frame, step_upper_tiers
from fastsrnn.ops.export import export_inference_cached
from fastsrnn.ops.frame_step import frame_step_ref
from fastsrnn.ops.sample_frame import sample_frame_ref


def dense(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """t itself when None or contiguous, else a contiguous copy (written back by the caller)."""
    return t if t is None or t.is_contiguous() else t.contiguous()


class FoldedBackend(Backend):
    name = "folded"

    def __init__(self, model, device, dtype: torch.dtype = torch.float32, frame_dtype: Optional[torch.dtype] = None):
        super().__init__(model, device)
        # Exported once per weights version (cached across generations), never inside the loop (DESIGN §3).
        self.w = export_inference_cached(model, self.device, dtype, frame_dtype or torch.float32)
        self._checked = None  # the (window, shape, device) whose sample-frame arguments were checked last

    def frame_step(self, state: DecodeState) -> torch.Tensor:
        """Advance state.rnn in place by the frame in state.window (n tiers: the upper tiers first,
        when due; fastsrnn/backends/tiers.py); cond (B, F, H)."""
        up = step_upper_tiers(self.cfg, state, self._step_tier)
        return self.tier_step(self.w, state.window, state.rnn, up)

    def _step_tier(self, state: DecodeState, k: int, frame, cond, out) -> None:
        """Upper tier k's step on its exported weights (tiers.StepTier)."""
        out.copy_(self.tier_step(self.w.upper[k - 1], frame, state.rnn.upper[k - 1], cond))

    def tier_step(self, w, window: torch.Tensor, rnn, cond: Optional[torch.Tensor]) -> torch.Tensor:
        """One step of the frame tier whose weights are ``w`` (self.w: the bottom tier; a
        TierWeights: one above), its state ``rnn`` updated in place; cond: from the tier above.
        Here the torch twin frame_step_ref on every device; the kernel backends override it."""
        return frame_step_ref(w, window, rnn, cond=cond)

    def sample_frame(self, cond, window, uniforms, sampling, out, forced=None, logits_out=None):
        self.call_dense(sample_frame_ref, cond, window, uniforms, sampling, out, forced, logits_out)

    def call_dense(self, op, cond, window, uniforms, sampling, out, forced=None, logits_out=None, **options):
        """Call the sample-frame ``op`` (any of ops/sample_frame.py's, same signature) on this
        backend's weights. The arguments may be views (a slice of a longer logits buffer): the op
        gets dense copies and what it wrote goes back to the views. ``options``: the op's own."""
        w = self.w
        win, o, lg = dense(window), dense(out), dense(logits_out)
        key = None
        if op is not sample_frame_ref:  # the kernels: full check on a new state, shape or teacher forcing
            key = (window.data_ptr(), window.shape, cond.shape, uniforms.shape, out.shape,
                   None if logits_out is None else logits_out.shape, uniforms.device, cond.dtype, out.dtype)
            options["check"] = forced is not None or key != self._checked
        op(w.table, cond.contiguous(), w.w3, w.b3, w.wo, w.bo, win, uniforms.contiguous(),
           sampling.contiguous(), o, dense(forced), lg, **options)
        self._checked = key  # only once the op has run: a call that failed its check is checked again
        for dst, src in ((window, win), (out, o), (logits_out, lg)):
            if dst is not None and dst is not src:
                dst.copy_(src)

    @torch.no_grad()
    def step_frame(self, state: DecodeState, uniforms, sampling, forced=None, logits_out=None):
        cond = self.frame_step(state)  # (B, F, H)
        out = torch.empty_like(state.window)
        self.sample_frame(cond, state.window, uniforms, sampling, out, forced, logits_out)
        record_frame(self.cfg, state, out)
        return out

"""Base of the fused backends: exported weights, the shared frame step, a sample-frame kernel.

Subclasses (cpu, triton, cuda) override :meth:`FusedBackend.sample_frame` only; this base
runs the kernel's eager twin and serves as the ``ref`` backend in tests.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..export import export_inference
from .base import Backend, DecodeState
from .frame_step import frame_step
from .reference import sample_frame_ref


def dense(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """t itself when None or contiguous, else a contiguous copy (written back by the caller)."""
    return t if t is None or t.is_contiguous() else t.contiguous()


class FusedBackend(Backend):
    name = "ref"

    def __init__(self, model, device, dtype: torch.dtype = torch.float32, frame_dtype: Optional[torch.dtype] = None):
        super().__init__(model, device)
        # Exported once per generation, never inside the loop (DESIGN.md section 3).
        self.w = export_inference(model).to(self.device, dtype, frame_dtype or torch.float32)

    def sample_frame(self, cond, window, uniforms, inv_temperature, argmax, out, forced=None, logits_out=None):
        sample_frame_ref(self.w.table, cond, self.w.w3, self.w.b3, self.w.wo, self.w.bo, window,
                         uniforms, inv_temperature, argmax, out, forced, logits_out)

    def call_dense(self, op, cond, window, uniforms, inv_temperature, argmax, out, forced=None, logits_out=None):
        """Call a kernel that needs dense tensors with the sample_frame arguments, which may be views
        (a slice of a longer logits buffer); what the kernel wrote into a copy goes back to the view.

        op(w, cond, window, uniforms, inv_temperature, argmax, out, forced, logits_out) with w = self.w.
        """
        win, o, lg = dense(window), dense(out), dense(logits_out)
        op(self.w, cond.contiguous(), win, uniforms.contiguous(), inv_temperature.contiguous(), bool(argmax),
           o, dense(forced), lg)
        for dst, src in ((window, win), (out, o), (logits_out, lg)):
            if dst is not None and dst is not src:
                dst.copy_(src)

    @torch.no_grad()
    def step_frame(self, state: DecodeState, uniforms, inv_temperature, argmax=False, forced=None, logits_out=None):
        cond = frame_step(self.w, state.window, state.rnn)  # (B, F, H)
        out = torch.empty_like(state.window)
        self.sample_frame(cond, state.window, uniforms, inv_temperature, argmax, out, forced, logits_out)
        return out

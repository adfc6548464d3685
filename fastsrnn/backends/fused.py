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


class FusedBackend(Backend):
    name = "ref"

    def __init__(self, model, device, dtype: torch.dtype = torch.float32, frame_dtype: Optional[torch.dtype] = None):
        super().__init__(model, device)
        # Exported once per generation, never inside the loop (DESIGN.md section 3).
        self.w = export_inference(model).to(self.device, dtype, frame_dtype or torch.float32)

    def sample_frame(self, cond, window, uniforms, inv_temperature, argmax, out, forced=None, logits_out=None):
        sample_frame_ref(self.w.table, cond, self.w.w3, self.w.b3, self.w.wo, self.w.bo, window,
                         uniforms, inv_temperature, argmax, out, forced, logits_out)

    @torch.no_grad()
    def step_frame(self, state: DecodeState, uniforms, inv_temperature, argmax=False, forced=None, logits_out=None):
        cond = frame_step(self.w, state.window, state.rnn)  # (B, F, H)
        out = torch.empty_like(state.window)
        self.sample_frame(cond, state.window, uniforms, inv_temperature, argmax, out, forced, logits_out)
        return out

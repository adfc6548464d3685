"""The eager reference backend: the plain PyTorch loop over the model's own modules.

It is the oracle every fused backend is compared with, and the fallback that always works.
"""
from __future__ import annotations

from typing import Optional

import torch

from fastsrnn.backends.base import Backend, DecodeState
from fastsrnn.ops.sampling import sample_ref


class EagerBackend(Backend):
    name = "eager"

    @torch.no_grad()
    def step_frame(self, state: DecodeState, uniforms, inv_temperature, argmax=False,
                   forced: Optional[torch.Tensor] = None, logits_out: Optional[torch.Tensor] = None):
        F = self.cfg.frame_size
        cond, state.rnn = self.model.frame_rnn.step(state.window, state.rnn)  # (B, F, H)
        out = torch.empty_like(state.window)
        window = state.window
        for j in range(F):
            logits = self.model.mlp.step(window, cond[:, j])  # (B, Q)
            if logits_out is not None:
                logits_out[:, j] = logits
            x = forced[:, j] if forced is not None else sample_ref(logits, uniforms[:, j], inv_temperature, argmax)
            out[:, j] = x
            window = torch.cat([window[:, 1:], x[:, None]], dim=1)  # slide the last-F window
        state.window = window
        return out

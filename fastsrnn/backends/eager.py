"""The eager reference backend: the plain PyTorch loop over the model's own modules.

It is the oracle every fused backend is compared with, and the fallback that always works.
"""
from __future__ import annotations

from typing import Optional

import torch

from fastsrnn.backends.base import Backend, DecodeState
from fastsrnn.backends.tiers import record_frame, step_upper_tiers
from fastsrnn.model import RNNState
from fastsrnn.ops.sampling import sample_ref


class EagerBackend(Backend):
    name = "eager"

    @torch.no_grad()
    def step_frame(self, state: DecodeState, uniforms, sampling,
                   forced: Optional[torch.Tensor] = None, logits_out: Optional[torch.Tensor] = None):
        F = self.cfg.frame_size
        up = step_upper_tiers(self.cfg, state, self._step_tier)  # n tiers: the bottom tier's conditioning
        cond, bottom = self.model.frame_rnn.step(state.window, state.rnn, up)  # (B, F, H)
        state.rnn = RNNState(bottom.h, bottom.c, state.rnn.upper)
        out = torch.empty_like(state.window)
        window = state.window
        for j in range(F):
            logits = self.model.mlp.step(window, cond[:, j])  # (B, Q)
            if logits_out is not None:
                logits_out[:, j] = logits
            x = forced[:, j] if forced is not None else sample_ref(logits, uniforms[:, j], sampling)
            out[:, j] = x
            window = torch.cat([window[:, 1:], x[:, None]], dim=1)  # slide the last-F window
        state.window = window
        record_frame(self.cfg, state, out)
        return out

    def _step_tier(self, state: DecodeState, k: int, frame, cond, out) -> None:
        """Upper tier k's step in the model's own module (tiers.StepTier)."""
        upper = list(state.rnn.upper)
        up, upper[k - 1] = self.model.upper_rnns[k - 1].step(frame, upper[k - 1], cond)
        out.copy_(up)
        state.rnn = RNNState(state.rnn.h, state.rnn.c, tuple(upper))

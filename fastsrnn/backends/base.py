"""The contract every generation backend keeps (docs/DESIGN.md §5).

A backend advances a :class:`DecodeState` by one frame: one frame-tier step on the last F
samples, then F sample steps, each drawing from its passed-in uniform. State lives on the
backend's device for the whole generation and is updated in place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from fastsrnn.model import RNNState


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why and what to do."""


@dataclass
class DecodeState:
    """Everything a generation carries from frame to frame. Allocated once, before the loop."""

    rnn: RNNState  # h, c: (L, B, H) frame-tier state
    window: torch.Tensor  # (B, F) int64: the last F samples (the next frame step's input)

    @property
    def batch(self) -> int:
        return self.window.shape[0]

    def clone(self) -> "DecodeState":
        c = None if self.rnn.c is None else self.rnn.c.clone()
        return DecodeState(RNNState(self.rnn.h.clone(), c), self.window.clone())

    def to(self, device) -> "DecodeState":
        c = None if self.rnn.c is None else self.rnn.c.to(device)
        return DecodeState(RNNState(self.rnn.h.to(device), c), self.window.to(device))


class Backend:
    """Base class: ``step_frame`` is the whole per-frame contract."""

    name = "base"

    def __init__(self, model, device):
        self.model = model
        self.cfg = model.cfg
        self.device = torch.device(device)

    def step_frame(
        self,
        state: DecodeState,
        uniforms: torch.Tensor,
        inv_temperature: torch.Tensor,
        argmax: bool = False,
        forced: Optional[torch.Tensor] = None,
        logits_out: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Advance ``state`` by one frame, in place.

        uniforms: (B, F) float32 in [0, 1); inv_temperature: (B,) float32;
        forced: (B, F) int64 true samples to feed instead of drawing (teacher forcing, tests);
        logits_out: (B, F, Q) float32 written with every step's logits when given.
        Returns the F samples of the frame: (B, F) int64 on the backend's device.
        """
        raise NotImplementedError

    @torch.no_grad()
    def step_frames(self, state: DecodeState, uniforms: torch.Tensor, inv_temperature: torch.Tensor,
                    argmax: bool = False) -> torch.Tensor:
        """Advance ``state`` by n frames, in place: what generation calls once per chunk.

        uniforms: (n, B, F) float32 on the backend's device, frame i's draws at [i].
        Returns the samples (B, n, F) int64 on the device. The same results as n calls of
        :meth:`step_frame`; backends with CUDA graphs replay several frames per graph.
        """
        n, B, F = uniforms.shape
        out = torch.empty(B, n, F, dtype=torch.long, device=uniforms.device)
        for i in range(n):
            out[:, i] = self.step_frame(state, uniforms[i], inv_temperature, argmax)
        return out


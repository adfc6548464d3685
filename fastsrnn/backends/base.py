"""The contract every generation backend keeps (docs/DESIGN.md §5).

A backend advances a :class:`DecodeState` by one frame: one frame-tier step on the last F
samples, then F sample steps, each drawing from its passed-in uniform. State lives on the
backend's device for the whole generation and is updated in place. With more than 2 tiers the
tiers above step first when their turn comes (fastsrnn/backends/tiers.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from fastsrnn.model import RNNState
from fastsrnn.ops.sampling import Sampling
from fastsrnn.quantize import silence_level


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why and what to do."""


@dataclass
class DecodeState:
    """Everything a generation carries from frame to frame. Allocated once, before the loop."""

    rnn: RNNState  # h, c: (L, B, H) frame-tier state (rnn.upper: the tiers above, n tiers)
    window: torch.Tensor  # (B, F) int64: the last F samples (the next frame step's input)
    # n tiers only (None, (), 0 with 2): see DecodeState.begin and fastsrnn/backends/tiers.py
    history: Optional[torch.Tensor] = None  # (B, S) int64: slot p (F samples) = the frame made at phase p
    conds: Tuple[torch.Tensor, ...] = ()  # per upper tier k = 1..: (B, frame_sizes[k], H) its last output
    phase: int = 0  # bottom frames since the top tier's last step, in [0, S / F)

    @classmethod
    def begin(cls, cfg, rnn: RNNState, window: torch.Tensor, history: Optional[torch.Tensor] = None) -> "DecodeState":
        """The state before a generation's first frame (or just after a prime): the top tier steps
        first. history: the last S = cfg.lookback samples (default: silence, then ``window``)."""
        if cfg.n_tiers == 2:
            return cls(rnn, window)
        B, S, F, H = window.shape[0], cfg.lookback, cfg.frame_size, cfg.dim
        if history is None:
            history = torch.full((B, S), silence_level(cfg.q_levels), dtype=torch.long, device=window.device)
            history[:, S - F:] = window
        if tuple(history.shape) != (B, S):
            raise ValueError(f"DecodeState: history must be ({B}, {S}), got {tuple(history.shape)}")
        conds = tuple(torch.zeros(B, r, H, device=window.device) for r in cfg.frame_sizes[1:])
        return cls(rnn, window, history.contiguous(), conds, 0)

    @property
    def batch(self) -> int:
        return self.window.shape[0]

    def _map(self, fn) -> "DecodeState":
        return DecodeState(self.rnn.map(fn), fn(self.window), None if self.history is None else fn(self.history),
                           tuple(fn(c) for c in self.conds), self.phase)

    def clone(self) -> "DecodeState":
        return self._map(torch.Tensor.clone)

    def to(self, device) -> "DecodeState":
        return self._map(lambda t: t.to(device))


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
        sampling: Sampling,
        forced: Optional[torch.Tensor] = None,
        logits_out: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Advance ``state`` by one frame, in place.

        uniforms: (B, F) float32 in [0, 1); sampling: how to draw (ops/sampling.py; its
        inv_temperature (B,) float32 on the backend's device);
        forced: (B, F) int64 true samples to feed instead of drawing (teacher forcing, tests);
        logits_out: (B, F, Q) float32 written with every step's logits when given.
        Returns the F samples of the frame: (B, F) int64 on the backend's device.
        """
        raise NotImplementedError

    @torch.no_grad()
    def step_frames(self, state: DecodeState, uniforms: torch.Tensor, sampling: Sampling) -> torch.Tensor:
        """Advance ``state`` by n frames, in place: what generation calls once per chunk.

        uniforms: (n, B, F) float32 on the backend's device, frame i's draws at [i].
        Returns the samples (B, n, F) int64 on the device. The same results as n calls of
        :meth:`step_frame`; backends with CUDA graphs replay several frames per graph.
        """
        n, B, F = uniforms.shape
        out = torch.empty(B, n, F, dtype=torch.long, device=uniforms.device)
        for i in range(n):
            out[:, i] = self.step_frame(state, uniforms[i], sampling)
        return out


"""The eager SampleRNN (2 tiers), exactly the maths of docs/DESIGN.md §2.

This file is the specification: the parallel teacher-forced forward trains the model, and the
``step`` methods are the eager reference that every fused generation backend is tested against.
It knows nothing of kernels.

Shapes: B batch, T target samples, N = T / F frames, F frame size, H dim, E emb size, Q levels,
L RNN layers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as fnn
from torch import _VF
from torch.nn.utils.parametrizations import weight_norm as _weight_norm

from fastsrnn.config import SampleRNNConfig
from fastsrnn.quantize import frame_input


def _maybe_wn(module: nn.Module, on: bool, names=("weight",)) -> nn.Module:
    """Weight normalization (per output row) on ``names`` when ``on``."""
    if on:
        for name in names:
            _weight_norm(module, name=name, dim=0)
    return module


@dataclass
class RNNState:
    """Frame-tier recurrent state. h: (L, B, H); c: (L, B, H) for LSTM, None for GRU."""

    h: torch.Tensor
    c: Optional[torch.Tensor] = None

    def detach(self) -> "RNNState":
        return RNNState(self.h.detach(), None if self.c is None else self.c.detach())


class FrameLevelRNN(nn.Module):
    """Frame tier: an L-layer LSTM/GRU stack over frames, skip connections, upsampling."""

    def __init__(self, cfg: SampleRNNConfig):
        super().__init__()
        self.cfg = cfg
        F, H, L = cfg.frame_size, cfg.dim, cfg.n_rnn
        rnn_cls = nn.LSTM if cfg.rnn_type == "lstm" else nn.GRU
        self.use_skip = cfg.skip and L > 1
        in_sizes = [F] + [H + F if self.use_skip else H] * (L - 1)
        self.rnns = nn.ModuleList()
        for size in in_sizes:
            rnn = rnn_cls(size, H, num_layers=1, batch_first=True)
            if cfg.rnn_type == "lstm":
                with torch.no_grad():  # gate order i, f, g, o: forget gate is rows [H, 2H)
                    rnn.bias_ih_l0[H : 2 * H].fill_(cfg.forget_bias)
                    rnn.bias_hh_l0[H : 2 * H].zero_()
            self.rnns.append(_maybe_wn(rnn, cfg.weight_norm, ("weight_ih_l0", "weight_hh_l0")))
        # Skip connections: output = sum_l P_l out_l, only P_0 with a bias.
        self.skip_proj = nn.ModuleList(
            _maybe_wn(nn.Linear(H, H, bias=(i == 0)), cfg.weight_norm) for i in range(L if self.use_skip else 0)
        )
        self.upsample = _maybe_wn(nn.Linear(H, F * H), cfg.weight_norm)
        if cfg.learn_h0:
            self.h0 = nn.Parameter(torch.zeros(L, 1, H))
            self.c0 = nn.Parameter(torch.zeros(L, 1, H)) if cfg.rnn_type == "lstm" else None
        else:
            self.register_buffer("h0", torch.zeros(L, 1, H), persistent=False)
            if cfg.rnn_type == "lstm":
                self.register_buffer("c0", torch.zeros(L, 1, H), persistent=False)
            else:
                self.c0 = None

    def initial_state(self, batch: int, mode: str = "learned", generator: Optional[torch.Generator] = None) -> RNNState:
        """h0 for ``batch`` sequences. mode: 'learned' (zeros if not learned), 'random' U[-0.5, 0.5], 'zeros'."""
        L, H = self.cfg.n_rnn, self.cfg.dim
        dev = self.h0.device
        lstm = self.cfg.rnn_type == "lstm"
        if mode == "learned":
            # clone: decode updates states in place and must never write into the parameter
            h = self.h0.expand(L, batch, H).clone()
            c = self.c0.expand(L, batch, H).clone() if lstm else None
        elif mode == "random":
            h = (torch.rand(L, batch, H, generator=generator) - 0.5).to(dev)
            c = (torch.rand(L, batch, H, generator=generator) - 0.5).to(dev) if lstm else None
        elif mode == "zeros":
            h = torch.zeros(L, batch, H, device=dev)
            c = torch.zeros(L, batch, H, device=dev) if lstm else None
        else:
            raise ValueError(f"h0 mode must be 'learned', 'random' or 'zeros', got {mode!r}")
        return RNNState(h, c)

    def forward(self, frames: torch.Tensor, state: RNNState):
        """frames: (B, N, F) int samples of the previous frames -> cond (B, N*F, H), new state."""
        B, N, F = frames.shape
        out, new = self._recur(frame_input(frames, self.cfg.q_levels), state)  # input in [-2, 2]
        cond = self.upsample(out).reshape(B, N * F, self.cfg.dim)  # (B, N, F*H) -> (B, N*F, H)
        return cond, new

    def _recur(self, x_in: torch.Tensor, state: RNNState):
        """x_in: (B, N, F) float frame input -> tier output (B, N, H) before upsampling, new state."""
        x, hs, cs, total = x_in, [], [], None
        for i, rnn in enumerate(self.rnns):
            if i > 0 and self.use_skip:
                x = torch.cat([x, x_in], dim=-1)  # (B, N, H + F)
            if state.c is not None:
                x, (h, c) = self.run_rnn(rnn, x, (state.h[i : i + 1].contiguous(), state.c[i : i + 1].contiguous()))
                cs.append(c)
            else:
                x, h = self.run_rnn(rnn, x, state.h[i : i + 1].contiguous())
            hs.append(h)
            if self.use_skip:
                proj = self.skip_proj[i](x)
                total = proj if total is None else total + proj
        out = total if self.use_skip else x  # (B, N, H)
        return out, RNNState(torch.cat(hs, 0), torch.cat(cs, 0) if cs else None)

    def run_rnn(self, rnn: nn.RNNBase, x: torch.Tensor, hx, flat: Optional[bool] = None):
        """``rnn(x, hx)``; with ``flat`` (default: on CUDA with weight norm) its weights are first
        laid out in one contiguous buffer, in cuDNN's order (w_ih, w_hh, b_ih, b_hh).

        Why: weight norm recomputes w_ih and w_hh from (g, v) at every forward, as fresh tensors,
        so ``flatten_parameters()`` cannot help (it flattens the stored tensors, which the next
        forward replaces), and cuDNN, finding the weights scattered, compacts them itself at every
        call and warns "RNN module weights are not part of single contiguous chunk of memory".
        One ``torch.cat`` of the computed weights gives it the chunk it wants (the same copy cuDNN
        would make, O(weights), without the warning); the gradients flow back through the cat.
        The values are the same tensors, so results do not change; off CUDA the module runs as is.
        """
        if flat is None:
            flat = x.is_cuda and self.cfg.weight_norm
        if not flat:
            return rnn(x, hx)
        weights = [getattr(rnn, name) for name in rnn._flat_weights_names]  # weight norm computes them here
        buf = torch.cat([w.reshape(-1) for w in weights])
        views = [v.view_as(w) for v, w in zip(buf.split([w.numel() for w in weights]), weights)]
        args = (rnn.bias, rnn.num_layers, 0.0, self.training, rnn.bidirectional, rnn.batch_first)
        if isinstance(rnn, nn.LSTM):
            out, h, c = _VF.lstm(x, hx, views, *args)
            return out, (h, c)
        return tuple(_VF.gru(x, hx, views, *args))

    def advance(self, frames: torch.Tensor, state: RNNState, block: int = 1024) -> RNNState:
        """Run the recurrence over frames (B, N, F) without upsampling (priming): memory O(block)."""
        for start in range(0, frames.shape[1], block):
            state = self._recur(frame_input(frames[:, start:start + block], self.cfg.q_levels), state)[1]
        return state

    def step(self, frame: torch.Tensor, state: RNNState):
        """One frame step. frame: (B, F) int -> cond (B, F, H), new state."""
        cond, new = self.forward(frame[:, None, :], state)
        return cond, new


class SampleLevelMLP(nn.Module):
    """Sample tier: logits = Wo relu(W3 relu(W2 (W1 e + c) + b2) + b3) + bo."""

    def __init__(self, cfg: SampleRNNConfig):
        super().__init__()
        self.cfg = cfg
        F, E, H, Q = cfg.frame_size, cfg.emb_size, cfg.dim, cfg.q_levels
        wn = cfg.weight_norm
        self.embedding = nn.Embedding(Q, E)
        self.w1 = _maybe_wn(nn.Linear(F * E, H, bias=False), wn)  # input is F embeddings, slot-major
        self.w2 = _maybe_wn(nn.Linear(H, H), wn)
        self.w3 = _maybe_wn(nn.Linear(H, H), wn)
        self.out = _maybe_wn(nn.Linear(H, Q), wn)

    def _head(self, a1: torch.Tensor) -> torch.Tensor:
        a2 = torch.relu(self.w2(a1))  # no non-linearity between W1 and W2 (docs/DESIGN.md §3)
        a3 = torch.relu(self.w3(a2))
        return self.out(a3)

    def forward(self, x_in: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x_in: (B, T+F-1) int, cond: (B, T, H) -> logits (B, T, Q) for targets x_in[:, F-1:]+1 shift."""
        F, E, H = self.cfg.frame_size, self.cfg.emb_size, self.cfg.dim
        emb = self.embedding(x_in).transpose(1, 2)  # (B, E, T+F-1)
        # W1 over a sliding window of F embeddings is a convolution with kernel F.
        kernel = self.w1.weight.view(H, F, E).permute(0, 2, 1)  # (H, F*E) -> (H, E, F)
        a1 = fnn.conv1d(emb, kernel).transpose(1, 2) + cond  # (B, T, H)
        return self._head(a1)

    def step(self, window: torch.Tensor, cond_j: torch.Tensor) -> torch.Tensor:
        """window: (B, F) int, the F previous samples; cond_j: (B, H) -> logits (B, Q)."""
        e = self.embedding(window).reshape(window.shape[0], -1)  # (B, F, E) -> (B, F*E)
        return self._head(self.w1(e) + cond_j)


class SampleRNN(nn.Module):
    """2-tier SampleRNN: FrameLevelRNN conditions a SampleLevelMLP at every sample."""

    def __init__(self, cfg: SampleRNNConfig):
        super().__init__()
        self.cfg = cfg
        self.frame_rnn = FrameLevelRNN(cfg)
        self.mlp = SampleLevelMLP(cfg)

    def initial_state(self, batch: int, mode: str = "learned", generator: Optional[torch.Generator] = None) -> RNNState:
        return self.frame_rnn.initial_state(batch, mode, generator)

    def forward(self, x: torch.Tensor, state: Optional[RNNState] = None):
        """Teacher-forced forward. x: (B, F + T) int, T a multiple of F; x[:, :F] is context.

        Returns logits (B, T, Q) predicting x[:, F:], and the RNN state after the N = T/F frames.
        """
        F = self.cfg.frame_size
        B, total = x.shape
        T = total - F
        if T <= 0 or T % F:
            raise ValueError(f"SampleRNN.forward: input length {total} must be F + T "
                             f"with T a positive multiple of F={F}")
        if state is None:
            state = self.initial_state(B)
        frames = x[:, :T].reshape(B, T // F, F)  # (B, N, F): frame n conditions targets x[F + nF + j]
        cond, new_state = self.frame_rnn(frames, state)
        logits = self.mlp(x[:, : F + T - 1], cond)
        return logits, new_state

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def nll_bits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in bits per sample. logits: (B, T, Q), target: (B, T) int."""
    nats = fnn.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
    return nats * 1.4426950408889634  # log2(e)


__all__: List[str] = ["RNNState", "FrameLevelRNN", "SampleLevelMLP", "SampleRNN", "nll_bits"]

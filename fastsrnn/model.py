"""The eager SampleRNN (2 tiers, or n: docs/DESIGN.md "n tiers"), exactly the maths of docs/DESIGN.md §2.

This file is the specification: the parallel teacher-forced forward trains the model, and the
``step`` methods are the eager reference that every fused generation backend is tested against.
It knows nothing of kernels.

Shapes: B batch, T target samples, N = T / F frames, F frame size, H dim, E emb size, Q levels,
L RNN layers; S = cfg.lookback (the top frame tier's frame; F with 2 tiers).
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

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


@functools.lru_cache(maxsize=None)
def cpu_autocast_lstm_ok() -> bool:
    """Whether torch's LSTM runs under CPU bf16 autocast on this machine (probed once per process).

    Under autocast torch hands a CPU LSTM to oneDNN in bf16, and oneDNN has no bf16 LSTM on a CPU
    without native bf16 instructions (AVX512-BF16 or AMX: e.g. AVX2-only AMD EPYCs): there it
    raises "could not create a primitive descriptor for the LSTM forward propagation primitive".
    A one-step probe asks the library itself, rather than guessing from the CPU's flags.
    """
    probe = nn.LSTM(2, 2, batch_first=True)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            probe(torch.zeros(1, 1, 2))
    except RuntimeError:
        return False
    return True


def _cpu_bf16_autocast(x: torch.Tensor) -> bool:
    return (not x.is_cuda and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)


@dataclass
class RNNState:
    """Frame-tier recurrent state. h: (L, B, H); c: (L, B, H) for LSTM, None for GRU.

    upper: with more than 2 tiers, the states of the frame tiers above the bottom one (same
    shapes), from the bottom up; () for the 2-tier model.
    """

    h: torch.Tensor
    c: Optional[torch.Tensor] = None
    upper: Tuple["RNNState", ...] = ()

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "RNNState":
        """fn applied to every tensor (every tier's h and c): detach, move, select batch rows."""
        return RNNState(fn(self.h), None if self.c is None else fn(self.c), tuple(u.map(fn) for u in self.upper))

    def detach(self) -> "RNNState":
        return self.map(torch.Tensor.detach)

    def clone(self) -> "RNNState":
        return self.map(torch.Tensor.clone)

    def tiers(self) -> List["RNNState"]:
        """Every frame tier's own state (upper ones empty), from the bottom up."""
        return [RNNState(self.h, self.c)] + [RNNState(u.h, u.c) for u in self.upper]

    @staticmethod
    def from_tiers(tiers: Sequence["RNNState"]) -> "RNNState":
        return RNNState(tiers[0].h, tiers[0].c, tuple(RNNState(t.h, t.c) for t in tiers[1:]))

    def to_dict(self) -> dict:
        """h, c as ever (files from before n tiers read the same), plus "upper": [(h, c), ...] with n tiers."""
        d = {"h": self.h, "c": self.c}
        if self.upper:
            d["upper"] = [(u.h, u.c) for u in self.upper]
        return d

    @staticmethod
    def from_dict(d: dict) -> "RNNState":
        return RNNState(d["h"], d["c"], tuple(RNNState(h, c) for h, c in d.get("upper", ())))


class FrameLevelRNN(nn.Module):
    """Frame tier: an L-layer LSTM/GRU stack over frames, skip connections, upsampling.

    n_in: samples per step (its input frame; default F), n_out: positions its upsampling makes
    per step (default F: the sample tier's; an upper tier's: the steps of the tier below);
    conditioned: it has a tier above, whose upsampled output (H per step) enters the first layer
    as H more inputs, before the frame: layer 0 runs on [cond, x_in].
    """

    def __init__(self, cfg: SampleRNNConfig, n_in: Optional[int] = None, n_out: Optional[int] = None,
                 conditioned: bool = False):
        super().__init__()
        self.cfg = cfg
        F, H, L = n_in or cfg.frame_size, cfg.dim, cfg.n_rnn
        self.n_in, self.n_out, self.conditioned = F, n_out or cfg.frame_size, conditioned
        rnn_cls = nn.LSTM if cfg.rnn_type == "lstm" else nn.GRU
        self.use_skip = cfg.skip and L > 1
        in_sizes = [F + (H if conditioned else 0)] + [H + F if self.use_skip else H] * (L - 1)
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
        self.upsample = _maybe_wn(nn.Linear(H, self.n_out * H), cfg.weight_norm)
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

    def forward(self, frames: torch.Tensor, state: RNNState, cond: Optional[torch.Tensor] = None):
        """frames: (B, N, n_in) int samples of the previous frames; cond: (B, N, H) from the tier
        above (conditioned tiers only) -> upsampled (B, N*n_out, H), new state (this tier's)."""
        B, N, _ = frames.shape
        out, new = self._recur(frame_input(frames, self.cfg.q_levels), state, cond)  # input in [-2, 2]
        up = self.upsample(out).reshape(B, N * self.n_out, self.cfg.dim)  # (B, N, n_out*H) -> (B, N*n_out, H)
        return up, new

    def _recur(self, x_in: torch.Tensor, state: RNNState, cond: Optional[torch.Tensor] = None):
        """x_in: (B, N, n_in) float frame input -> tier output (B, N, H) before upsampling, new state."""
        if (cond is not None) != self.conditioned:
            raise ValueError("FrameLevelRNN: cond is required by a conditioned tier and refused by the top one")
        x, hs, cs, total = x_in, [], [], None
        if cond is not None:
            x = torch.cat([cond, x_in], dim=-1)  # (B, N, H + n_in)
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
        An LSTM under CPU bf16 autocast on a CPU without a bf16 LSTM runs in fp32
        (:func:`cpu_autocast_lstm_ok`), the rest of the model staying in bf16.
        """
        if isinstance(rnn, nn.LSTM) and _cpu_bf16_autocast(x) and not cpu_autocast_lstm_ok():
            return _lstm_fp32(rnn, x, hx)
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

    def step(self, frame: torch.Tensor, state: RNNState, cond: Optional[torch.Tensor] = None):
        """One step. frame: (B, n_in) int, cond: (B, H) or None -> upsampled (B, n_out, H), new state."""
        return self.forward(frame[:, None, :], state, None if cond is None else cond[:, None, :])


_FP32_LSTM_SAID = False


def _lstm_fp32(rnn: nn.LSTM, x: torch.Tensor, hx):
    """``rnn(x, hx)`` in fp32 with autocast paused: the CPU bf16-autocast fallback (said once)."""
    global _FP32_LSTM_SAID
    if not _FP32_LSTM_SAID:
        _FP32_LSTM_SAID = True
        warnings.warn("this CPU has no bf16 LSTM (oneDNN needs AVX512-BF16 or AMX): under --amp bf16 the "
                      "LSTM layers run in fp32 and the rest of the model in bf16", UserWarning, stacklevel=3)
    with torch.autocast("cpu", enabled=False):
        out, (h, c) = rnn(x.float(), (hx[0].float(), hx[1].float()))
    return out, (h, c)


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
    """SampleRNN: frame tiers, each conditioning the one below, the bottom one conditioning a
    SampleLevelMLP at every sample. 2 tiers (cfg.frame_sizes = (F,)) is the Dadabots model.

    frame_rnn is the bottom frame tier (its parameter names are those of 2-tier checkpoints);
    upper_rnns the tiers above it, from the bottom up (empty with 2 tiers). Tier k (0 = bottom)
    steps every S_k = cfg.tier_samples(k) samples on the previous S_k samples; an upper tier's
    upsampling gives one vector per step of the tier below.
    """

    def __init__(self, cfg: SampleRNNConfig):
        super().__init__()
        self.cfg = cfg
        n_up = len(cfg.frame_sizes) - 1
        self.frame_rnn = FrameLevelRNN(cfg, conditioned=n_up > 0)
        self.upper_rnns = nn.ModuleList(
            FrameLevelRNN(cfg, n_in=cfg.tier_samples(k), n_out=cfg.frame_sizes[k], conditioned=k < n_up)
            for k in range(1, n_up + 1))
        self.mlp = SampleLevelMLP(cfg)

    @property
    def frame_tiers(self) -> List[FrameLevelRNN]:
        """Every frame tier, from the bottom up."""
        return [self.frame_rnn, *self.upper_rnns]

    def initial_state(self, batch: int, mode: str = "learned", generator: Optional[torch.Generator] = None) -> RNNState:
        """Every tier's h0 (random ones drawn bottom tier first: 2-tier draws are unchanged)."""
        return RNNState.from_tiers([t.initial_state(batch, mode, generator) for t in self.frame_tiers])

    def _check_length(self, total: int, what: str) -> int:
        S = self.cfg.lookback
        T = total - S
        if T <= 0 or T % S:
            raise ValueError(f"SampleRNN.{what}: input length {total} must be S + T with T a positive "
                             f"multiple of S={S} (the top frame tier's frame, cfg.lookback)")
        return T

    def _frame_tiers(self, x: torch.Tensor, state: RNNState, upsample_bottom: bool = True):
        """Run every frame tier, top down, over x (B, S + T): the bottom tier's upsampled
        conditioning (B, T, H) (None without ``upsample_bottom``) and the new state."""
        B, S, T = x.shape[0], self.cfg.lookback, x.shape[1] - self.cfg.lookback
        tiers, states = self.frame_tiers, state.tiers()
        if len(states) != len(tiers):
            raise ValueError(f"SampleRNN: the state has {len(states)} frame tiers, the model {len(tiers)}")
        cond, new = None, [None] * len(tiers)
        for k in range(len(tiers) - 1, -1, -1):
            Sk = self.cfg.tier_samples(k)
            frames = x[:, S - Sk:S - Sk + T].reshape(B, T // Sk, Sk)  # step n: the Sk samples before S + n Sk
            if k == 0 and not upsample_bottom:
                new[0] = tiers[0]._recur(frame_input(frames, self.cfg.q_levels), states[0], cond)[1]
                cond = None
            else:
                cond, new[k] = tiers[k](frames, states[k], cond)  # (B, T / S_{k-1}, H): per step below
        return cond, RNNState.from_tiers(new)

    def forward(self, x: torch.Tensor, state: Optional[RNNState] = None):
        """Teacher-forced forward. x: (B, S + T) int, T a multiple of S = cfg.lookback (F with 2
        tiers); x[:, :S] is context.

        Returns logits (B, T, Q) predicting x[:, S:], and the RNN state after T samples.
        """
        F, S = self.cfg.frame_size, self.cfg.lookback
        T = self._check_length(x.shape[1], "forward")
        if state is None:
            state = self.initial_state(x.shape[0])
        cond, new_state = self._frame_tiers(x, state)  # bottom frame n conditions targets x[S + nF + j]
        logits = self.mlp(x[:, S - F: S + T - 1], cond)
        return logits, new_state

    @torch.no_grad()
    def advance(self, x: torch.Tensor, state: RNNState, block: Optional[int] = None) -> RNNState:
        """The state after teacher-forcing x (B, S + T) (what forward returns) without the sample
        tier or the bottom upsampling (priming): memory O(block) samples (default 1024 bottom
        frames, rounded to whole top frames)."""
        S = self.cfg.lookback
        T = self._check_length(x.shape[1], "advance")
        block = max(S, (block or 1024 * self.cfg.frame_size) // S * S)
        for start in range(0, T, block):
            state = self._frame_tiers(x[:, start:start + S + min(block, T - start)], state, upsample_bottom=False)[1]
        return state

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def nll_bits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in bits per sample. logits: (B, T, Q), target: (B, T) int."""
    nats = fnn.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
    return nats * 1.4426950408889634  # log2(e)


__all__: List[str] = ["RNNState", "FrameLevelRNN", "SampleLevelMLP", "SampleRNN", "nll_bits"]

"""The schedule of the frame tiers above the bottom one (n-tier models), shared by every backend.

Bottom frame n (phase p = n mod R, R = S / F bottom frames per top step): every upper tier k
whose period P_k = S_k / F divides p steps first, top down, on the last S_k samples (history
slots [p' - P_k, p'), p' = p or R) and, below the top, on its slot of the tier above's output;
its output (B, frame_sizes[k], H) replaces ``state.conds[k - 1]`` in place. The bottom tier then
takes ``state.conds[0][:, p mod frame_sizes[1]]``. After the frame, its F samples go to slot p.
Backends differ only in how one tier steps (``step_tier``); the 2-tier model never gets here.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

# step_tier(state, k, frame (B, S_k) int64, cond (B, H) or None, out (B, frame_sizes[k], H)):
# advance tier k's state (state.rnn.upper[k - 1]) by one step and write its upsampled output into out.
StepTier = Callable[[object, int, torch.Tensor, Optional[torch.Tensor], torch.Tensor], None]


def step_upper_tiers(cfg, state, step_tier: StepTier) -> Optional[torch.Tensor]:
    """Step the upper tiers due at ``state.phase``; the bottom tier's conditioning (B, H), a view
    of state.conds[0] (None for a 2-tier model)."""
    n_up = cfg.n_tiers - 2
    if n_up == 0:
        return None
    if state.history is None or len(state.conds) != n_up:
        raise ValueError(f"a {cfg.n_tiers}-tier model needs a DecodeState made by DecodeState.begin "
                         "(history and the upper tiers' outputs)")
    F, p = cfg.frame_size, state.phase
    R = cfg.lookback // F
    for k in range(n_up, 0, -1):
        period = cfg.tier_samples(k) // F  # bottom frames per step of tier k
        if p % period:
            continue
        end = (p or R) * F
        frame = state.history[:, end - period * F:end]
        cond = None if k == n_up else state.conds[k][:, (p // period) % cfg.frame_sizes[k + 1]]
        step_tier(state, k, frame, cond, state.conds[k - 1])
    return state.conds[0][:, p % cfg.frame_sizes[1]]


def record_frame(cfg, state, samples: torch.Tensor) -> None:
    """After a bottom frame: its samples (B, F) into history slot ``phase``, and the phase on."""
    if cfg.n_tiers == 2:
        return
    F, p = cfg.frame_size, state.phase
    state.history[:, p * F:(p + 1) * F].copy_(samples)
    state.phase = (p + 1) % (cfg.lookback // F)

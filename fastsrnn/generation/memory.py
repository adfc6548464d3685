"""Will a generation fit in memory? An estimate checked before anything is written."""
from __future__ import annotations

import os

import torch

from fastsrnn.config import SampleRNNConfig

HEADROOM = 0.8  # use at most this fraction of the free memory


def generation_bytes(cfg: SampleRNNConfig, n_seq: int, chunk_frames: int = 1000) -> int:
    """Upper estimate of a generation's memory: weights (model + exported copy) and per-sequence state.

    Per sequence: RNN states, the frame's conditioning and activations (all fp32), the eager
    MLP's widest activation (F*E), the gate pre-activations, and one chunk of int64 samples.
    """
    F, E, H, Q, L, G = cfg.frame_size, cfg.emb_size, cfg.dim, cfg.q_levels, cfg.n_rnn, cfg.gates
    weights = 4 * (L * G * H * (2 * H + F) + L * H * H + 2 * F * H * H + F * E * H + F * Q * H + 2 * H * H + Q * H)
    per_seq = 4 * (2 * L * H + 2 * F * H + F * E + 2 * G * H + 4 * H + 2 * Q) + 8 * chunk_frames * F
    for k in range(1, cfg.n_tiers - 1):  # n tiers: each upper tier's RNN (conditioning inputs too), upsampling
        S, r = cfg.tier_samples(k), cfg.frame_sizes[k]
        weights += 4 * (L * G * H * (3 * H + 2 * S) + L * H * H + r * H * H)
        per_seq += 4 * (2 * L * H + r * H + 2 * G * H + H) + 8 * S
    return 2 * weights + n_seq * per_seq


def free_bytes(device) -> int:
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_generation_fits(cfg: SampleRNNConfig, n_seq: int, device=None, chunk_frames: int = 1000) -> None:
    """Raise a clear error (with the largest n_seq that fits) when n_seq sequences cannot fit."""
    if n_seq < 1:
        raise ValueError(f"--n-seq must be >= 1, got {n_seq}")
    need, free = generation_bytes(cfg, n_seq, chunk_frames), free_bytes(device)
    if need > HEADROOM * free:
        one = generation_bytes(cfg, 1, chunk_frames) - generation_bytes(cfg, 0, chunk_frames)
        fits = max(0, int((HEADROOM * free - generation_bytes(cfg, 0, chunk_frames)) // one))
        raise ValueError(f"--n-seq {n_seq} needs about {need / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB is free "
                         f"on {device or 'this machine'}; at most {fits} sequences fit")

"""Training data for :mod:`fastsrnn.training.trainer`: quantized chunks in memory, TBPTT slicing, NLL.

A prepared dataset (``fastsrnn prepare``) is read once: every chunk of a split is quantized
per the model config and kept as small integers (uint8 for Q <= 256), so an album of tens of
minutes fits in memory and no worker processes are needed.

Shapes: B batch of chunks, L samples per chunk, F frame size, T samples per sub-sequence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch

from fastsrnn.config import SampleRNNConfig
from fastsrnn.model import SampleRNN, nll_bits
from fastsrnn.quantize import quantize, silence_level


@dataclass
class ChunkSet:
    """The chunks of one split. levels: list of (L_i,) small-int tensors, L_i a multiple of cfg.lookback."""

    split: str
    levels: List[torch.Tensor]
    dropped: int = 0  # chunks too short to use (less than one frame, or shorter than the rest)

    def __len__(self) -> int:
        return len(self.levels)

    @property
    def samples(self) -> int:
        return sum(int(x.numel()) for x in self.levels)


def _storage_dtype(q_levels: int) -> torch.dtype:
    return torch.uint8 if q_levels <= 256 else torch.int32  # 1 byte per sample for the paper's Q


def load_split(data_dir, split: str, cfg: SampleRNNConfig) -> ChunkSet:
    """Read and quantize every chunk of ``split``; each is cut to a whole number of frames (of the
    top frame tier: cfg.lookback samples; F with 2 tiers)."""
    from fastsrnn.data.audio import read_audio
    from fastsrnn.data.manifest import split_files

    S, levels, dropped = cfg.lookback, [], 0
    for path in split_files(data_dir, split):
        audio = read_audio(path, cfg.sample_rate)
        n = (audio.shape[0] // S) * S
        if n == 0:
            dropped += 1
            continue
        q = quantize(torch.from_numpy(np.ascontiguousarray(audio[:n])), cfg.q_levels, cfg.q_type)
        levels.append(q.to(_storage_dtype(cfg.q_levels)))
    return ChunkSet(split, levels, dropped)


def equal_length_train(chunks: ChunkSet) -> Tuple[torch.Tensor, int]:
    """Stack the train chunks into (N, L) for batching, L the most common length.

    Chunks of another length (the tail of a song, when preparation keeps it) would break the
    rectangular batch; shorter ones are dropped, longer ones cropped. Returns (stack, dropped).
    """
    if not chunks.levels:
        raise ValueError(f"the {chunks.split!r} split has no usable chunks; prepare more audio or shorter chunks")
    lengths = [int(x.numel()) for x in chunks.levels]
    L = max(set(lengths), key=lambda n: (lengths.count(n), n))
    kept = [x[:L] for x in chunks.levels if x.numel() >= L]
    return torch.stack(kept), len(lengths) - len(kept)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The chunk order of one epoch: (n,) int64, a function of (seed, epoch) only (exact resume)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
    return torch.randperm(n, generator=g)


def with_context(levels: torch.Tensor, cfg: SampleRNNConfig) -> torch.Tensor:
    """levels: (B, L) small int -> (B, S + L) int64 with S = cfg.lookback samples of silence as the
    first frame's context (F with 2 tiers)."""
    B = levels.shape[0]
    pad = torch.full((B, cfg.lookback), silence_level(cfg.q_levels), dtype=torch.long)
    return torch.cat([pad, levels.long()], dim=1)


def n_subsequences(length: int, tbptt_samples: int) -> int:
    """Sub-sequences of ``tbptt_samples`` targets covering a chunk of ``length`` samples (last may be shorter)."""
    return math.ceil(length / tbptt_samples)


def subsequence(x: torch.Tensor, s: int, tbptt_samples: int, context: int) -> torch.Tensor:
    """x: (B, S + L) -> input (B, S + T) of sub-sequence s (S = ``context`` = cfg.lookback); its
    targets are the last T samples."""
    start = s * tbptt_samples
    return x[:, start:start + tbptt_samples + context]


@torch.no_grad()
def chunk_nll(model: SampleRNN, chunks: ChunkSet, tbptt_samples: int, batch_size: int,
              device, shard: Tuple[int, int] = (0, 1)) -> Tuple[float, int]:
    """Sum of NLL in bits and count of samples over whole chunks, state carried through each chunk.

    Chunks of equal length are batched together (at most ``batch_size``); shard (rank, world)
    takes every world-th batch so that ranks can split the work and all-reduce the sums.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i, batch in enumerate(_equal_length_batches(chunks, batch_size)):
        if i % shard[1] != shard[0]:
            continue
        x = with_context(batch, model.cfg).to(device)
        bits = _sequence_nll(model, x, tbptt_samples)
        total += bits * batch.numel()
        count += batch.numel()
    model.train(was_training)
    return total, count


def _equal_length_batches(chunks: ChunkSet, batch_size: int) -> Iterator[torch.Tensor]:
    by_len = {}
    for x in chunks.levels:
        by_len.setdefault(int(x.numel()), []).append(x)
    for L in sorted(by_len):
        group = by_len[L]
        for i in range(0, len(group), batch_size):
            yield torch.stack(group[i:i + batch_size])  # (B, L)


def _sequence_nll(model: SampleRNN, x: torch.Tensor, tbptt_samples: int) -> float:
    """x: (B, S + L) int64 -> mean bits per sample over the L targets, in sub-sequences (memory O(T))."""
    S = model.cfg.lookback
    L = x.shape[1] - S
    state, total = model.initial_state(x.shape[0]), 0.0
    for s in range(n_subsequences(L, tbptt_samples)):
        inp = subsequence(x, s, tbptt_samples, S)
        logits, state = model(inp, state)
        total += float(nll_bits(logits, inp[:, S:])) * (inp.shape[1] - S)
    return total / L


def describe(train: ChunkSet, train_len: Optional[int], valid: ChunkSet, test: ChunkSet, sample_rate: int) -> str:
    """One line about the data for the log."""
    secs = lambda c: c.samples / sample_rate  # noqa: E731
    msg = (f"data: {len(train)} train chunks ({secs(train) / 60:.1f} min"
           + (f", {train_len / sample_rate:.2f} s each" if train_len else "")
           + f"), {len(valid)} valid ({secs(valid):.0f} s), {len(test)} test ({secs(test):.0f} s)")
    return msg


def data_path(data_dir) -> Path:
    p = Path(data_dir)
    if not (p / "manifest.json").is_file():
        raise FileNotFoundError(f"{p}: not a prepared dataset (no manifest.json); "
                                f"run 'fastsrnn prepare SONGS... --out {p}' first")
    return p

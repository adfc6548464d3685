"""Truncated BPTT over in-memory chunks (:mod:`fastsrnn.data.chunks`) for
:mod:`fastsrnn.training.trainer`: the epoch order, the silence context, the sub-sequences, and
the NLL of whole chunks with the state carried through each.

Shapes: B batch of chunks, L samples per chunk, F frame size, T samples per sub-sequence.
"""
from __future__ import annotations

import math
from typing import Iterator, Tuple

import torch

from fastsrnn.config import SampleRNNConfig
from fastsrnn.data.chunks import ChunkSet
from fastsrnn.model import SampleRNN, nll_bits
from fastsrnn.quantize import silence_level


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

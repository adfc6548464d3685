"""A prepared dataset's chunks in memory: every chunk of a split read, quantized per the model
config and kept as small integers (uint8 for Q <= 256), so an album of tens of minutes fits in
memory and no worker processes are needed. The trainer batches them; the precision guard measures
on the test split.

Shapes: N chunks, L samples per chunk.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from fastsrnn.config import SampleRNNConfig
from fastsrnn.quantize import quantize


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

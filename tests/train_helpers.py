"""Shared pieces of the training, checkpoint and demo tests: a learnable dataset, small configs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from fastsrnn import SampleRNNConfig
from fastsrnn.training.trainer import TrainConfig

# Small enough that a step takes a few milliseconds on one core.
SMALL = SampleRNNConfig.from_name("tiny", dim=32, emb_size=8, n_rnn=2)


def riff_dataset(root: Path, seconds: float = 6.0, chunk_seconds: float = 0.25, sample_rate: int = 16000) -> Path:
    """A repeating riff (4 square-wave notes of 1/16 s, looped), prepared into ``root/data``.

    Periodic, so the next sample is predictable from the past: a model that learns drives the
    NLL far below the 8 bits of a uniform guess.
    """
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    note = (t * 16).astype(int) % 4  # which of the 4 notes plays
    freq = np.array([250.0, 500.0, 1000.0, 500.0])[note]
    phase = 2 * np.pi * np.cumsum(freq) / sample_rate
    audio = (0.5 * np.sign(np.sin(phase))).astype(np.float32)
    wav = root / "riff.wav"
    sf.write(str(wav), audio, sample_rate)
    from fastsrnn.data.prepare import prepare

    prepare([wav], root / "data", sample_rate=sample_rate, chunk_seconds=chunk_seconds, seed=0, progress=False)
    return root / "data"


def small_train_config(**overrides) -> TrainConfig:
    base = dict(batch_size=4, tbptt=8, max_steps=20, checkpoint_every=5, n_clips=1, clip_seconds=0.02,
                clip_backend="eager", device="cpu")
    base.update(overrides)
    return TrainConfig(**base)


def assert_same_training_state(a: dict, b: dict) -> None:
    """Two loaded last.pt dicts hold bit-identical weights, Adam state and position."""
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"weight {k} differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k, v in sa[i].items():
            assert torch.equal(v, sb[i][k]), f"optimizer state {i}.{k} differs"
    for k in ("step", "epoch", "batch", "sub", "best_valid", "best_step"):
        assert a[k] == b[k], k
    for k in ("rnn_h", "rnn_c"):
        assert (a[k] is None and b[k] is None) or torch.equal(a[k], b[k]), k

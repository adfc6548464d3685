"""Model configuration: one frozen dataclass, validated, with named presets (gpt-fast style).

The config dict is saved inside every checkpoint, so a checkpoint alone rebuilds its model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Dict


@dataclass(frozen=True)
class SampleRNNConfig:
    sample_rate: int = 16000  # Hz; audio is resampled to this at preparation
    q_levels: int = 256  # Q: quantization levels of a sample
    q_type: str = "linear"  # "linear" (the paper) or "mulaw"
    frame_size: int = 16  # F: samples per frame-tier step
    emb_size: int = 256  # E: embedding size of one quantized sample
    dim: int = 1024  # H: width of the RNN and the MLP
    n_rnn: int = 5  # L: stacked RNN layers in the frame tier
    rnn_type: str = "lstm"  # "lstm" or "gru"
    skip: bool = True  # Graves skip connections in the frame tier
    weight_norm: bool = True  # weight normalization on every linear layer (and RNN matrices)
    forget_bias: float = 3.0  # LSTM forget-gate bias at initialization
    learn_h0: bool = True  # learned initial RNN state (else zeros in training)

    def __post_init__(self):
        def need(ok: bool, msg: str):
            if not ok:
                raise ValueError(f"SampleRNNConfig: {msg}")

        need(self.sample_rate > 0, f"sample_rate must be > 0, got {self.sample_rate}")
        need(2 <= self.q_levels <= 65536, f"q_levels must be in [2, 65536], got {self.q_levels}")
        need(self.q_type in ("linear", "mulaw"), f"q_type must be 'linear' or 'mulaw', got {self.q_type!r}")
        need(self.frame_size >= 1, f"frame_size must be >= 1, got {self.frame_size}")
        need(self.emb_size >= 1, f"emb_size must be >= 1, got {self.emb_size}")
        need(self.dim >= 1, f"dim must be >= 1, got {self.dim}")
        need(self.n_rnn >= 1, f"n_rnn must be >= 1, got {self.n_rnn}")
        need(self.rnn_type in ("lstm", "gru"), f"rnn_type must be 'lstm' or 'gru', got {self.rnn_type!r}")

    @property
    def gates(self) -> int:
        """Gate blocks per RNN layer: 4 for LSTM (i, f, g, o), 3 for GRU (r, z, n)."""
        return 4 if self.rnn_type == "lstm" else 3

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "SampleRNNConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"SampleRNNConfig: unknown fields {unknown} (checkpoint from a newer fastsrnn?)")
        return cls(**d)

    @classmethod
    def from_name(cls, name: str, **overrides) -> "SampleRNNConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)


_PAPER = SampleRNNConfig()

PRESETS: Dict[str, SampleRNNConfig] = {
    # The Dadabots NIPS 2017 best model: 2-tier, 5 x 1024 LSTM, skip connections, weight norm.
    "dadabots-2tier": _PAPER,
    "dadabots-2tier-gru": replace(_PAPER, rnn_type="gru"),
    "dadabots-2tier-7layer": replace(_PAPER, n_rnn=7),
    "dadabots-2tier-9layer": replace(_PAPER, n_rnn=9),
    # Small enough to train for a minute on two CPU cores (tests and `fastsrnn demo`).
    "tiny": replace(_PAPER, frame_size=16, emb_size=32, dim=128, n_rnn=2),
}

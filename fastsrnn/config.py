"""Model configuration: one frozen dataclass, validated, with named presets (gpt-fast style).

The config dict is saved inside every checkpoint, so a checkpoint alone rebuilds its model.

Tiers: ``frame_sizes`` lists the frame tiers from the bottom up, in samplernn-pytorch's
convention: ``frame_sizes[0]`` is the bottom frame tier's frame F in samples (the sample tier's
window), each later entry the number of lower-tier steps per step of the next tier up. (16,) is
the 2-tier model; (16, 4) adds a tier that steps every 64 samples on the previous 64 samples.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Dict, Tuple

# Cell types -> gate blocks per layer (LSTM i, f, g, o; GRU r, z, n). The tests run every frame
# step and backend over these: a new cell type fails them until it is complete (docs/DESIGN.md §9).
GATES = {"lstm": 4, "gru": 3}
RNN_TYPES = tuple(GATES)


@dataclass(frozen=True)
class SampleRNNConfig:
    sample_rate: int = 16000  # Hz; audio is resampled to this at preparation
    q_levels: int = 256  # Q: quantization levels of a sample
    q_type: str = "linear"  # "linear" (the paper) or "mulaw"
    frame_sizes: Tuple[int, ...] = (16,)  # F, then tier ratios (module docstring); frame_size = F
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
        if isinstance(self.frame_sizes, list):  # from JSON
            object.__setattr__(self, "frame_sizes", tuple(self.frame_sizes))
        need(isinstance(self.frame_sizes, tuple) and len(self.frame_sizes) >= 1
             and all(isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in self.frame_sizes),
             f"frame_sizes must be a non-empty tuple of ints >= 1, got {self.frame_sizes!r}")
        need(all(f >= 2 for f in self.frame_sizes[1:]),
             f"frame_sizes: every tier above the bottom must step at least 2 lower-tier steps, got {self.frame_sizes}")
        need(self.emb_size >= 1, f"emb_size must be >= 1, got {self.emb_size}")
        need(self.dim >= 1, f"dim must be >= 1, got {self.dim}")
        need(self.n_rnn >= 1, f"n_rnn must be >= 1, got {self.n_rnn}")
        need(self.rnn_type in RNN_TYPES, f"rnn_type must be one of {RNN_TYPES}, got {self.rnn_type!r}")

    @property
    def frame_size(self) -> int:
        """F: the bottom frame tier's frame in samples, the sample tier's window (frame_sizes[0])."""
        return self.frame_sizes[0]

    @property
    def n_tiers(self) -> int:
        """Tiers in all: the frame tiers and the sample tier (2 for the Dadabots model)."""
        return len(self.frame_sizes) + 1

    def tier_samples(self, k: int) -> int:
        """Samples per step of frame tier k (0 = bottom): its input width and its period."""
        return math.prod(self.frame_sizes[:k + 1])

    @property
    def lookback(self) -> int:
        """Samples of context before the first target: the top frame tier's frame (F for 2 tiers).
        Training sub-sequences and primes are whole multiples of it."""
        return math.prod(self.frame_sizes)

    @property
    def gates(self) -> int:
        """Gate blocks per RNN layer: 4 for LSTM (i, f, g, o), 3 for GRU (r, z, n)."""
        return GATES[self.rnn_type]

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON types (frame_sizes a list), as config.json and checkpoints store it."""
        d = asdict(self)
        d["frame_sizes"] = list(self.frame_sizes)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "SampleRNNConfig":
        known = {f.name for f in fields(cls)}
        d = dict(d)
        if "frame_size" in d and "frame_sizes" not in d:  # written before n tiers: a 2-tier model
            d["frame_sizes"] = (d.pop("frame_size"),)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"SampleRNNConfig: unknown fields {unknown} (checkpoint from a newer fastsrnn?)")
        return cls(**d)

    @classmethod
    def from_name(cls, name: str, **overrides) -> "SampleRNNConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)


def _accept_frame_size(init):
    """``frame_size=F`` (the 2-tier keyword, still accepted) sets frame_sizes[0]; the tiers above stay."""
    @functools.wraps(init)
    def __init__(self, *args, frame_size=None, **kw):
        if frame_size is not None:
            kw["frame_sizes"] = (frame_size,) + tuple(kw.get("frame_sizes", (16,)))[1:]
        init(self, *args, **kw)
    return __init__


SampleRNNConfig.__init__ = _accept_frame_size(SampleRNNConfig.__init__)

_PAPER = SampleRNNConfig()

PRESETS: Dict[str, SampleRNNConfig] = {
    # The Dadabots NIPS 2017 best model: 2-tier, 5 x 1024 LSTM, skip connections, weight norm.
    "dadabots-2tier": _PAPER,
    "dadabots-2tier-gru": replace(_PAPER, rnn_type="gru"),
    "dadabots-2tier-7layer": replace(_PAPER, n_rnn=7),
    "dadabots-2tier-9layer": replace(_PAPER, n_rnn=9),
    # Small enough to train for a minute on two CPU cores (tests and `fastsrnn demo`).
    "tiny": replace(_PAPER, frame_size=16, emb_size=32, dim=128, n_rnn=2),
    # Three tiers, with the published sizes (a tier's conditioning from above enters its first
    # RNN layer as extra inputs: the sources' input projection plus the upsampled upper output,
    # with the two products folded into one matrix; docs/DESIGN.md "n tiers").
    # ICLR 2017 SampleRNN, best 3-tier MUSIC model: soroushmehr/sampleRNN_ICLR2017 README.md l.123
    # (--big_frame_size 8 --frame_size 2 --emb_size 256 --skip_conn False --dim 1024 --n_rnn 1
    # --rnn_type GRU --q_levels 256 --q_type linear --weight_norm True --learn_h0 True; seq_len 512).
    "iclr2017-3tier": replace(_PAPER, frame_sizes=(2, 4), n_rnn=1, rnn_type="gru", skip=False),
    # samplernn-pytorch, its README's command: deepsound-project/samplernn-pytorch README.md l.29
    # (--frame_sizes 16 4 --n_rnn 2) with train.py's defaults (dim 1024, learn_h0, q_levels 256,
    # weight_norm; GRU only, linear; its embedding is Q x Q = 256). Its sample MLP has one hidden
    # layer less than this one's (the SampleRNN paper's, kept here).
    "samplernn-pytorch-3tier": replace(_PAPER, frame_sizes=(16, 4), n_rnn=2, rnn_type="gru", skip=False),
    # PRiSM-SampleRNN's default.config.json (rncm-prism/prism-samplernn): frame_sizes [16, 64]
    # absolute samples = (16, 4) here, dim 1024, 4 GRU layers, mu-law 256, emb 256, skip_conn off.
    "prism-3tier": replace(_PAPER, frame_sizes=(16, 4), n_rnn=4, rnn_type="gru", skip=False, q_type="mulaw"),
    # The 3-tier model for tests and the demo: tiny with a tier every 64 samples above it.
    "tiny-3tier": replace(_PAPER, frame_sizes=(16, 4), emb_size=32, dim=128, n_rnn=2),
}

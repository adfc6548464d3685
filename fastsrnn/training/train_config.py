"""TrainConfig: the training options, their defaults and their validation.

Separate from the loop so that the CLI can list the choices (AMP_MODES, CLIP_BACKENDS) and the
run folder can check a resumed run's options without building a trainer.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict

from fastsrnn.backends import ALIASES, BACKENDS

DEFAULT_PRESET = "dadabots-2tier"
# Changing these would give the saved position (batch, sub-sequence, RNN state) another meaning.
RUN_DEFINING = ("batch_size", "tbptt", "seed")
CLIP_BACKENDS = ("auto",) + BACKENDS + tuple(ALIASES)
FLOAT_OPTIONS = ("lr", "grad_clip", "clip_seconds", "clip_temperature")
AMP_MODES = ("off", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 128  # B: chunks per batch (the paper's 128), global over DDP ranks
    tbptt: int = 64  # frames per truncated-BPTT sub-sequence (64 x F=16 = 1,024 samples)
    lr: float = 1e-3  # Adam learning rate
    grad_clip: float = 1.0  # gradients clipped element-wise to [-grad_clip, grad_clip]; 0 = off
    max_steps: int = 100_000  # optimizer steps in all (one per sub-sequence)
    checkpoint_every: int = 1000  # steps between last.pt writes (and clips)
    valid_every: int = 0  # steps between validations; 0 = at every checkpoint
    n_clips: int = 10  # clips generated at each checkpoint (the paper: 10); 0 = none
    clip_seconds: float = 30.0  # length of each clip (the paper: 30 s)
    clip_h0: str = "random"  # initial RNN state of clips: random (more varied, the paper), learned, zeros
    clip_temperature: float = 1.0  # sampling temperature of clips
    clip_backend: str = "auto"  # generation backend for clips (see 'fastsrnn backends')
    seed: int = 0  # weights init and chunk order
    device: str = "auto"  # 'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...
    num_threads: int = 0  # torch CPU threads; 0 = FASTSRNN_NUM_THREADS or torch's default
    amp: str = "off"  # 'bf16': autocast bf16 forward and loss, fp32 master weights and Adam; 'off': fp32
    compile: bool = False  # torch.compile the forward (falls back to eager with a warning if compiling fails)

    def __post_init__(self):
        def need(ok: bool, msg: str):
            if not ok:
                raise ValueError(f"TrainConfig: {msg}")

        for name in ("batch_size", "tbptt", "max_steps", "checkpoint_every"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in FLOAT_OPTIONS:
            need(math.isfinite(getattr(self, name)), f"{name} must be a finite number, got {getattr(self, name)}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.clip_temperature > 0, f"clip_temperature must be > 0, got {self.clip_temperature}")
        need(self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}")
        need(self.valid_every >= 0 and self.n_clips >= 0 and self.num_threads >= 0,
             "valid_every, n_clips and num_threads must be >= 0")
        need(self.clip_seconds > 0, f"clip_seconds must be > 0, got {self.clip_seconds}")
        need(self.clip_h0 in ("random", "learned", "zeros"),
             f"clip_h0 must be random, learned or zeros, got {self.clip_h0!r}")
        need(self.clip_backend in CLIP_BACKENDS,
             f"clip_backend must be one of {', '.join(CLIP_BACKENDS)}, got {self.clip_backend!r}")
        need(self.amp in AMP_MODES, f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        need(isinstance(self.compile, bool), f"compile must be true or false, got {self.compile!r}")

    @property
    def validate_every(self) -> int:
        return self.valid_every or self.checkpoint_every

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def tbptt_samples(tbptt: int, cfg) -> int:
    """Targets per truncated-BPTT sub-sequence: ``tbptt`` bottom frames of F samples, which must
    be whole frames of the top tier (cfg.lookback samples) for an n-tier model."""
    T = tbptt * cfg.frame_size
    if T % cfg.lookback:
        per = cfg.lookback // cfg.frame_size
        raise ValueError(f"tbptt {tbptt} frames of {cfg.frame_size} samples = {T} samples is not a whole number "
                         f"of the top tier's frames ({cfg.lookback} samples, frame_sizes {cfg.frame_sizes}); "
                         f"use a tbptt that is a multiple of {per}")
    return T

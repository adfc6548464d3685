"""TrainConfig: the training options, their defaults and their validation.

Each field carries its help (and its choices), from which training/cli.py builds the
`fastsrnn train` flags. Separate from the loop so that the CLI and the run folder's resume checks
need no trainer.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict

from fastsrnn.backends import ALIASES, BACKENDS

DEFAULT_PRESET = "dadabots-2tier"
# Changing these would give the saved position (batch, sub-sequence, RNN state) another meaning.
RUN_DEFINING = ("batch_size", "tbptt", "seed")
CLIP_BACKENDS = ("auto",) + BACKENDS + tuple(ALIASES)
FLOAT_OPTIONS = ("lr", "grad_clip", "clip_seconds", "clip_temperature")
AMP_MODES = ("off", "bf16")
CLIP_H0S = ("random", "learned", "zeros")


def _opt(default, help: str, **cli):
    """A TrainConfig field: its default and its help, which is also its `fastsrnn train` flag's
    (--name-with-dashes, built by training/cli.py); cli: the flag's ``choices`` (checked here too)
    and, for a switch, ``off_help`` (the help of its --no- flag)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = _opt(128, "chunks per batch (the paper: 128; capped at the number of train chunks), global "
                                "over the torchrun ranks")
    tbptt: int = _opt(64, "frames per truncated-BPTT sub-sequence (64 frames = 1,024 samples at F=16)")
    lr: float = _opt(1e-3, "Adam learning rate")
    grad_clip: float = _opt(1.0, "clip each gradient element to [-x, x] (0 = off)")
    max_steps: int = _opt(100_000, "stop after this many optimizer steps in all (one step per sub-sequence)")
    checkpoint_every: int = _opt(1000, "steps between checkpoints (last.pt) and generated clips")
    valid_every: int = _opt(0, "steps between validations (0 = at every checkpoint)")
    n_clips: int = _opt(10, "clips generated at each checkpoint (the paper: 10; 0 = none)")
    clip_seconds: float = _opt(30.0, "seconds per clip (the paper: 30)")
    clip_h0: str = _opt("random", "initial RNN state of clips: random (more varied, the paper), learned or zeros",
                        choices=CLIP_H0S)
    clip_temperature: float = _opt(1.0, "sampling temperature of clips")
    clip_backend: str = _opt("auto", "generation backend for clips (see 'fastsrnn backends')", choices=CLIP_BACKENDS)
    seed: int = _opt(0, "seed of the weights and of the chunk order")
    device: str = _opt("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    num_threads: int = _opt(0, "torch CPU threads (0 = FASTSRNN_NUM_THREADS or torch's choice)")
    amp: str = _opt("off", "mixed precision: off (fp32), or bf16 (torch.autocast bf16 around the forward and loss; "
                           "fp32 master weights and Adam; fastest on GPUs with bf16 tensor cores, allowed on the CPU)",
                    choices=AMP_MODES)
    compile: bool = _opt(False, "torch.compile the model's forward (the first step compiles, which takes a while; "
                                "a failure is a warning and training goes on eagerly)",
                         off_help="train without torch.compile (turns it off in a run that had it)")

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
        for f in fields(self):
            choices, value = f.metadata.get("choices"), getattr(self, f.name)
            need(choices is None or value in choices, f"{f.name} must be one of {', '.join(choices or ())}, "
                                                      f"got {value!r}")
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

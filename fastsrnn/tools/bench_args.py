"""The argument checks of ``fastsrnn bench``, shared by its generation timing
(:mod:`fastsrnn.tools.bench`) and its ``--train`` mode (:mod:`fastsrnn.tools.bench_train`): a bad
argument fails at once, not after minutes of timing.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

import torch

from fastsrnn.config import SampleRNNConfig
from fastsrnn.tools.bench_measure import parse_variant


def _check_args(args, variants: List[str], n_seqs: List[int]) -> None:
    for flag, values in (("--n-seq", n_seqs), ("--frames", [args.frames]), ("--repeats", [args.repeats]),
                         ("--length-frames", args.length_frames)):
        if any(v < 1 for v in values):
            raise SystemExit(f"fastsrnn bench: {flag} must be >= 1, got {values}")
    for preset in args.presets:
        try:
            SampleRNNConfig.from_name(preset)  # an unknown name fails here, before minutes of timing
        except ValueError as e:
            raise SystemExit(f"fastsrnn bench: --presets {e}") from None
    try:
        [parse_variant(v) for v in variants]
    except ValueError as e:
        raise SystemExit(f"fastsrnn bench: --backends {e}") from None
    if args.json:  # a path that cannot be written fails now, not after minutes of timing
        out = Path(args.json)
        if out.is_dir():
            raise SystemExit(f"fastsrnn bench: --json {out} is a folder; give a file path such as {out / 'bench.json'}")
        parent = out.parent if str(out.parent) else Path(".")
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise SystemExit(f"fastsrnn bench: --json {out}: cannot write into {parent} (missing or not writable)")


def _check_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise SystemExit(f"fastsrnn bench: --device {name!r}: {e}") from None
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"fastsrnn bench: --device must be cpu or cuda, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "a CPU-only build" if torch.version.cuda is None else "no usable CUDA device or driver"
        raise SystemExit(f"fastsrnn bench: --device cuda, but torch {torch.__version__} sees no GPU ({why})")
    return device

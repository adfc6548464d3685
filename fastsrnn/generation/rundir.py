"""The files of a generation's folder: the settings (generation.json) and state (state.pt) files,
read with checks that name a damaged file; the checks that a new --out is free; its lock.

Separate from longgen.py so that the on-disk format (docs/DESIGN.md §6) is in one short module,
apart from the generating and finishing that write it.
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Optional

import torch

from fastsrnn.data.manifest import file_sha256
from fastsrnn.generation.generator import Generator
from fastsrnn.generation.settings import GenerationSettings
from fastsrnn.outlock import LOCK_NAME, is_lock_file, locked_output

SETTINGS, STATE = "generation.json", "state.pt"
FORMAT = "fastsrnn-generation"
LOCK_WHAT = "fastsrnn generate"
# generation.json: the run's record (these keys, then the precision guard's numbers, completion, files)
# around its GenerationSettings (settings.py: to_dict / from_dict)
RECORD_KEYS = ("checkpoint", "checkpoint_sha256", "n_samples", "sample_rate", "prime_samples", "backend")
SETTINGS_KEYS = RECORD_KEYS + GenerationSettings.v1_keys()  # in every generation.json, the first one included


def _read_settings(out: Path) -> dict:
    path = out / SETTINGS
    if not path.is_file():
        if not out.is_dir() or all(is_lock_file(p) for p in out.iterdir()):
            raise FileNotFoundError(f"{out}: nothing to resume, no generation was started there (a run stopped "
                                    "before its first settings were written, e.g. while the extension compiled, "
                                    "leaves nothing); run the same command without --resume")
        raise FileNotFoundError(f"{out}: not a fastsrnn generation directory (no {SETTINGS})")
    try:
        settings = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: damaged, not readable JSON ({e}); cannot resume this generation") from None
    if not isinstance(settings, dict) or settings.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fastsrnn generation settings file (damaged, or written by something else)")
    missing = [k for k in SETTINGS_KEYS if k not in settings]
    if missing:
        raise ValueError(f"{path}: damaged, missing {', '.join(missing)}; cannot resume this generation")
    try:
        GenerationSettings.from_dict(settings)
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise ValueError(f"{path}: damaged ({e}); cannot resume this generation") from None
    return settings


def new_record(settings: GenerationSettings, checkpoint: Path, sample_rate: int, n_samples: int,
               prime_samples: int, gen: Generator) -> dict:
    """A new generation's generation.json: its record around its settings."""
    return {"format": FORMAT, "version": 1, "checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint),
            "n_samples": n_samples, "sample_rate": sample_rate, "prime_samples": prime_samples,
            "backend": gen.backend_name, **settings.to_dict(sample_rate), "precision_check": _check_record(gen),
            "complete": False}


def _nonfinite(obj, name: str) -> Optional[str]:
    """The name of the first floating tensor or float in ``obj`` (nested dicts, lists, tuples) that holds
    NaN or Inf, e.g. "generator.h" or "generator.upper[0][1]"; None when all are finite."""
    if isinstance(obj, torch.Tensor):
        return name if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else None
    if isinstance(obj, float):
        return None if math.isfinite(obj) else name
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        bad = _nonfinite(v, f"{name}.{k}" if isinstance(obj, dict) else f"{name}[{k}]")
        if bad:
            return bad
    return None


def _read_state(path: Path, n_seq: int, prime_samples: int, n_samples: int) -> dict:
    """state.pt, checked: a damaged file is named, never a raw unpickling error; every tensor and level
    statistic finite (a NaN state would generate noise), the samples written within the run's."""
    hint = "cannot resume; start the generation again in a new --out"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: damaged, torch.load failed ({type(e).__name__}: {e}); {hint}") from None
    try:
        stats = saved["stats"]
        ok = isinstance(saved["generator"], dict) and isinstance(stats["written"], int) and stats["written"] >= 0
        ok = ok and all(isinstance(stats[k], list) and len(stats[k]) == n_seq for k in ("sum", "sumsq", "peak"))
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{path}: damaged (missing {e}); {hint}") from None
    if not ok:
        raise ValueError(f"{path}: damaged (bad generator state or level statistics); {hint}")
    bad = _nonfinite(saved["generator"], "generator") or _nonfinite(stats, "stats")
    if bad:
        raise ValueError(f"{path}: damaged, {bad} holds NaN or Inf; {hint}")
    written, total = stats["written"], prime_samples + n_samples
    if not prime_samples <= written <= total:
        raise ValueError(f"{path}: damaged, stats.written is {written} samples per sequence, but this run has "
                         f"{prime_samples} prime + {n_samples} generated = {total}; {hint}")
    return saved


def _state_path(out: Path, world: int, rank: int) -> Path:
    return out / (STATE if world == 1 else f"state.rank{rank}.pt")


def _check_record(gen: Generator) -> Optional[dict]:
    """The guard's numbers for generation.json (None when it did not run)."""
    c = gen.precision_check
    return None if c is None else {"data": c.data, "backend": c.backend, "nll_fp32_bits": c.nll_fp32,
                                   "nll_bits": c.nll, "delta_bits": c.delta, "limit_bits": c.limit}


def _check_new_output(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a directory")
    if (out / SETTINGS).exists():
        raise FileExistsError(f"--out {out} already holds a generation; use 'fastsrnn generate --resume {out}' "
                              "to continue it, or choose another --out")
    if out.is_dir():
        other = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
        if other:
            shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
            raise FileExistsError(f"--out {out} is not empty ({shown}) and is not a fastsrnn generation; "
                                  "choose an empty or new directory")


def _lock(out: Path) -> contextlib.ExitStack:
    """Hold out's lock (fastsrnn.outlock) until the returned stack is closed; OutputLocked if taken."""
    stack = contextlib.ExitStack()
    stack.enter_context(locked_output(out, LOCK_WHAT))
    return stack

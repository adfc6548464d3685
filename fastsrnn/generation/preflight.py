"""Checks made before a generation starts or resumes: its arguments (numbers, precision name),
and whether the machine can hold it (open files, free disk), each refusing with an actionable message.

Separate from longgen.py so that the create/reopen steps read as a list of checks, not their bodies.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
import shutil
import warnings
from pathlib import Path
from typing import Optional

from fastsrnn.generation.precision import precision_options

FD_MARGIN = 16  # file descriptors beyond the part files and those open now: final copy, state, settings


def _check_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be > 0 and finite, got {value}")
    return value


def _check_precision_name(precision) -> None:
    try:
        precision_options(precision)
    except ValueError as e:
        raise ValueError(f"--{e}") from None


def _resume_precision_data(recorded: Optional[str]) -> Optional[str]:
    """The guard's data on resume: the recorded dataset, or (moved or deleted since) the model's own
    music, with a warning: a missing dataset must not block a resume that the guard passed once."""
    if recorded is None or Path(recorded).exists():
        return recorded
    warnings.warn(f"--precision guard: its dataset {recorded} is gone; measuring on the model's own music instead",
                  stacklevel=3)
    return None


def _ensure_open_files(n_seq: int) -> None:
    """Every sequence keeps its part file open: make sure the process may open that many files.

    Raises the soft RLIMIT_NOFILE up to the hard limit when that is enough, else refuses.
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 64
    need = n_seq + open_now + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard == resource.RLIM_INFINITY or hard >= need:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
            return
    fits = max(soft - open_now - FD_MARGIN, 0)
    raise ValueError(f"--n-seq {n_seq} keeps {n_seq} files open at once, but the open-file limit here is {soft} "
                     f"(hard limit {hard}); raise it (e.g. 'ulimit -n {need}', which needs a hard limit >= {need}) "
                     f"or generate at most {fits} sequences per run")


def _check_disk(out: Path, n_seq: int, total: int, remaining: int) -> None:
    """Refuse, with numbers, a generation whose files cannot fit on out's disk.

    Peak use: the 16-bit part files (``remaining`` more samples each) plus one final file being written.
    """
    probe = out.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = 2 * n_seq * remaining + 2 * total + 44 * (n_seq + 1)
    if need > free:
        raise ValueError(f"--out {out}: {n_seq} sequence(s) of {total:,} samples need about {need / 1e9:,.3g} GB "
                         f"more (16-bit part files, then one finished file at a time) but {probe} has "
                         f"{free / 1e9:,.3g} GB free; generate fewer --seconds or --n-seq, or choose another --out")

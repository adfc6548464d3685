"""Finishing a generation: part files -> final files (level applied), the run marked complete in
generation.json, the part and state files removed, in an order that a kill at any point can resume.

Separate from longgen.py because finishing is its own resumable step (reopen() of a run whose
samples are all written goes straight here), with its own level (normalization) rules.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable, List

import numpy as np

from fastsrnn.atomic import atomic_path, atomic_write_text
from fastsrnn.data.audio import require_soundfile
from fastsrnn.generation.ranks import _all_gather, _raise_failed
from fastsrnn.generation.rundir import SETTINGS

PEAK_TARGET, MAX_GAIN, SILENT_RMS = 0.9, 10.0, 1e-3


def finalize(run, copy: Callable[..., None]) -> List[Path]:
    """Part files -> final files (level applied, streamed in blocks); mark the run complete.

    run: the GenerationRun being finished. copy(part, final, gain, fmt): writes one final file
    (GenerationRun.finalize passes longgen._copy_with_gain, which the fault tests replace).

    Resumable: each part file is removed only after its final file is complete (written to a
    temporary file, fsynced and renamed), so a part file still there means its final file must
    be (re)made, and a part file gone means its final file is done.
    """
    run.close_files_only()
    finals, notes, err = [], [], None
    try:
        for j, part in enumerate(run.parts):
            i = run.rows[j]
            gain, note = _gain(run, j)
            if note:
                notes.append(note)
                warnings.warn(note)
            final = part.with_name(f"seq_{i:03d}.{run.settings['audio_format']}")
            if part.exists():
                copy(part, final, gain, run.settings["audio_format"])
                part.unlink()
            elif not final.is_file():
                raise FileNotFoundError(f"{run.out}: both {part.name} and {final.name} are missing; sequence "
                                        f"{i} is lost, start the generation again in a new --out")
            finals.append(final)
    except BaseException as e:
        err = e
    mine = ([f.name for f in finals], notes, [_gain(run, j)[0] for j in range(len(finals))])
    every = _all_gather(run.world, (None if err is None else f"{type(err).__name__}: {err}", mine))
    if err is not None:
        raise err
    _raise_failed(every, "finishing the generation")
    run.settings.update(complete=True, files=[n for _, m in every for n in m[0]],
                         notes=[n for _, m in every for n in m[1]], gains=[g for _, m in every for g in m[2]])
    if run.rank == 0:
        atomic_write_text(run.out / SETTINGS, json.dumps(run.settings, indent=2))
    _all_gather(run.world, None)  # generation.json says complete before any rank's state goes
    run.state_path.unlink()
    return finals


def _gain(run, j: int):
    """Peak normalization (the paper's clips were normalized), capped so silence stays silence.

    j: the index among this process's sequences (run.rows[j] is the sequence's number).
    """
    n = max(run.stats["written"], 1)
    mean = run.stats["sum"][j] / n
    rms = max(run.stats["sumsq"][j] / n - mean * mean, 0.0) ** 0.5
    note = None
    if rms < SILENT_RMS:
        note = (f"sequence {run.rows[j]} is near-silent (RMS {rms:.2e}); try another seed, temperature or "
                "checkpoint")
    peak = run.stats["peak"][j]
    if run.settings["normalize"] == "none" or peak <= 0:
        return 1.0, note
    return min(PEAK_TARGET / peak, MAX_GAIN), note


def _copy_with_gain(src: Path, dst: Path, gain: float, fmt: str, block: int = 1 << 16) -> None:
    sf = require_soundfile()
    with sf.SoundFile(src) as fin, atomic_path(dst) as tmp:
        with sf.SoundFile(tmp, "w", fin.samplerate, 1, "PCM_16", format=fmt.upper()) as fout:
            for chunk in fin.blocks(blocksize=block, dtype="float32"):
                fout.write(np.clip(chunk * gain, -1.0, 1.0))

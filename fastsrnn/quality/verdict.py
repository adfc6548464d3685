"""A clip's verdict, for picking a checkpoint: silence, white noise and "traps" (a clip stuck in one
riff), the failure modes the Dadabots paper describes.

Alone, a clip is judged on fixed thresholds; against a prepared dataset's album reference
(:mod:`fastsrnn.quality.album_reference`) the verdicts are relative to that album: "silent",
"noise-like", "trapped" or "ok", with a closeness score in [0, 1]. ``fastsrnn analyze``
(:mod:`fastsrnn.tools.analysis`), the training's clip scores, and ``fastsrnn report`` use it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from fastsrnn.quality.album_reference import N_FFT, score
from fastsrnn.quality.measures import repetition, rms_dbfs, spectral_flatness

SILENT_DBFS = -50.0  # below this RMS a clip is silent
NOISY_FLATNESS = 0.5  # spectral flatness of white noise is ~1, of music well under 0.3
TRAP_CORRELATION = 0.95  # envelope self-similarity at one lag over the second half (riff-based music reaches ~0.92)


EMPTY, INVALID = "empty", "invalid (NaN/Inf samples)"

# Verdicts against an album (its statistics: album_reference.AlbumReference.stats).
SILENT_BELOW_DB = 20.0  # silent: level this far below the album's 5% quantile
NOISE_MARGIN = 0.5  # noise-like: log10 flatness above the album's 95% quantile by this (x3.2 flatter)
TRAP_MARGIN, TRAP_MAX_NINES = 1.0, 2.5  # trapped: -log10(1 - repetition) above min(q95 + 1, 2.5)


@dataclass
class ClipReport:
    rms_dbfs: Optional[float]  # level of the clip (None for an empty or invalid clip)
    flatness: Optional[float]  # mean spectral flatness in [0, 1]
    repetition: Optional[float]  # best envelope autocorrelation of the second half, lags 0.25-4 s
    verdict: str  # "ok", "silent", "noise", "trap", "empty" or "invalid (NaN/Inf samples)";
    # against an album "ok", "silent", "noise-like" or "trapped" (or "empty", "invalid ...")
    closeness: Optional[float] = None  # against an album: 1 = like its chunks, 0.5 = like its outliers
    features: Optional[dict] = None  # against an album: album_reference.FEATURES of the clip
    z: Optional[dict] = None  # against an album: robust z of each feature, (x - median) / (1.4826 MAD)


def album_verdict(feats: dict, ref) -> str:
    """features of a clip (album_reference.score) -> its verdict relative to the album ``ref``."""
    s = ref.stats
    if feats["level_dbfs"] < s["level_dbfs"]["q05"] - SILENT_BELOW_DB:
        return "silent"
    if feats["log_flatness"] > s["log_flatness"]["q95"] + NOISE_MARGIN:
        return "noise-like"
    if feats["repetition_nines"] > min(s["repetition_nines"]["q95"] + TRAP_MARGIN, TRAP_MAX_NINES):
        return "trapped"
    return "ok"


def _against(audio: np.ndarray, sample_rate: int, ref) -> ClipReport:
    from fastsrnn.data.audio import resample

    audio = resample(audio, int(sample_rate), ref.sample_rate)  # (T',) at the album's rate
    if len(audio) < N_FFT:
        return ClipReport(None, None, None, EMPTY)
    feats, z, closeness = score(audio, ref)
    rep = 1.0 - 10 ** -feats["repetition_nines"]
    return ClipReport(round(feats["level_dbfs"], 1), round(spectral_flatness(audio), 3), round(rep, 3),
                      album_verdict(feats, ref), round(closeness, 3),
                      {k: round(v, 3) for k, v in feats.items()}, {k: round(v, 2) for k, v in z.items()})


def analyze_clip(audio: np.ndarray, sample_rate: int, reference=None) -> ClipReport:
    """audio: (T,) float in [-1, 1] -> its :class:`ClipReport`; with ``reference`` (an
    :class:`~fastsrnn.quality.album_reference.AlbumReference`, see ``album_reference(DATA)``) the
    verdict is relative to that album and the report has closeness, features and z."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.size == 0:
        return ClipReport(None, None, None, EMPTY)
    if not np.isfinite(audio).all():
        return ClipReport(None, None, None, INVALID)
    if reference is not None:
        return _against(audio, sample_rate, reference)
    level, flat, rep = rms_dbfs(audio), spectral_flatness(audio), repetition(audio, sample_rate)
    verdict = ("silent" if level < SILENT_DBFS else "noise" if flat > NOISY_FLATNESS
               else "trap" if rep > TRAP_CORRELATION else "ok")
    return ClipReport(round(level, 1), round(flat, 3), round(rep, 3), verdict)

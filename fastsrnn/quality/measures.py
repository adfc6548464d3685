"""The plain measures of a clip: level, spectral flatness and repetition (a clip stuck in one
riff). :mod:`fastsrnn.quality.verdict` judges a clip with them; :mod:`fastsrnn.quality.album_reference`
measures an album's chunks with them.
"""
from __future__ import annotations

import numpy as np


def rms_dbfs(audio: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(audio - audio.mean(), dtype=np.float64))))
    return 20 * np.log10(max(rms, 1e-10))


def spectral_flatness(audio: np.ndarray, n_fft: int = 1024) -> float:
    """Mean over frames of geometric / arithmetic mean of the power spectrum."""
    n = len(audio) // n_fft
    if n == 0:
        return 0.0
    frames = audio[: n * n_fft].reshape(n, n_fft) * np.hanning(n_fft)  # (n, n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-12
    flat = np.exp(np.mean(np.log(power), axis=1)) / np.mean(power, axis=1)
    loud = power.sum(axis=1) > 1e-6 * power.sum(axis=1).max()  # ignore silent frames
    return float(flat[loud].mean()) if loud.any() else 0.0


def repetition(audio: np.ndarray, sample_rate: int, hop_s: float = 0.01) -> float:
    """Max normalized autocorrelation of the RMS envelope of the clip's second half (lags 0.25-4 s)."""
    hop = max(1, int(hop_s * sample_rate))
    half = audio[len(audio) // 2:]
    n = len(half) // hop
    if n < 2 * int(0.25 / hop_s):
        return 0.0
    env = np.sqrt(np.mean(half[: n * hop].reshape(n, hop) ** 2, axis=1))  # (n,)
    env = env - env.mean()
    denom = float(np.dot(env, env))
    if denom <= 1e-12:
        return 0.0
    lags = range(int(0.25 / hop_s), min(int(4.0 / hop_s), n // 2) + 1)
    return max((float(np.dot(env[:-k], env[k:])) / denom * n / (n - k) for k in lags), default=0.0)

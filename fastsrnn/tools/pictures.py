"""A picture of a clip to look at while listening: its waveform above its mel spectrogram (dB).

``clip_picture(CLIP)`` writes ``CLIP`` with the suffix ``.png`` (800 x 400 pixels) beside the clip,
or at ``out``; a picture newer than its clip is kept, not redrawn. Long clips are drawn at a
bounded cost: the waveform as a min/max envelope of ``MAX_COLUMNS`` columns, the spectrogram with
at most ``MAX_FRAMES`` frames (the hop grows with the length).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from fastsrnn.atomic import atomic_path

N_FFT, MIN_HOP, N_MELS = 1024, 256, 80
MAX_FRAMES, MAX_COLUMNS = 1600, 1600
RANGE_DB = 80.0  # the spectrogram shows this many dB below its loudest cell
SIZE_IN, DPI = (8.0, 4.0), 100  # 800 x 400 pixels


def picture_path(clip) -> Path:
    """Where :func:`clip_picture` puts the picture of ``clip`` by default: beside it, ``.png``."""
    return Path(clip).with_suffix(".png")


def is_fresh(picture: Path, clip: Path) -> bool:
    """Whether ``picture`` exists and is at least as new as ``clip`` (then it is not redrawn)."""
    return picture.is_file() and picture.stat().st_mtime >= Path(clip).stat().st_mtime


def clip_picture(clip, out=None, title: Optional[str] = None) -> Path:
    """Draw the waveform and mel spectrogram of the audio file ``clip`` into a PNG; returns its path.

    out: the PNG (default: beside the clip, :func:`picture_path`). Kept when newer than the clip.
    """
    from fastsrnn.data.audio import require_soundfile

    clip = Path(clip)
    out = Path(out) if out is not None else picture_path(clip)
    if is_fresh(out, clip):
        return out
    audio, sr = require_soundfile().read(str(clip), dtype="float32", always_2d=True)  # (T, C)
    _draw(audio.mean(axis=1), int(sr), out, title if title is not None else clip.name)
    return out


def mel_db(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """audio: (T,) float -> (N_MELS, frames) mel power in dB, floored RANGE_DB below its maximum."""
    from fastsrnn.quality.album_reference import mel_filterbank

    if len(audio) < N_FFT:
        audio = np.pad(audio, (0, N_FFT - len(audio)))
    hop = max(MIN_HOP, -(-(len(audio) - N_FFT) // MAX_FRAMES))
    n = 1 + (len(audio) - N_FFT) // hop
    idx = np.arange(N_FFT)[None, :] + hop * np.arange(n)[:, None]  # (n, N_FFT)
    power = np.abs(np.fft.rfft(audio[idx] * np.hanning(N_FFT), axis=1)) ** 2  # (n, N_FFT // 2 + 1)
    mel = mel_filterbank(sample_rate, N_FFT, N_MELS) @ power.T  # (N_MELS, n)
    db = 10 * np.log10(mel + 1e-12)
    return np.maximum(db, db.max() - RANGE_DB)


def _envelope(audio: np.ndarray):
    """(T,) -> times (in samples), minima and maxima over at most MAX_COLUMNS columns."""
    per = max(1, -(-len(audio) // MAX_COLUMNS))
    n = -(-len(audio) // per)
    padded = np.pad(audio, (0, n * per - len(audio)), mode="edge").reshape(n, per)  # (n, per)
    return np.arange(n) * per, padded.min(axis=1), padded.max(axis=1)


def _draw(audio: np.ndarray, sample_rate: int, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    audio = np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0)
    seconds = max(len(audio), 1) / sample_rate
    fig, (wave, spec) = plt.subplots(2, 1, figsize=SIZE_IN, sharex=True,
                                     gridspec_kw={"height_ratios": [1, 2.5]})
    if len(audio):
        t, lo, hi = _envelope(audio)
        wave.fill_between(t / sample_rate, lo, hi, color="#2a6f97", linewidth=0.3)
    wave.set_ylim(-1, 1)
    wave.set_ylabel("amplitude")
    wave.set_title(title, fontsize=10)
    image = spec.imshow(mel_db(audio, sample_rate), origin="lower", aspect="auto", cmap="magma",
                        extent=(0, seconds, 0, N_MELS), interpolation="nearest")
    _mel_ticks(spec, sample_rate)
    spec.set_xlabel("seconds")
    spec.set_xlim(0, seconds)
    fig.colorbar(image, ax=[wave, spec], label="dB", fraction=0.03, pad=0.01)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)


def _mel_ticks(ax, sample_rate: int) -> None:
    """Label the mel axis in Hz (the bands are equally spaced in mel, so the ticks are not)."""
    top = 2595.0 * np.log10(1.0 + sample_rate / 2 / 700.0)
    hz = [f for f in (100, 300, 1000, 3000, 8000, 16000) if f < sample_rate / 2]
    pos = [2595.0 * np.log10(1.0 + f / 700.0) / top * N_MELS for f in hz]
    ax.set_yticks(pos, [f"{f // 1000}k" if f >= 1000 else str(f) for f in hz])
    ax.set_ylabel("Hz (mel scale)")

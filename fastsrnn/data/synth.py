"""A small synthetic "album" for tests and the demo: seeded songs of riffs, numpy only.

Each song picks a key, a minor-mode chord progression (one chord per bar) and a tempo; a
plucked Karplus-Strong guitar plays a seeded 8-note riff transposed onto each chord, a
detuned band-limited saw bass plays the chord roots in eighths, and drums keep time (kick: a
sine swept down in pitch; snare and hats: shaped noise bursts). Riff A plays three bars out of
four and riff B the fourth, and every fourth section drops the drums, so the music has the
repetition and structure SampleRNN learns from. Same seed, same samples; peak 0.9.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np

# Semitones of the natural minor scale and a few progressions in its degrees (i-VI-III-VII...).
MINOR = np.array([0, 2, 3, 5, 7, 8, 10])
PROGRESSIONS = ([0, 5, 2, 6], [0, 3, 4, 0], [0, 6, 5, 4], [0, 2, 5, 4])
PEAK = 0.9


def _hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def _place(buf: np.ndarray, start: int, sig: np.ndarray) -> None:
    """Add sig: (n,) into buf: (T,) at start, cropped at the end of the song."""
    n = min(len(sig), len(buf) - start)
    if n > 0:
        buf[start:start + n] += sig[:n]


def _pluck(freq: float, n: int, sr: int, rng: np.random.Generator, decay: float = 0.996) -> np.ndarray:
    """Karplus-Strong: (n,) float64. A noise burst circulates through a delay line of N
    samples whose two-tap average (a half-sample delay, hence N + 0.5) damps it like a string.
    Computed a period at a time, since each period depends only on the one before."""
    N = max(2, int(round(sr / freq - 0.5)))
    periods = -(-n // N) + 1
    y = np.zeros(periods * N + 1)  # y[0] stays 0: the sample "before" the first period
    y[1:N + 1] = rng.uniform(-1, 1, N)
    for k in range(1, periods):
        prev = y[(k - 1) * N + 1:k * N + 1]
        prev_shift = y[(k - 1) * N:k * N]
        y[k * N + 1:(k + 1) * N + 1] = decay * 0.5 * (prev + prev_shift)
    return y[1:n + 1]


def _saw(freq: float, n: int, sr: int, detune: float = 0.004) -> np.ndarray:
    """Two detuned band-limited saws (harmonics summed below Nyquist, rolled off): (n,)."""
    t = np.arange(n) / sr
    out = np.zeros(n)
    for f in (freq * (1 - detune), freq * (1 + detune)):
        for k in range(1, min(12, int(sr / 2 / f)) + 1):
            out += np.sin(2 * np.pi * k * f * t) / k ** 1.5  # steeper than 1/k: a gentle low-pass
    env = np.minimum(1.0, t / 0.005) * np.exp(-t / 0.35)
    return 0.5 * out * env


def _kick(sr: int) -> np.ndarray:
    t = np.arange(int(0.35 * sr)) / sr
    f = 45.0 + 75.0 * np.exp(-t / 0.04)  # pitch falls from 120 Hz to 45 Hz
    return np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / 0.12)


def _noise_burst(sr: int, rng: np.random.Generator, seconds: float, tau: float, smooth: int, diff: bool) -> np.ndarray:
    """Noise with an exponential envelope; ``smooth`` taps of averaging cut the highs, a first
    difference cuts the lows (snare: both, a band; hats: the difference only)."""
    n = int(seconds * sr)
    x = rng.standard_normal(n + smooth)
    if smooth > 1:
        x = np.convolve(x, np.ones(smooth) / smooth, mode="same")
    if diff:
        x = np.diff(x)
    return x[:n] * np.exp(-np.arange(n) / sr / tau)


def _snare(sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.2 * sr)) / sr
    tone = 0.5 * np.sin(2 * np.pi * 185.0 * t) * np.exp(-t / 0.05)
    return tone + 0.8 * _noise_burst(sr, rng, 0.2, 0.06, 3, True)


def _song_plan(rng: np.random.Generator) -> dict:
    root = int(rng.integers(40, 47))  # E2..A#2
    riffs = [rng.choice([0, 1, 2, 3, 4, 7], size=8, p=[.3, .15, .2, .1, .15, .1]) for _ in range(2)]
    return {"root": root, "bpm": float(rng.uniform(96, 140)),
            "progression": PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))],
            "riffs": riffs, "octave_up": rng.random(8) < 0.25}


def _chord_root(plan: dict, bar: int) -> int:
    degree = plan["progression"][bar % 4]
    return plan["root"] + int(MINOR[degree])


def _riff_note(plan: dict, bar: int, step: int) -> int:
    """MIDI note of eighth ``step`` of ``bar``: the riff's scale steps counted from the chord."""
    degree = plan["progression"][bar % 4] + int(plan["riffs"][1 if bar % 4 == 3 else 0][step])
    octave, idx = divmod(degree, 7)
    return plan["root"] + 12 + 12 * octave + int(MINOR[idx]) + 12 * int(plan["octave_up"][step])


def synth_song(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """One song: (round(seconds * sample_rate),) float32, peak 0.9, a function of the seed only."""
    if seconds <= 0 or sample_rate <= 0:
        raise ValueError(f"seconds and sample_rate must be positive, got {seconds} and {sample_rate}")
    rng = np.random.default_rng(seed)
    plan, sr = _song_plan(rng), int(sample_rate)
    T = int(round(seconds * sr))
    guitar, bass, drums = np.zeros(T), np.zeros(T), np.zeros(T)
    eighth = 60.0 / plan["bpm"] / 2 * sr  # samples per eighth note (fractional: no drift)
    kick, snare = _kick(sr), _snare(sr, rng)
    for i in range(int(T / eighth) + 1):
        start, bar, step = int(round(i * eighth)), i // 8, i % 8
        _place(guitar, start,
               _pluck(_hz(_riff_note(plan, bar, step)), int(2 * eighth), sr, rng) * rng.uniform(0.7, 1.0))
        _place(bass, start, _saw(_hz(_chord_root(plan, bar)), int(eighth), sr))
        if (bar // 4) % 4 == 3:  # a breakdown section: guitar and bass only
            continue
        if step in (0, 4) or (step == 7 and rng.random() < 0.3):
            _place(drums, start, kick)
        if step in (2, 6):
            _place(drums, start, 0.6 * snare)
        _place(drums, start, 0.15 * _noise_burst(sr, rng, 0.05, 0.012, 1, True))
    mix = 0.5 * guitar + 0.35 * bass + 0.45 * drums
    mix = np.tanh(1.5 * mix)  # glue the parts together, as a bus compressor would
    mix -= mix.mean()
    return (PEAK * mix / max(np.abs(mix).max(), 1e-9)).astype(np.float32)


def write_album(out_dir, n_songs: int = 3, seconds: float = 20.0, sample_rate: int = 16000,
                seed: int = 0, format: str = "wav") -> List[Path]:
    """Write ``n_songs`` songs as out_dir/song_NN.{wav,flac} (16-bit); returns their paths.

    Song i uses seed ``seed * 1000 + i``, so albums of different seeds share no song.
    """
    from fastsrnn.data.audio import write_audio

    if n_songs < 1:
        raise ValueError(f"n_songs must be at least 1, got {n_songs}")
    out = Path(out_dir)
    paths = []
    for i in range(n_songs):
        path = out / f"song_{i:02d}.{format.lower()}"
        write_audio(path, synth_song(seconds, sample_rate, seed * 1000 + i), sample_rate, format=format)
        paths.append(path)
    return paths

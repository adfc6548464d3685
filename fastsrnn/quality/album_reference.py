"""What the album itself sounds like, as numbers: per-chunk features of a prepared dataset,
summarised robustly (median, MAD, 5% / 95% quantiles) and cached in DATA/album_stats.json, so
that ``fastsrnn analyze --against DATA`` can say how far a generated clip is from the album.

Features (one value per clip or chunk, each in the domain where its spread is roughly symmetric):

- ``level_dbfs``: RMS level in dBFS.
- ``log_flatness``: median over frames of log10 spectral flatness (white noise ~ -0.25, music -3 to -1).
- ``centroid_oct`` / ``bandwidth_oct``: power-weighted spectral centroid and spread, log2(Hz).
- ``envelope_db``: standard deviation over frames of the frame level in dB (dynamics; stationary
  noise ~ 1 dB, music with notes and drums 4-10 dB).
- ``flux_db``: onset strength, the mean positive frame-to-frame rise of the log-mel spectrum (dB).
- ``repetition_nines``: -log10(1 - repetition), repetition as in :func:`fastsrnn.quality.measures.repetition`
  (0.9 -> 1, 0.99 -> 2, capped at 3), so that "more repetitive than the album" is measurable
  near 1.
- ``mel_distance_db``: RMS over mel bands of the difference between the clip's average log-mel
  spectrum and the album's median one, both with their mean over bands removed (spectral shape,
  not level).

The statistics come from the train and valid chunks only: the test chunks stay held out, so that
"the album's own test chunks score ok" is a check, not a tautology (a dataset without train or
valid chunks uses all of its chunks).
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from fastsrnn.atomic import atomic_write_text
from fastsrnn.quality.measures import repetition, rms_dbfs

STATS_FILE = "album_stats.json"
STATS_VERSION = 1  # bump when a feature's definition changes: old caches recompute
N_FFT, N_MELS = 1024, 40
FEATURES = ("level_dbfs", "log_flatness", "centroid_oct", "bandwidth_oct", "envelope_db", "flux_db",
            "repetition_nines", "mel_distance_db")
# Smallest spread per feature (its units): a small or very uniform album must not make every
# difference look enormous.
SIGMA_FLOOR = {"level_dbfs": 1.5, "log_flatness": 0.1, "centroid_oct": 0.25, "bandwidth_oct": 0.25,
               "envelope_db": 1.0, "flux_db": 0.3, "repetition_nines": 0.15, "mel_distance_db": 1.0}
MEL_RANGE_DB = 50.0  # the average log-mel spectrum is floored this far below its loudest band


def mel_filterbank(sample_rate: int, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """Triangular filters, equally spaced on the HTK mel scale from 0 Hz to Nyquist: (n_mels, n_fft // 2 + 1)."""
    def mel(hz):
        return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)

    edges_hz = 700.0 * (10 ** (np.linspace(0.0, mel(sample_rate / 2), n_mels + 2) / 2595.0) - 1.0)  # (n_mels + 2,)
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)  # (n_fft // 2 + 1,)
    lo, mid, hi = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]  # (n_mels, 1) each
    rise, fall = (bins - lo) / (mid - lo), (hi - bins) / (hi - mid)
    return np.maximum(0.0, np.minimum(rise, fall))


def _frames_power(audio: np.ndarray, n_fft: int = N_FFT) -> np.ndarray:
    """audio: (T,) -> power spectra of half-overlapping Hann frames: (n, n_fft // 2 + 1) float64."""
    hop = n_fft // 2
    n = max(0, (len(audio) - n_fft) // hop + 1)
    idx = np.arange(n)[:, None] * hop + np.arange(n_fft)[None, :]  # (n, n_fft)
    return np.abs(np.fft.rfft(audio.astype(np.float64)[idx] * np.hanning(n_fft), axis=1)) ** 2


def clip_features(audio: np.ndarray, sample_rate: int) -> Tuple[Dict[str, float], np.ndarray]:
    """audio: (T,) float, T >= N_FFT -> (features without ``mel_distance_db``, average log-mel (N_MELS,) dB)."""
    power = _frames_power(audio)  # (n, K)
    if len(power) == 0:
        raise ValueError(f"a clip of {len(audio)} samples is too short to analyze (at least {N_FFT})")
    total = power.sum(axis=1)  # (n,)
    loud = total > 1e-6 * max(total.max(), 1e-30)
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / sample_rate)  # (K,)
    p = power[loud] / total[loud, None]  # (n_loud, K), each row sums to 1
    centroid = p @ freqs  # (n_loud,)
    spread = np.sqrt(np.maximum((p * (freqs[None, :] - centroid[:, None]) ** 2).sum(axis=1), 0.0))
    logmel = 10 * np.log10(power @ mel_filterbank(sample_rate).T + 1e-10)  # (n, N_MELS)
    frame_db = 10 * np.log10(total / N_FFT + 1e-10)  # (n,)
    rep = repetition(audio, sample_rate)
    # median, not mean: hiss filling a clip's few quiet frames must not make all of it "noise"
    frame_flat = (np.mean(np.log(power + 1e-12), axis=1) - np.log(power.mean(axis=1) + 1e-12)) / np.log(10)
    feats = {
        "level_dbfs": float(rms_dbfs(audio)),
        "log_flatness": float(np.median(frame_flat[loud])) if loud.any() else -6.0,
        "centroid_oct": float(np.log2(max(centroid.mean(), 1.0))) if loud.any() else 0.0,
        "bandwidth_oct": float(np.log2(max(spread.mean(), 1.0))) if loud.any() else 0.0,
        "envelope_db": float(frame_db.std()),
        "flux_db": float(np.maximum(np.diff(logmel, axis=0), 0.0).mean()) if len(logmel) > 1 else 0.0,
        "repetition_nines": float(-np.log10(min(1.0, max(1.0 - rep, 1e-3)))),
    }
    avg = logmel.mean(axis=0)  # (N_MELS,)
    # floored: what an album leaves empty (above a low-pass, say) must not dominate the shape
    return feats, np.maximum(avg, avg.max() - MEL_RANGE_DB)


def mel_distance(logmel: np.ndarray, reference: np.ndarray) -> float:
    """RMS (dB) over bands between two average log-mel spectra (N_MELS,), each less its own mean."""
    d = (logmel - logmel.mean()) - (reference - reference.mean())
    return float(np.sqrt(np.mean(d ** 2)))


@dataclass
class AlbumReference:
    """Robust statistics of an album's chunks; ``stats[feature]`` has median, sigma (1.4826 MAD,
    floored), q05 and q95."""
    sample_rate: int
    n_chunks: int
    splits: List[str]  # the splits the statistics come from
    stats: Dict[str, Dict[str, float]]
    mel_median: List[float]  # (N_MELS,) median average log-mel spectrum, dB
    key: str  # sha256 of the dataset's manifest.json
    points: List[List[float]]  # (N, len(NN_FEATURES) + N_MELS) chunks for closeness, see album_distance
    nn_scale: float  # 90th percentile of the chunks' leave-one-out album_distance: closeness 0.5 there

    def z(self, name: str, value: float) -> float:
        s = self.stats[name]
        return (value - s["median"]) / s["sigma"]


NN_FEATURES = FEATURES[:-1]  # mel_distance_db is replaced by the whole log-mel shape
NN_K = 3  # distance to an album: mean over its NN_K nearest chunks
MAX_POINTS = 400  # chunks kept in album_stats.json for closeness (evenly subsampled)


def _point(feats: Dict[str, float], logmel: np.ndarray, stats) -> np.ndarray:
    """One clip as a point: scalar features in units of their album sigma, then the log-mel shape
    (less its mean) in units of the album's mel_distance sigma, scaled so that the whole shape
    weighs as one feature: (len(NN_FEATURES) + N_MELS,)."""
    scal = [feats[k] / stats[k]["sigma"] for k in NN_FEATURES]
    shape = (logmel - logmel.mean()) / stats["mel_distance_db"]["sigma"] / np.sqrt(N_MELS)
    return np.concatenate([scal, shape])


def album_distance(point: np.ndarray, points: np.ndarray, skip_self: bool = False) -> float:
    """Mean Euclidean distance from point (P,) to its NN_K nearest rows of points (N, P)."""
    d = np.sort(np.sqrt(((points - point) ** 2).sum(axis=1)))[int(skip_self):]
    return float(d[:NN_K].mean()) if len(d) else 0.0


def _summary(name: str, values: np.ndarray) -> Dict[str, float]:
    med = float(np.median(values))
    sigma = max(1.4826 * float(np.median(np.abs(values - med))), SIGMA_FLOOR[name])
    q05, q95 = (float(q) for q in np.quantile(values, [0.05, 0.95]))
    return {"median": med, "sigma": sigma, "q05": q05, "q95": q95}


def _chunk_files(data_dir: Path, manifest: dict) -> Tuple[List[Path], List[str]]:
    from fastsrnn.data.manifest import split_files

    splits = ["train", "valid"]
    if not any(c["split"] in splits for c in manifest["chunks"]):
        splits = ["train", "valid", "test"]
    files = [f for s in splits for f in split_files(data_dir, s, verify=True)]
    if not files:
        raise ValueError(f"{data_dir}: the prepared dataset holds no chunks to compare against")
    return files, splits


def compute_reference(data_dir, progress: bool = True) -> AlbumReference:
    """Read the album's train + valid chunks and summarise their features (no caching)."""
    from tqdm.auto import tqdm

    from fastsrnn.data.audio import read_audio
    from fastsrnn.data.manifest import read_manifest

    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    sr = int(manifest["sample_rate"])
    files, splits = _chunk_files(data_dir, manifest)
    rows, mels = [], []
    for f in tqdm(files, desc="album statistics", unit="chunk", delay=2.0, disable=not progress):
        feats, logmel = clip_features(read_audio(f, sr), sr)
        rows.append(feats)
        mels.append(logmel)
    mel_median = np.median(np.stack(mels), axis=0)  # (N_MELS,)
    for feats, logmel in zip(rows, mels):
        feats["mel_distance_db"] = mel_distance(logmel, mel_median)
    stats = {k: _summary(k, np.array([r[k] for r in rows])) for k in FEATURES}
    keep = np.unique(np.linspace(0, len(rows) - 1, min(len(rows), MAX_POINTS)).round().astype(int))
    points = np.stack([_point(rows[i], mels[i], stats) for i in keep])  # (N, P)
    loo = [album_distance(p, points, skip_self=True) for p in points]
    nn_scale = max(float(np.quantile(loo, 0.9)), 0.5) if len(points) > 1 else 1.0
    return AlbumReference(sr, len(files), splits, stats, [round(float(v), 3) for v in mel_median],
                          _manifest_key(data_dir), np.round(points, 4).tolist(), nn_scale)


def _manifest_key(data_dir: Path) -> str:
    from fastsrnn.data.manifest import MANIFEST_FILE

    return hashlib.sha256((data_dir / MANIFEST_FILE).read_bytes()).hexdigest()


def _load_cached(path: Path, key: str):
    try:
        d = json.loads(path.read_text())
        if d.get("version") != STATS_VERSION or d.get("key") != key:
            return None
        d.pop("version")
        ref = AlbumReference(**d)
        if set(ref.stats) != set(FEATURES) or len(ref.mel_median) != N_MELS:
            return None
        return ref
    except (OSError, ValueError, TypeError, AttributeError):
        return None  # missing, stale, damaged or from another version: recompute


def album_reference(data_dir, progress: bool = True, cache: bool = True) -> AlbumReference:
    """The album statistics of a prepared dataset, computed on first use and cached in
    DATA/album_stats.json (atomically; keyed by the manifest's sha256, so a re-prepared dataset
    recomputes). A folder that cannot be written still works, with a warning. Raises
    FileNotFoundError / ValueError naming the folder when it is not a prepared dataset."""
    data_dir = Path(data_dir)
    from fastsrnn.data.manifest import MANIFEST_FILE, read_manifest

    if not (data_dir / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"{data_dir}: not a prepared dataset (no {MANIFEST_FILE}); "
                                "make one with 'fastsrnn prepare SOURCES --out DIR'")
    read_manifest(data_dir)  # a malformed manifest: a ValueError naming it
    path = data_dir / STATS_FILE
    ref = _load_cached(path, _manifest_key(data_dir)) if cache else None
    if ref is not None:
        return ref
    ref = compute_reference(data_dir, progress=progress)
    if cache:
        try:
            atomic_write_text(path, json.dumps({"version": STATS_VERSION, **ref.__dict__}, indent=1) + "\n")
        except OSError as e:
            warnings.warn(f"{path}: cannot cache the album statistics ({e}); they will be recomputed next time",
                          stacklevel=2)
    return ref


def score(audio: np.ndarray, ref: AlbumReference) -> Tuple[Dict[str, float], Dict[str, float], float]:
    """audio: (T,) at ``ref.sample_rate`` -> (features, robust z per feature, closeness in [0, 1]).

    closeness = 2 ** -(d / nn_scale) ** 2, d = :func:`album_distance` of the clip to the album's
    chunks: 1 on top of an album chunk, 0.5 as far as the album's 90th-percentile chunk is from
    its own neighbours, ~0.06 at twice that. Nearest chunks, not the album's median, so that an
    album of quiet intros and loud choruses counts both as close."""
    feats, logmel = clip_features(audio, ref.sample_rate)
    feats["mel_distance_db"] = mel_distance(logmel, np.asarray(ref.mel_median))
    d = album_distance(_point(feats, logmel, ref.stats), np.asarray(ref.points))
    return feats, {k: ref.z(k, feats[k]) for k in FEATURES}, float(2.0 ** -((d / ref.nn_scale) ** 2))

"""Listening aids for picking a checkpoint: silence, white noise and "traps" (a clip stuck in one
riff), the failure modes the Dadabots paper describes; and a plot of the training curves.

``fastsrnn analyze CLIPS...`` prints one row per clip. With ``--against DATA`` (a prepared
dataset) the verdicts are relative to that album (:mod:`fastsrnn.tools.album_reference`):
"silent", "noise-like", "trapped" or "ok", with a closeness score in [0, 1].
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from fastsrnn.atomic import atomic_path

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
    from fastsrnn.tools.album_reference import N_FFT, score

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
    :class:`~fastsrnn.tools.album_reference.AlbumReference`, see ``album_reference(DATA)``) the
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


def plot_metrics(run_dir) -> Path:
    """RUN/metrics.jsonl -> RUN/metrics.png: train and valid bits per sample against step, a dotted
    line at each checkpoint, and (right axis) the median closeness of each checkpoint's clips to
    the album (its ``clip_scores`` records, :mod:`fastsrnn.training.clip_scores`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("train_bits", "valid_bits"):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), label=key.replace("_bits", ""), marker="." if key == "valid_bits" else None)
    # Checkpoints are known from their clips' records (scored or failed); a run without clips has none.
    checkpoints = sorted({r["step"] for r in rows if r.get("event") in ("clip_scores", "clips_failed")})
    for i, step in enumerate(checkpoints):
        ax.axvline(step, color="0.6", linestyle=":", linewidth=1, label="checkpoint" if i == 0 else None)
    scored = [(r["step"], r["closeness_median"]) for r in rows
              if r.get("event") == "clip_scores" and r.get("closeness_median") is not None]
    handles, labels = ax.get_legend_handles_labels()
    if scored:
        ax2 = ax.twinx()
        line, = ax2.plot(*zip(*scored), color="tab:green", marker="o", linestyle="--", linewidth=1)
        handles, labels = handles + [line], labels + ["clips: closeness"]
        noisy = [r["step"] for r in rows if r.get("event") == "clip_scores" and r.get("noise_warning")]
        for i, step in enumerate(noisy):  # the checkpoints whose restart warning fired
            red = ax2.axvline(step, color="tab:red", alpha=0.4, linewidth=2)
            handles, labels = (handles + [red], labels + ["clips all noise"]) if i == 0 else (handles, labels)
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("clip closeness to the album (median)")
    ax.set_xlabel("step")
    ax.set_ylabel("NLL (bits / sample)")
    ax.legend(handles, labels, loc="upper right", fontsize="small")
    ax.grid(alpha=0.3)
    out = run_dir / "metrics.png"
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out


def add_arguments(p) -> None:
    p.add_argument("clips", nargs="+", help="audio files (e.g. RUN/samples/<step>/*.wav)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.add_argument("--against", metavar="DATA_DIR", default=None,
                   help="a prepared dataset (fastsrnn prepare): verdicts and a closeness score relative to that "
                        "album; its statistics are computed once and cached in DATA_DIR/album_stats.json")


_SHOWN = (("level_dbfs", "level", "{:.1f} dBFS"), ("log_flatness", "log10 flatness", "{:.2f}"),
          ("centroid_oct", "centroid", "2^{:.1f} Hz"), ("envelope_db", "dynamics", "{:.1f} dB"),
          ("repetition_nines", "repetition", "{:.2f} nines"), ("mel_distance_db", "log-mel distance", "{:.1f} dB"))


def _row(rep: ClipReport, path) -> str:
    if rep.rms_dbfs is None:
        return f"{rep.verdict:<7} {path}"
    if rep.closeness is not None:
        rel = "  ".join(f"{name} {fmt.format(rep.features[k])} (z {rep.z[k]:+.1f})" for k, name, fmt in _SHOWN)
        return f"{rep.verdict:<10} closeness {rep.closeness:.2f}  {rel}  {path}"
    return (f"{rep.verdict:<7} level {rep.rms_dbfs:6.1f} dBFS  flatness {rep.flatness:5.3f}  "
            f"repetition {rep.repetition:5.3f}  {path}")


def run(args) -> int:
    """One row per clip; a clip that cannot be read gets an error row (stderr) and the rest go on.
    Exit status 1 when any clip could not be read."""
    import sys

    from fastsrnn.data.audio import require_soundfile

    sf = require_soundfile()
    ref = None
    if args.against is not None:
        from fastsrnn.tools.album_reference import album_reference

        ref = album_reference(args.against)
    failed = 0
    for path in args.clips:
        try:
            audio, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
        except Exception as e:  # any unreadable file: report it and go on with the others
            failed += 1
            if args.json:
                print(json.dumps({"file": str(path), "verdict": "error", "error": f"cannot read audio ({e})"}))
            print(f"error   {path}: cannot read audio ({e})", file=sys.stderr)
            continue
        rep = analyze_clip(audio.mean(axis=1), sr, reference=ref)
        print(json.dumps({"file": str(path), **asdict(rep)}) if args.json else _row(rep, path))
    if failed:
        print(f"fastsrnn analyze: {failed} of {len(args.clips)} file(s) could not be read", file=sys.stderr)
    return 1 if failed else 0

"""``fastsrnn analyze CLIPS...``: one row per clip, its verdict (:mod:`fastsrnn.quality.verdict`).

With ``--against DATA`` (a prepared dataset) the verdicts are relative to that album
(:mod:`fastsrnn.quality.album_reference`): "silent", "noise-like", "trapped" or "ok", with a
closeness score in [0, 1].
"""
from __future__ import annotations

import json
from dataclasses import asdict

from fastsrnn.quality.verdict import ClipReport, analyze_clip


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
        from fastsrnn.quality.album_reference import album_reference

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

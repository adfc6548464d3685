"""The clips of each checkpoint, judged against the album they learn from.

After a checkpoint's clips are written, :class:`ClipScorer` analyzes them against the training
dataset (:func:`fastsrnn.quality.album_reference.album_reference`, computed once per run on first
use and cached in DATA/album_stats.json) and returns one metrics.jsonl record::

    {"event": "clip_scores", "step": N, "epoch": E, "reference": "album",
     "clips": [{"file": "samples/000000N/clip_00.wav", "verdict": "ok", "closeness": 0.71}, ...],
     "clip_verdicts": {"ok": 9, "noise-like": 1}, "closeness_median": 0.68, "noise_warning": false}

A dataset whose album statistics cannot be computed gives one warning and album-free verdicts
("ok", "silent", "noise", "trap"; closeness null; "reference": "none"). Nothing here stops a run.

The Dadabots advice, as a warning: a run whose every clip is still noise (or silence) after a
few epochs should be restarted. The rule: from the first checkpoint with at least
NOISE_AFTER_EPOCHS full epochs done that is also at least the NOISE_AFTER_CHECKPOINTS-th checkpoint
and at least NOISE_AFTER_STEPS optimizer steps in (so that a tiny album, whose epochs take a
handful of steps, is not judged after a few steps: the demo's 1-minute album is 25 epochs in 800
steps, and a model of 800 steps still sounds noisy; on a real album 3 epochs are thousands of
steps, 9,000 for the paper's 3,200 windows at batch 128, so the step floor does not bind there).
Clips stuck in one riff ("trapped") are named once per run.
"""
from __future__ import annotations

import statistics
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

NOISE_AFTER_EPOCHS = 3  # the paper's "a few epochs": the model has heard the album 3 times
NOISE_AFTER_CHECKPOINTS = 3  # and it is at least the 3rd checkpoint (step >= 3 x checkpoint_every)
NOISE_AFTER_STEPS = 2000  # and it has trained that long: too short a run is not judged
NOISY = ("noise-like", "noise", "silent")  # against the album, and album-free
TRAPPED = ("trapped", "trap")


class ClipScorer:
    """Scores the clips of each checkpoint of one run; the album reference is loaded lazily, once."""

    def __init__(self, data_dir, run: Path, checkpoint_every: int):
        self.data_dir, self.run, self.checkpoint_every = Path(data_dir), Path(run), checkpoint_every
        self._reference, self._tried = None, False
        self.trap_warned = False

    def reference(self):
        """The album reference, or None (warned once) when it cannot be computed."""
        if not self._tried:
            self._tried = True
            from fastsrnn.quality.album_reference import album_reference

            try:
                self._reference = album_reference(self.data_dir, progress=False)
            except Exception as e:  # any failure: the clips are still judged, without the album
                warnings.warn(f"clip scores: the album statistics of {self.data_dir} cannot be computed "
                              f"({type(e).__name__}: {e}); clips are judged without the album "
                              "(no closeness); training goes on", RuntimeWarning, stacklevel=2)
        return self._reference

    def score(self, step: int, epoch: int, folder: Path) -> Optional[Dict[str, Any]]:
        """The clips folder of checkpoint ``step`` -> its clip_scores record (None: no clips, or
        they could not be analyzed, which is a warning). Warns about noise and traps."""
        try:
            record = self._record(step, epoch, sorted(Path(folder).glob("clip_*.wav")))
        except Exception as e:  # a scoring bug must never cost the run
            warnings.warn(f"clips of step {step} could not be analyzed ({type(e).__name__}: {e}); training goes on",
                          RuntimeWarning, stacklevel=2)
            return None
        if record is not None:
            self._warn(record)
        return record

    def _record(self, step: int, epoch: int, files: List[Path]) -> Optional[Dict[str, Any]]:
        if not files:
            return None
        from fastsrnn.data.audio import require_soundfile
        from fastsrnn.quality.verdict import analyze_clip

        sf, ref = require_soundfile(), self.reference()
        clips = []
        for f in files:
            audio, sr = sf.read(str(f), dtype="float32", always_2d=True)  # (T, C)
            rep = analyze_clip(audio.mean(axis=1), sr, reference=ref)
            clips.append({"file": f.relative_to(self.run).as_posix(), "verdict": rep.verdict,
                          "closeness": rep.closeness})
        close = [c["closeness"] for c in clips if c["closeness"] is not None]
        return {"event": "clip_scores", "step": step, "epoch": epoch, "reference": "none" if ref is None else "album",
                "clips": clips, "clip_verdicts": dict(Counter(c["verdict"] for c in clips)),
                "closeness_median": round(statistics.median(close), 3) if close else None,
                "noise_warning": self.noise_rule(step, epoch, clips)}

    def noise_rule(self, step: int, epoch: int, clips: List[Dict[str, Any]]) -> bool:
        """Every clip noise or silent, after NOISE_AFTER_EPOCHS epochs, NOISE_AFTER_CHECKPOINTS
        checkpoints and NOISE_AFTER_STEPS steps."""
        late = (epoch >= NOISE_AFTER_EPOCHS and step >= NOISE_AFTER_CHECKPOINTS * self.checkpoint_every
                and step >= NOISE_AFTER_STEPS)
        return late and bool(clips) and all(c["verdict"] in NOISY for c in clips)

    def _warn(self, record: Dict[str, Any]) -> None:
        step, epoch, clips = record["step"], record["epoch"], record["clips"]
        if record["noise_warning"]:
            warnings.warn(f"clips of step {step} (epoch {epoch}) are all noise or silence: {_verdicts(record)}"
                          f"{_closeness(clips)}. A run that still makes only noise after {epoch} epochs rarely "
                          "recovers: consider restarting it in a new --out with another --seed or a lower --lr. "
                          "Training goes on.", RuntimeWarning, stacklevel=3)
        trapped = [c for c in clips if c["verdict"] in TRAPPED]
        if trapped and not self.trap_warned:
            self.trap_warned = True
            warnings.warn(f"clips of step {step} (epoch {epoch}): {len(trapped)} of {len(clips)} are trapped, stuck "
                          f"repeating one riff ({', '.join(c['file'] for c in trapped)}){_closeness(trapped)}. "
                          "Listen to them and prefer a checkpoint whose clips are not trapped "
                          "(this is said once per run). Training goes on.", RuntimeWarning, stacklevel=3)


def _verdicts(record: Dict[str, Any]) -> str:
    return ", ".join(f"{n} {v}" for v, n in sorted(record["clip_verdicts"].items()))


def _closeness(clips: List[Dict[str, Any]]) -> str:
    close = [c["closeness"] for c in clips if c["closeness"] is not None]
    return f"; closeness to the album {', '.join(f'{c:.2f}' for c in close)}" if close else ""

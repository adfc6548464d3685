"""The clips written at every checkpoint: generation, retry of failed clips, their scores.

Separate from the step code because clips must never kill the training: every failure here is
a warning and a record in metrics.jsonl. ClipsMixin is a base of the trainer's ``_Loop`` (it
uses the loop's run, model, configs and device).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import torch

from fastsrnn.model import SampleRNN
from fastsrnn.training.run_folder import _append_metrics


class ClipsMixin:
    """The clip methods of the trainer's ``_Loop``."""

    def clips_dir(self, step: int) -> Path:
        return self.run / "samples" / f"{step:07d}"

    def clips_complete(self, step: int) -> bool:
        return all((self.clips_dir(step) / f"clip_{i:02d}.wav").is_file() for i in range(self.tcfg.n_clips))

    def write_clips(self, step: int, epoch: int) -> Optional[Path]:
        """n_clips clips of clip_seconds from the current weights, seeded by the step, then their
        ``clip_scores`` record in metrics.jsonl (:mod:`fastsrnn.training.clip_scores`).

        Never fails: an exception in generating or writing them is a warning and a ``clips_failed``
        record in metrics.jsonl, and these weights are kept to try again at the next checkpoint.
        """
        if not self.dist.rank0 or self.tcfg.n_clips == 0:
            return None
        retry, self.pending_clips = self.pending_clips, None
        if retry is not None:  # the clips that failed at the last checkpoint, from that step's weights
            self._try_clips(retry[0], retry[1], retry[2], retry_of_failed=True)
        return self._try_clips(step, self.raw.state_dict(), epoch, retry_of_failed=False)

    def _try_clips(self, step: int, weights, epoch: int, retry_of_failed: bool) -> Optional[Path]:
        try:
            out = self._clips(step, weights)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            again = "" if retry_of_failed else "; tried again at the next checkpoint"
            warnings.warn(f"clips of step {step} could not be written ({error}){again}; training goes on",
                          RuntimeWarning, stacklevel=2)
            record = {"event": "clips_failed", "step": step, "error": error}
            if retry_of_failed:
                record["retry"] = True
            else:  # a CPU copy of these weights, to generate the same clips later
                self.pending_clips = (step, {k: v.detach().cpu().clone() for k, v in weights.items()}, epoch)
            _append_metrics(self.run / "metrics.jsonl", record)
            return None
        scores = self.scorer.score(step, epoch, out)  # never raises
        if scores is not None:
            _append_metrics(self.run / "metrics.jsonl", scores)
        return out

    def _clips(self, step: int, weights) -> Path:
        from fastsrnn.data.audio import write_audio
        from fastsrnn.generation.generator import generate

        t = self.tcfg
        # A fresh model, not a deepcopy of the trained one (weight norm's computed weights are no graph
        # leaves and refuse to be copied), built without touching the training RNG.
        with torch.random.fork_rng(devices=[]):
            model = SampleRNN(self.cfg)
        model.load_state_dict(weights)
        audio = generate(model, int(round(t.clip_seconds * self.cfg.sample_rate)), n_seq=t.n_clips,
                         temperature=t.clip_temperature, h0=t.clip_h0, seed=step, backend=t.clip_backend,
                         device=self.device)  # (n_clips, T) float32
        out = self.clips_dir(step)
        for i, clip in enumerate(audio):
            write_audio(out / f"clip_{i:02d}.wav", clip, self.cfg.sample_rate)
        return out

"""Long generations on disk: streamed in chunks, saved periodically, resumable after a kill.

Layout of an output directory:
  generation.json        the settings (and, once finished, what was made)
  seq_000.part.wav ...   audio being written: always a valid WAV up to the last written chunk
  state.pt               generator state + samples written + level statistics (atomic)
  seq_000.wav|flac ...   the finished files (level applied), written when the run completes
Memory is bounded by one chunk: nothing grows with the length generated.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch

from fastsrnn.atomic import atomic_path, atomic_write_text
from fastsrnn.checkpoint import load_checkpoint, model_from_checkpoint
from fastsrnn.data.audio import AudioStreamWriter, require_soundfile
from fastsrnn.data.prepare import file_sha256
from fastsrnn.generation.generator import Generator, prime_levels
from fastsrnn.generation.memory import check_generation_fits

SETTINGS, STATE = "generation.json", "state.pt"
FORMAT = "fastsrnn-generation"
PEAK_TARGET, MAX_GAIN, SILENT_RMS = 0.9, 10.0, 1e-3


class GenerationRun:
    """One output directory's generation: create it, or reopen it to resume."""

    def __init__(self, out_dir: Path, settings: dict, gen: Generator, stats: dict):
        self.out, self.settings, self.gen, self.stats = Path(out_dir), settings, gen, stats
        self.parts = [self.out / f"seq_{i:03d}.part.wav" for i in range(settings["n_seq"])]

    # ---- creating and reopening ------------------------------------------------------------
    @classmethod
    def create(cls, checkpoint, out_dir, *, seconds: float, n_seq: int = 1, temperature=1.0, argmax=False,
               h0="learned", seed=0, prime=None, prime_seconds=None, backend=None, device=None,
               fmt="wav", normalize="peak", chunk_seconds=1.0, save_every_seconds=10.0) -> "GenerationRun":
        out = Path(out_dir)
        _check_new_output(out)
        require_soundfile()  # the part files need it: say so before the model is loaded
        if not seconds or seconds <= 0:
            raise ValueError(f"--seconds must be > 0, got {seconds}")
        if fmt not in ("wav", "flac"):
            raise ValueError(f"--format must be 'wav' or 'flac', got {fmt!r}")
        if normalize not in ("peak", "none"):
            raise ValueError(f"--normalize must be 'peak' or 'none', got {normalize!r}")
        ckpt_path = Path(checkpoint).resolve()
        model = model_from_checkpoint(load_checkpoint(ckpt_path), ckpt_path)
        sr = model.cfg.sample_rate
        check_generation_fits(model.cfg, n_seq, device)
        levels = prime_levels(prime, model.cfg, prime_seconds) if prime is not None else None
        gen = Generator(model, n_seq, temperature=temperature, argmax=argmax, h0=h0, seed=seed,
                        backend=backend, device=device, prime=levels)
        settings = {"format": FORMAT, "version": 1, "checkpoint": str(ckpt_path),
                    "checkpoint_sha256": file_sha256(ckpt_path),
                    "seconds": seconds, "n_samples": int(round(seconds * sr)), "sample_rate": sr, "n_seq": n_seq,
                    "temperature": temperature, "argmax": argmax, "h0": h0, "seed": seed,
                    "prime": None if prime is None else str(Path(prime).resolve()), "prime_seconds": prime_seconds,
                    "prime_samples": 0 if levels is None else int(levels.numel()), "audio_format": fmt,
                    "normalize": normalize, "chunk_samples": int(chunk_seconds * sr),
                    "save_every_samples": int(save_every_seconds * sr), "backend": gen.backend_name, "complete": False}
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / SETTINGS, json.dumps(settings, indent=2))
        stats = {"written": 0, "sum": [0.0] * n_seq, "sumsq": [0.0] * n_seq, "peak": [0.0] * n_seq}
        run = cls(out, settings, gen, stats)
        run._open_parts(levels)
        run.save_state()
        return run

    @classmethod
    def reopen(cls, out_dir, backend=None, device=None) -> "GenerationRun":
        out = Path(out_dir)
        settings = _read_settings(out)
        require_soundfile()
        if settings.get("complete"):
            raise FileExistsError(f"{out}: this generation is already complete; nothing to resume")
        if not (out / STATE).is_file():
            raise FileNotFoundError(f"{out}: no {STATE} to resume from (the run died before its first save); "
                                    "start it again in a new --out")
        ckpt_path = Path(settings["checkpoint"])
        if not ckpt_path.is_file() or file_sha256(ckpt_path) != settings["checkpoint_sha256"]:
            raise ValueError(f"{out}: its checkpoint {ckpt_path} is missing or has changed since the run started; "
                             "cannot resume exactly")
        model = model_from_checkpoint(load_checkpoint(ckpt_path), ckpt_path)
        gen = Generator(model, settings["n_seq"], temperature=settings["temperature"], argmax=settings["argmax"],
                        h0=settings["h0"], seed=settings["seed"], backend=backend or settings["backend"], device=device)
        saved = torch.load(out / STATE, map_location="cpu", weights_only=True)
        gen.load_state_dict(saved["generator"])
        run = cls(out, settings, gen, saved["stats"])
        run._truncate_parts()
        return run

    def _open_parts(self, levels: Optional[torch.Tensor]) -> None:
        sr = self.settings["sample_rate"]
        self.files = [AudioStreamWriter(p, sr, "wav") for p in self.parts]
        if levels is not None:  # the recording being continued starts each file, as the model heard it
            audio = self.gen.to_audio(levels[None]).repeat(self.settings["n_seq"], axis=0)
            self._write(audio)

    def _truncate_parts(self) -> None:
        """Drop whatever was written after the last saved state: it is generated again, identically."""
        sr = self.settings["sample_rate"]
        written = self.stats["written"]
        self.files = [AudioStreamWriter(p, sr, "wav", append=True, keep_frames=written) for p in self.parts]

    # ---- the loop ------------------------------------------------------------------------------
    def _write(self, audio: np.ndarray) -> None:
        for i, f in enumerate(self.files):
            f.write(audio[i])
            f.flush()  # libsndfile rewrites the WAV header: the file is valid up to here
        self.stats["written"] += audio.shape[1]
        self.stats["sum"] = [s + float(a.sum(dtype=np.float64)) for s, a in zip(self.stats["sum"], audio)]
        self.stats["sumsq"] = [s + float(np.square(a, dtype=np.float64).sum())
                               for s, a in zip(self.stats["sumsq"], audio)]
        self.stats["peak"] = [max(p, float(np.abs(a).max())) for p, a in zip(self.stats["peak"], audio)]

    def save_state(self) -> None:
        with atomic_path(self.out / STATE) as tmp:
            torch.save({"generator": self.gen.state_dict(), "stats": self.stats}, tmp)

    @property
    def generated(self) -> int:
        """Samples generated so far per sequence (prime excluded)."""
        return self.stats["written"] - self.settings["prime_samples"]

    def run(self, progress: bool = True, on_chunk: Optional[Callable[["GenerationRun"], None]] = None) -> List[Path]:
        """Generate to the end, saving state every save_every_samples; then finalize the files."""
        from tqdm.auto import tqdm

        s, sr = self.settings, self.settings["sample_rate"]
        left = s["n_samples"] - self.generated
        since_save, t0, done0 = 0, time.perf_counter(), self.generated
        with tqdm(total=s["n_samples"] / sr, initial=self.generated / sr, unit="s", disable=not progress,
                  desc=f"generate {s['n_seq']} x ({self.gen.backend_name})",
                  bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s audio [{elapsed}<{remaining}{postfix}]") as bar:
            if left > 0:
                for audio in self.gen.stream(left, s["chunk_samples"]):
                    self._write(audio)
                    since_save += audio.shape[1]
                    if since_save >= s["save_every_samples"]:
                        self.save_state()
                        since_save = 0
                    rate = (self.generated - done0) / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix_str(f"{rate:,.0f} samples/s/seq, {rate * s['n_seq']:,.0f} total, "
                                        f"{rate / sr:.2f}x real time")
                    bar.update(audio.shape[1] / sr)
                    if on_chunk is not None:
                        on_chunk(self)
        self.save_state()
        return self.finalize()

    def finalize(self) -> List[Path]:
        """Part files -> final files (level applied, streamed in blocks); mark the run complete."""
        for f in self.files:
            f.close()
        finals, notes = [], []
        for i, part in enumerate(self.parts):
            gain, note = self._gain(i)
            if note:
                notes.append(note)
                warnings.warn(note)
            final = part.with_name(f"seq_{i:03d}.{self.settings['audio_format']}")
            _copy_with_gain(part, final, gain, self.settings["audio_format"])
            part.unlink()
            finals.append(final)
        self.settings.update(complete=True, files=[f.name for f in finals], notes=notes,
                             gains=[self._gain(i)[0] for i in range(len(finals))])
        atomic_write_text(self.out / SETTINGS, json.dumps(self.settings, indent=2))
        (self.out / STATE).unlink()
        return finals

    def _gain(self, i: int):
        """Peak normalization (the paper's clips were normalized), capped so silence stays silence."""
        n = max(self.stats["written"], 1)
        mean = self.stats["sum"][i] / n
        rms = max(self.stats["sumsq"][i] / n - mean * mean, 0.0) ** 0.5
        note = None
        if rms < SILENT_RMS:
            note = f"sequence {i} is near-silent (RMS {rms:.2e}); try another seed, temperature or checkpoint"
        peak = self.stats["peak"][i]
        if self.settings["normalize"] == "none" or peak <= 0:
            return 1.0, note
        return min(PEAK_TARGET / peak, MAX_GAIN), note


def _copy_with_gain(src: Path, dst: Path, gain: float, fmt: str, block: int = 1 << 16) -> None:
    sf = require_soundfile()
    with sf.SoundFile(src) as fin, atomic_path(dst) as tmp:
        with sf.SoundFile(tmp, "w", fin.samplerate, 1, "PCM_16", format=fmt.upper()) as fout:
            for chunk in fin.blocks(blocksize=block, dtype="float32"):
                fout.write(np.clip(chunk * gain, -1.0, 1.0))


def _read_settings(out: Path) -> dict:
    path = out / SETTINGS
    if not path.is_file():
        raise FileNotFoundError(f"{out}: not a fastsrnn generation directory (no {SETTINGS})")
    try:
        settings = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: damaged ({e})") from None
    if settings.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fastsrnn generation settings file")
    return settings


def _check_new_output(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a directory")
    if (out / SETTINGS).exists():
        raise FileExistsError(f"--out {out} already holds a generation; use 'fastsrnn generate --resume {out}' "
                              "to continue it, or choose another --out")
    if out.is_dir() and any(p.suffix in (".wav", ".flac") for p in out.iterdir()):
        raise FileExistsError(f"--out {out} already holds audio files; choose an empty or new directory")

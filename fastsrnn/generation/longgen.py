"""Long generations on disk: streamed in chunks, saved periodically, resumable after a kill.

Layout of an output directory:
  generation.json        the settings (and, once finished, what was made)
  seq_000.part.wav ...   audio being written: always a valid WAV up to the last written chunk
  state.pt               generator state + samples written + level statistics (atomic)
  seq_000.wav|flac ...   the finished files (level applied), written when the run completes
Memory is bounded by one chunk: nothing grows with the length generated.

One process at a time: a run holds the folder's lock (fastsrnn.outlock) from create/reopen to the
end of run(). Finalizing is resumable: each part file is removed only once its final file is
complete (written atomically), so a resume redoes the finalize of every sequence whose part file
is still there and keeps the finals whose part file is gone.
"""
from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import shutil
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
from fastsrnn.generation.generator import Generator, check_device, prime_levels
from fastsrnn.generation.memory import check_generation_fits
from fastsrnn.outlock import LOCK_NAME, locked_output

SETTINGS, STATE = "generation.json", "state.pt"
FORMAT = "fastsrnn-generation"
PEAK_TARGET, MAX_GAIN, SILENT_RMS = 0.9, 10.0, 1e-3
LOCK_WHAT = "fastsrnn generate"
FD_MARGIN = 16  # file descriptors beyond the part files and those open now: final copy, state, settings


class GenerationRun:
    """One output directory's generation: create it, or reopen it to resume."""

    def __init__(self, out_dir: Path, settings: dict, gen: Generator, stats: dict,
                 lock: Optional[contextlib.ExitStack] = None):
        self.out, self.settings, self.gen, self.stats = Path(out_dir), settings, gen, stats
        self.parts = [self.out / f"seq_{i:03d}.part.wav" for i in range(settings["n_seq"])]
        self.files = []
        self._lock = lock  # released by close() (run() closes)

    def close(self) -> None:
        """Close the part files and release the folder's lock (run() does this when it ends)."""
        for f in self.files:
            f.close()
        self.files = []
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "GenerationRun":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- creating and reopening ------------------------------------------------------------
    @classmethod
    def create(cls, checkpoint, out_dir, *, seconds: float, n_seq: int = 1, temperature=1.0, argmax=False,
               h0="learned", seed=0, prime=None, prime_seconds=None, backend=None, device=None,
               fmt="wav", normalize="peak", chunk_seconds=1.0, save_every_seconds=10.0) -> "GenerationRun":
        out = Path(out_dir)
        seconds = _check_float("--seconds", seconds)
        chunk_seconds = _check_float("--chunk-seconds", chunk_seconds)
        save_every_seconds = _check_float("--save-every", save_every_seconds)
        if prime_seconds is not None:
            if prime is None:
                raise ValueError("--prime-seconds needs --prime (the recording to continue)")
            prime_seconds = _check_float("--prime-seconds", prime_seconds)
        n_seq = _check_int("--n-seq", n_seq, 1)
        _check_int("--seed", seed)
        _check_temperature(temperature)
        if fmt not in ("wav", "flac"):
            raise ValueError(f"--format must be 'wav' or 'flac', got {fmt!r}")
        if normalize not in ("peak", "none"):
            raise ValueError(f"--normalize must be 'peak' or 'none', got {normalize!r}")
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"--out {out} is a file, not a directory")
        _check_new_output(out)  # again under the lock, below: this one fails before the model is loaded
        check_device(device, "--device")
        require_soundfile()  # the part files need it: say so before the model is loaded
        ckpt_path = Path(checkpoint).resolve()
        model = model_from_checkpoint(load_checkpoint(ckpt_path), ckpt_path)
        sr, F = model.cfg.sample_rate, model.cfg.frame_size
        n_samples = int(round(seconds * sr))
        if n_samples < F:
            raise ValueError(f"--seconds {seconds:g} is under one frame: the minimum is {F} samples = {F / sr:g} s "
                             f"at {sr} Hz")
        check_generation_fits(model.cfg, n_seq, device)
        _ensure_open_files(n_seq)
        levels = prime_levels(prime, model.cfg, prime_seconds) if prime is not None else None
        prime_samples = 0 if levels is None else int(levels.numel())
        _check_disk(out, n_seq, prime_samples + n_samples, prime_samples + n_samples)
        gen = Generator(model, n_seq, temperature=temperature, argmax=argmax, h0=h0, seed=seed,
                        backend=backend, device=device, prime=levels)
        settings = {"format": FORMAT, "version": 1, "checkpoint": str(ckpt_path),
                    "checkpoint_sha256": file_sha256(ckpt_path),
                    "seconds": seconds, "n_samples": n_samples, "sample_rate": sr, "n_seq": n_seq,
                    "temperature": temperature, "argmax": argmax, "h0": h0, "seed": seed,
                    "prime": None if prime is None else str(Path(prime).resolve()), "prime_seconds": prime_seconds,
                    "prime_samples": prime_samples, "audio_format": fmt,
                    "normalize": normalize, "chunk_samples": int(chunk_seconds * sr),
                    "save_every_samples": int(save_every_seconds * sr), "backend": gen.backend_name, "complete": False}
        lock = _lock(out)
        try:
            _check_new_output(out)
            atomic_write_text(out / SETTINGS, json.dumps(settings, indent=2))
            stats = {"written": 0, "sum": [0.0] * n_seq, "sumsq": [0.0] * n_seq, "peak": [0.0] * n_seq}
            run = cls(out, settings, gen, stats, lock)
            try:
                run._open_parts(levels)
                run.save_state()
            except BaseException:  # nothing half-made: the folder can be used again
                run.close_files_only()
                for p in [*run.parts, out / STATE, out / SETTINGS]:
                    with contextlib.suppress(OSError):
                        p.unlink()
                raise
        except BaseException:
            lock.close()
            raise
        return run

    @classmethod
    def reopen(cls, out_dir, backend=None, device=None) -> "GenerationRun":
        out = Path(out_dir)
        _read_settings(out)  # a clear error for a folder that is not a generation, before locking it
        check_device(device, "--device")
        lock = _lock(out)
        try:
            return cls._reopen_locked(out, lock, backend, device)
        except BaseException:
            lock.close()
            raise

    @classmethod
    def _reopen_locked(cls, out: Path, lock, backend, device) -> "GenerationRun":
        settings = _read_settings(out)
        require_soundfile()
        if settings.get("complete"):
            with contextlib.suppress(OSError):
                (out / STATE).unlink()  # left behind by a kill just after the run was marked complete
            raise FileExistsError(f"{out}: this generation is already complete; nothing to resume")
        if not (out / STATE).is_file():
            raise FileNotFoundError(f"{out}: no {STATE} to resume from (the run died before its first save); "
                                    "start it again in a new --out")
        ckpt_path = Path(settings["checkpoint"])
        if not ckpt_path.is_file() or file_sha256(ckpt_path) != settings["checkpoint_sha256"]:
            raise ValueError(f"{out}: its checkpoint {ckpt_path} is missing or has changed since the run started; "
                             "cannot resume exactly")
        _ensure_open_files(settings["n_seq"])
        model = model_from_checkpoint(load_checkpoint(ckpt_path), ckpt_path)
        gen = Generator(model, settings["n_seq"], temperature=settings["temperature"], argmax=settings["argmax"],
                        h0=settings["h0"], seed=settings["seed"], backend=backend or settings["backend"], device=device)
        saved = _read_state(out / STATE, settings["n_seq"])
        try:
            gen.load_state_dict(saved["generator"])
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            raise ValueError(f"{out / STATE}: damaged ({type(e).__name__}: {e}); cannot resume, "
                             "start the generation again in a new --out") from None
        run = cls(out, settings, gen, saved["stats"], lock)
        total = settings["prime_samples"] + settings["n_samples"]
        if run.stats["written"] < total:
            _check_disk(out, settings["n_seq"], total, total - run.stats["written"])
            try:
                run._truncate_parts()
            except BaseException:
                run.close_files_only()
                raise
        return run  # else generation was done: run() goes straight to the (resumable) finalize

    def _open_parts(self, levels: Optional[torch.Tensor]) -> None:
        sr = self.settings["sample_rate"]
        self.files = []
        for p in self.parts:  # one at a time: those opened before a failure are in self.files, to close
            self.files.append(AudioStreamWriter(p, sr, "wav"))
        if levels is not None:  # the recording being continued starts each file, as the model heard it
            audio = self.gen.to_audio(levels[None]).repeat(self.settings["n_seq"], axis=0)
            self._write(audio)

    def _truncate_parts(self) -> None:
        """Drop whatever was written after the last saved state: it is generated again, identically."""
        sr = self.settings["sample_rate"]
        written = self.stats["written"]
        self.files = []
        for p in self.parts:
            self.files.append(AudioStreamWriter(p, sr, "wav", append=True, keep_frames=written))

    def close_files_only(self) -> None:
        for f in self.files:
            f.close()
        self.files = []

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
        try:
            return self._run(progress, on_chunk)
        finally:
            self.close()

    def _run(self, progress, on_chunk) -> List[Path]:
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
        """Part files -> final files (level applied, streamed in blocks); mark the run complete.

        Resumable: each part file is removed only after its final file is complete (written to a
        temporary file, fsynced and renamed), so a part file still there means its final file must
        be (re)made, and a part file gone means its final file is done.
        """
        self.close_files_only()
        finals, notes = [], []
        for i, part in enumerate(self.parts):
            gain, note = self._gain(i)
            if note:
                notes.append(note)
                warnings.warn(note)
            final = part.with_name(f"seq_{i:03d}.{self.settings['audio_format']}")
            if part.exists():
                _copy_with_gain(part, final, gain, self.settings["audio_format"])
                part.unlink()
            elif not final.is_file():
                raise FileNotFoundError(f"{self.out}: both {part.name} and {final.name} are missing; sequence {i} "
                                        "is lost, start the generation again in a new --out")
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


SETTINGS_KEYS = ("checkpoint", "checkpoint_sha256", "seconds", "n_samples", "sample_rate", "n_seq", "temperature",
                 "argmax", "h0", "seed", "prime_samples", "audio_format", "normalize", "chunk_samples",
                 "save_every_samples", "backend")


def _read_settings(out: Path) -> dict:
    path = out / SETTINGS
    if not path.is_file():
        raise FileNotFoundError(f"{out}: not a fastsrnn generation directory (no {SETTINGS})")
    try:
        settings = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: damaged, not readable JSON ({e}); cannot resume this generation") from None
    if not isinstance(settings, dict) or settings.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fastsrnn generation settings file (damaged, or written by something else)")
    missing = [k for k in SETTINGS_KEYS if k not in settings]
    if missing:
        raise ValueError(f"{path}: damaged, missing {', '.join(missing)}; cannot resume this generation")
    if not isinstance(settings["n_seq"], int) or settings["n_seq"] < 1:
        raise ValueError(f"{path}: damaged, n_seq is {settings['n_seq']!r}; cannot resume this generation")
    return settings


def _read_state(path: Path, n_seq: int) -> dict:
    """state.pt, checked: a damaged file is named, never a raw unpickling error."""
    hint = "cannot resume; start the generation again in a new --out"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: damaged, torch.load failed ({type(e).__name__}: {e}); {hint}") from None
    try:
        stats = saved["stats"]
        ok = isinstance(saved["generator"], dict) and isinstance(stats["written"], int) and stats["written"] >= 0
        ok = ok and all(isinstance(stats[k], list) and len(stats[k]) == n_seq for k in ("sum", "sumsq", "peak"))
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{path}: damaged (missing {e}); {hint}") from None
    if not ok:
        raise ValueError(f"{path}: damaged (bad generator state or level statistics); {hint}")
    return saved


def _check_new_output(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a directory")
    if (out / SETTINGS).exists():
        raise FileExistsError(f"--out {out} already holds a generation; use 'fastsrnn generate --resume {out}' "
                              "to continue it, or choose another --out")
    if out.is_dir():
        other = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
        if other:
            shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
            raise FileExistsError(f"--out {out} is not empty ({shown}) and is not a fastsrnn generation; "
                                  "choose an empty or new directory")


def _lock(out: Path) -> contextlib.ExitStack:
    """Hold out's lock (fastsrnn.outlock) until the returned stack is closed; OutputLocked if taken."""
    stack = contextlib.ExitStack()
    stack.enter_context(locked_output(out, LOCK_WHAT))
    return stack


def _check_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be > 0 and finite, got {value}")
    return value


def _check_int(name: str, value, minimum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_temperature(temperature) -> None:
    vals = temperature if isinstance(temperature, (list, tuple)) else [temperature]
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"--temperature must be a number or one number per sequence, got {temperature!r}")
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"--temperature must be finite and > 0 (use --argmax for greedy), got {temperature!r}")


def _ensure_open_files(n_seq: int) -> None:
    """Every sequence keeps its part file open: make sure the process may open that many files.

    Raises the soft RLIMIT_NOFILE up to the hard limit when that is enough, else refuses.
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 64
    need = n_seq + open_now + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard == resource.RLIM_INFINITY or hard >= need:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
            return
    fits = max(soft - open_now - FD_MARGIN, 0)
    raise ValueError(f"--n-seq {n_seq} keeps {n_seq} files open at once, but the open-file limit here is {soft} "
                     f"(hard limit {hard}); raise it (e.g. 'ulimit -n {need}', which needs a hard limit >= {need}) "
                     f"or generate at most {fits} sequences per run")


def _check_disk(out: Path, n_seq: int, total: int, remaining: int) -> None:
    """Refuse, with numbers, a generation whose files cannot fit on out's disk.

    Peak use: the 16-bit part files (``remaining`` more samples each) plus one final file being written.
    """
    probe = out.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = 2 * n_seq * remaining + 2 * total + 44 * (n_seq + 1)
    if need > free:
        raise ValueError(f"--out {out}: {n_seq} sequence(s) of {total:,} samples need about {need / 1e9:,.3g} GB "
                         f"more (16-bit part files, then one finished file at a time) but {probe} has "
                         f"{free / 1e9:,.3g} GB free; generate fewer --seconds or --n-seq, or choose another --out")

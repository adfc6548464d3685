"""Long generations on disk: streamed in chunks, saved periodically, resumable after a kill.

Layout of an output directory:
  generation.json        the settings (and, once finished, what was made)
  seq_000.part.wav ...   audio being written: always a valid WAV up to the last written chunk
  state.pt               generator state + samples written + level statistics (atomic)
  seq_000.wav|flac ...   the finished files (level applied), written when the run completes
Memory is bounded by one chunk: nothing grows with the length generated.

One run at a time: a run holds the folder's lock (fastsrnn.outlock) from create/reopen to the
end of run().

Across processes (``torchrun --nproc-per-node N -m fastsrnn generate ...``, WORLD_SIZE > 1): the
n_seq sequences are split into N contiguous ranges, one per rank, and each rank writes its own
seq_NNN files and its own ``state.rank{r}.pt``; rank 0 alone holds the lock and writes
generation.json (with ``world_size``). Sequence i is the same audio whatever N: every rank draws
the full n_seq-wide initial state and uniforms from the one seeded RNG and keeps its rows
(:class:`RowsGenerator`). A resume must use the same N. The ranks meet (gloo) only at the start
and at the end. Finalizing is resumable: each part file is removed only once its final file is
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

from fastsrnn import env
from fastsrnn.atomic import atomic_path, atomic_write_text
from fastsrnn.checkpoint import load_checkpoint, model_from_checkpoint
from fastsrnn.data.audio import AudioStreamWriter, require_soundfile
from fastsrnn.data.prepare import file_sha256
from fastsrnn.generation.generator import Generator, check_device, check_int, check_temperature, prime_levels
from fastsrnn.generation.memory import check_generation_fits
from fastsrnn.generation.precision import precision_options, recorded_dataset
from fastsrnn.model import RNNState
from fastsrnn.outlock import LOCK_NAME, locked_output

SETTINGS, STATE = "generation.json", "state.pt"
FORMAT = "fastsrnn-generation"
PEAK_TARGET, MAX_GAIN, SILENT_RMS = 0.9, 10.0, 1e-3
LOCK_WHAT = "fastsrnn generate"
FD_MARGIN = 16  # file descriptors beyond the part files and those open now: final copy, state, settings


class GenerationRun:
    """One output directory's generation: create it, or reopen it to resume."""

    def __init__(self, out_dir: Path, settings: dict, gen: Generator, stats: dict,
                 lock: Optional[contextlib.ExitStack] = None, rows: Optional[range] = None, world: int = 1,
                 rank: int = 0):
        self.out, self.settings, self.gen, self.stats = Path(out_dir), settings, gen, stats
        self.world, self.rank = world, rank
        self.rows = range(settings["n_seq"]) if rows is None else rows  # the sequences this process makes
        self.parts = [self.out / f"seq_{i:03d}.part.wav" for i in self.rows]
        self.state_path = _state_path(self.out, world, rank)
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
               fmt="wav", normalize="peak", chunk_seconds=1.0, save_every_seconds=10.0, precision="fp32",
               check_precision=True, precision_data=None) -> "GenerationRun":
        """precision: fp32, bf16 or int8 (checked against fp32 first unless ``check_precision`` is
        False) on ``precision_data`` (None: the dataset the checkpoint's run folder records, else the
        model's own music); kept in the settings, so a resume uses the same."""
        out = Path(out_dir)
        seconds = _check_float("--seconds", seconds)
        chunk_seconds = _check_float("--chunk-seconds", chunk_seconds)
        save_every_seconds = _check_float("--save-every", save_every_seconds)
        if prime_seconds is not None:
            if prime is None:
                raise ValueError("--prime-seconds needs --prime (the recording to continue)")
            prime_seconds = _check_float("--prime-seconds", prime_seconds)
        n_seq = check_int("--n-seq", n_seq, 1)
        check_int("--seed", seed)
        _check_precision_name(precision)
        check_temperature(temperature, "--temperature", "--argmax")
        if fmt not in ("wav", "flac"):
            raise ValueError(f"--format must be 'wav' or 'flac', got {fmt!r}")
        if normalize not in ("peak", "none"):
            raise ValueError(f"--normalize must be 'peak' or 'none', got {normalize!r}")
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"--out {out} is a file, not a directory")
        world, rank = init_ranks()
        rows = split_rows(n_seq, world, rank)
        if rank == 0:  # the other ranks may already see rank 0's files
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
        check_generation_fits(model.cfg, len(rows), device)
        _ensure_open_files(len(rows))
        levels = prime_levels(prime, model.cfg, prime_seconds) if prime is not None else None
        prime_samples = 0 if levels is None else int(levels.numel())
        _check_disk(out, n_seq, prime_samples + n_samples, prime_samples + n_samples)
        if precision != "fp32" and precision_data is None:
            precision_data = recorded_dataset(ckpt_path)
        gen = _generator(model, n_seq, rows, temperature=temperature, argmax=argmax, h0=h0, seed=seed,
                         backend=backend, device=device, prime=levels, precision=precision,
                         check_precision=check_precision, precision_data=precision_data)
        settings = {"format": FORMAT, "version": 1, "checkpoint": str(ckpt_path),
                    "checkpoint_sha256": file_sha256(ckpt_path),
                    "seconds": seconds, "n_samples": n_samples, "sample_rate": sr, "n_seq": n_seq,
                    "temperature": temperature, "argmax": argmax, "h0": h0, "seed": seed,
                    "prime": None if prime is None else str(Path(prime).resolve()), "prime_seconds": prime_seconds,
                    "prime_samples": prime_samples, "audio_format": fmt,
                    "normalize": normalize, "chunk_samples": int(chunk_seconds * sr),
                    "save_every_samples": int(save_every_seconds * sr), "backend": gen.backend_name,
                    "precision": precision, "precision_data": None if precision_data is None else str(precision_data),
                    "precision_check": _check_record(gen), "complete": False}
        if world > 1:
            settings["world_size"] = world
        lock, err = None, None
        if rank == 0:
            try:
                lock = _lock(out)
                _check_new_output(out)
                atomic_write_text(out / SETTINGS, json.dumps(settings, indent=2))
            except BaseException as e:
                if lock is not None:
                    lock.close()
                err = e
        _raise_if_any_failed(world, err, "starting the generation")  # the others wait for rank 0's folder
        try:
            n = len(rows)
            stats = {"written": 0, "sum": [0.0] * n, "sumsq": [0.0] * n, "peak": [0.0] * n}
            run = cls(out, settings, gen, stats, lock, rows, world, rank)
            err = None
            try:
                run._open_parts(levels)
                run.save_state()
            except BaseException as e:
                err = e
            try:
                _raise_if_any_failed(world, err, "starting the generation")
            except BaseException:  # nothing half-made: the folder can be used again
                run.close_files_only()
                for p in [*run.parts, run.state_path] + ([out / SETTINGS] if rank == 0 else []):
                    with contextlib.suppress(OSError):
                        p.unlink()
                raise
        except BaseException:
            if lock is not None:
                lock.close()
            raise
        return run

    @classmethod
    def reopen(cls, out_dir, backend=None, device=None, precision=None, check_precision=True) -> "GenerationRun":
        """precision: None (the stored one) or the stored one; another is refused (the audio would change)."""
        out = Path(out_dir)
        stored = _read_settings(out).get("precision", "fp32")  # read first: a clear error for a non-generation
        if precision is not None and precision != stored:
            raise ValueError(f"{out}: this generation was started with precision {stored}; resuming it with "
                             f"{precision} would change its audio midway. Resume with --precision {stored} (or without "
                             "--precision), or start a new generation in another --out")
        check_device(device, "--device")
        world, rank = init_ranks()
        lock, err = None, None
        if rank == 0:
            try:
                lock = _lock(out)
            except BaseException as e:
                err = e
        _raise_if_any_failed(world, err, "resuming the generation")
        run, err = None, None
        try:
            run = cls._reopen_locked(out, lock, backend, device, world, rank, check_precision)
        except BaseException as e:
            err = e
        try:
            _raise_if_any_failed(world, err, "resuming the generation")
        except BaseException:
            if run is not None:
                run.close_files_only()
            if lock is not None:
                lock.close()
            raise
        return run

    @classmethod
    def _reopen_locked(cls, out: Path, lock, backend, device, world: int = 1, rank: int = 0,
                       check_precision: bool = True) -> "GenerationRun":
        settings = _read_settings(out)
        require_soundfile()
        if settings.get("complete"):
            if rank == 0:  # left behind by a kill just after the run was marked complete
                for p in [out / STATE, *out.glob("state.rank*.pt")]:
                    with contextlib.suppress(OSError):
                        p.unlink()
            raise FileExistsError(f"{out}: this generation is already complete; nothing to resume")
        started = settings.get("world_size", 1)
        if started != world:
            how = ("without torchrun" if started == 1 else
                   f"under 'torchrun --nproc-per-node {started}' (one process per {started} GPU(s))")
            raise ValueError(f"{out}: this generation was started by {started} process(es) and is resumed by {world}; "
                             f"each process saved its own sequences' state, so resume it {how}")
        rows = split_rows(settings["n_seq"], world, rank)
        state_path = _state_path(out, world, rank)
        if not state_path.is_file():
            raise FileNotFoundError(f"{out}: no {state_path.name} to resume from (the run died before its first "
                                    "save); start it again in a new --out")
        ckpt_path = Path(settings["checkpoint"])
        if not ckpt_path.is_file() or file_sha256(ckpt_path) != settings["checkpoint_sha256"]:
            raise ValueError(f"{out}: its checkpoint {ckpt_path} is missing or has changed since the run started; "
                             "cannot resume exactly")
        _ensure_open_files(len(rows))
        model = model_from_checkpoint(load_checkpoint(ckpt_path), ckpt_path)
        gen = _generator(model, settings["n_seq"], rows, temperature=settings["temperature"],
                         argmax=settings["argmax"], h0=settings["h0"], seed=settings["seed"],
                         backend=backend or settings["backend"], device=device,
                         precision=settings.get("precision", "fp32"), check_precision=check_precision,
                         precision_data=_resume_precision_data(settings.get("precision_data")))
        saved = _read_state(state_path, len(rows))
        try:
            gen.load_state_dict(saved["generator"])
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            raise ValueError(f"{state_path}: damaged ({type(e).__name__}: {e}); cannot resume, "
                             "start the generation again in a new --out") from None
        run = cls(out, settings, gen, saved["stats"], lock, rows, world, rank)
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
            audio = self.gen.to_audio(levels[None]).repeat(len(self.parts), axis=0)
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
        with atomic_path(self.state_path) as tmp:
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
        progress = progress and self.rank == 0  # one bar: rank 0's (the ranks go at the same pace)
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
        finals, notes, err = [], [], None
        try:
            for j, part in enumerate(self.parts):
                i = self.rows[j]
                gain, note = self._gain(j)
                if note:
                    notes.append(note)
                    warnings.warn(note)
                final = part.with_name(f"seq_{i:03d}.{self.settings['audio_format']}")
                if part.exists():
                    _copy_with_gain(part, final, gain, self.settings["audio_format"])
                    part.unlink()
                elif not final.is_file():
                    raise FileNotFoundError(f"{self.out}: both {part.name} and {final.name} are missing; sequence "
                                            f"{i} is lost, start the generation again in a new --out")
                finals.append(final)
        except BaseException as e:
            err = e
        mine = ([f.name for f in finals], notes, [self._gain(j)[0] for j in range(len(finals))])
        every = _all_gather(self.world, (None if err is None else f"{type(err).__name__}: {err}", mine))
        if err is not None:
            raise err
        _raise_failed(every, "finishing the generation")
        self.settings.update(complete=True, files=[n for _, m in every for n in m[0]],
                             notes=[n for _, m in every for n in m[1]], gains=[g for _, m in every for g in m[2]])
        if self.rank == 0:
            atomic_write_text(self.out / SETTINGS, json.dumps(self.settings, indent=2))
        _all_gather(self.world, None)  # generation.json says complete before any rank's state goes
        self.state_path.unlink()
        return finals

    def _gain(self, j: int):
        """Peak normalization (the paper's clips were normalized), capped so silence stays silence.

        j: the index among this process's sequences (self.rows[j] is the sequence's number).
        """
        n = max(self.stats["written"], 1)
        mean = self.stats["sum"][j] / n
        rms = max(self.stats["sumsq"][j] / n - mean * mean, 0.0) ** 0.5
        note = None
        if rms < SILENT_RMS:
            note = (f"sequence {self.rows[j]} is near-silent (RMS {rms:.2e}); try another seed, temperature or "
                    "checkpoint")
        peak = self.stats["peak"][j]
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


# ---- several processes (torchrun) ------------------------------------------------------------
def init_ranks() -> tuple:
    """(world, rank) from torchrun's variables; joins a gloo process group (CPU, for the few meetings)
    when WORLD_SIZE > 1 and none is set up yet."""
    world, rank, _ = env.torchrun_ranks()
    if rank >= world:
        raise ValueError(f"RANK {rank} is not below WORLD_SIZE {world}")
    if world > 1:
        import torch.distributed as dist

        if not dist.is_available():
            raise RuntimeError(f"WORLD_SIZE={world} but this torch has no torch.distributed; run one process")
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        if dist.get_world_size() != world or dist.get_rank() != rank:
            raise RuntimeError(f"the process group ({dist.get_rank()} of {dist.get_world_size()}) disagrees with "
                               f"RANK {rank} / WORLD_SIZE {world}")
    return world, rank


def split_rows(n_seq: int, world: int, rank: int) -> range:
    """The sequences rank ``rank`` of ``world`` generates: a contiguous range, sizes differing by at most one."""
    if n_seq < world:
        raise ValueError(f"--n-seq {n_seq} is fewer than the {world} processes: give each process at least one "
                         f"sequence (--n-seq >= {world}) or run fewer processes")
    return range(rank * n_seq // world, (rank + 1) * n_seq // world)


def _state_path(out: Path, world: int, rank: int) -> Path:
    return out / (STATE if world == 1 else f"state.rank{rank}.pt")


def _all_gather(world: int, obj) -> list:
    """obj from every rank, in rank order (a meeting of all the ranks); [obj] for one process."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    every = [None] * world
    dist.all_gather_object(every, obj)
    return every


def _raise_failed(every: list, what: str) -> None:
    bad = [(r, e[0]) for r, e in enumerate(every) if e[0] is not None]
    if bad:
        raise RuntimeError(f"{what}: " + "; ".join(f"rank {r} failed: {m}" for r, m in bad))


def _raise_if_any_failed(world: int, err: Optional[BaseException], what: str) -> None:
    """Every rank learns whether any failed, and raises then (its own error where it has one)."""
    every = _all_gather(world, (None if err is None else f"{type(err).__name__}: {err}", None))
    if err is not None:
        raise err
    _raise_failed(every, what)


class RowsGenerator(Generator):
    """Rows ``rows`` of a ``n_seq_total``-sequence generation, bit for bit those rows of
    ``Generator(model, n_seq_total, ...)`` (same backend and device): the RNG draws the full
    n_seq_total-wide initial state and (n_frames, n_seq_total, F) uniforms per chunk, and this
    generator keeps its rows. temperature: a number or one per sequence of all n_seq_total.
    """

    def __init__(self, model, rows: range, n_seq_total: int, *, temperature=1.0, h0: str = "learned",
                 prime: Optional[torch.Tensor] = None, **options):
        if not (0 <= rows.start < rows.stop <= n_seq_total and rows.step == 1):
            raise ValueError(f"rows {rows} must be a non-empty contiguous range within the {n_seq_total} sequences")
        if isinstance(temperature, (list, tuple)):
            if len(temperature) != n_seq_total:
                raise ValueError(f"temperature: one per sequence expected ({n_seq_total}), got {len(temperature)}")
            temperature = list(temperature[rows.start:rows.stop])
        super().__init__(model, len(rows), temperature=temperature, h0=h0, **options)
        self.rows, self.n_seq_total = rows, n_seq_total
        self.rng = torch.Generator().manual_seed(self.seed)  # again: draw the full-width state from the start
        with torch.no_grad():
            full = self.model.initial_state(n_seq_total, h0, self.rng)
            keep = slice(rows.start, rows.stop)
            self.state.rnn = RNNState(full.h[:, keep].contiguous(),
                                      None if full.c is None else full.c[:, keep].contiguous())
            if prime is not None:
                self._prime(prime)

    @torch.no_grad()
    def _uniforms(self, n_frames: int) -> torch.Tensor:
        """This rank's rows of the whole run's (n_frames, M, F) draw: the same numbers as one process."""
        u = torch.rand(n_frames, self.n_seq_total, self.cfg.frame_size, generator=self.rng)
        return u[:, self.rows.start:self.rows.stop].contiguous()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "rows": [self.rows.start, self.rows.stop], "n_seq_total": self.n_seq_total}

    def load_state_dict(self, d: dict) -> None:
        if d.get("rows") != [self.rows.start, self.rows.stop] or d.get("n_seq_total") != self.n_seq_total:
            raise ValueError(f"generation state is for sequences {d.get('rows')} of {d.get('n_seq_total')}, this "
                             f"generator makes [{self.rows.start}, {self.rows.stop}) of {self.n_seq_total}")
        super().load_state_dict(d)


def _generator(model, n_seq: int, rows: range, **options) -> Generator:
    """One process's generator: the plain one for all the sequences, else a RowsGenerator for its rows."""
    if len(rows) == n_seq:
        return Generator(model, n_seq, **options)
    return RowsGenerator(model, rows, n_seq, **options)


def _check_precision_name(precision) -> None:
    try:
        precision_options(precision)
    except ValueError as e:
        raise ValueError(f"--{e}") from None


def _resume_precision_data(recorded: Optional[str]) -> Optional[str]:
    """The guard's data on resume: the recorded dataset, or (moved or deleted since) the model's own
    music, with a warning: a missing dataset must not block a resume that the guard passed once."""
    if recorded is None or Path(recorded).exists():
        return recorded
    warnings.warn(f"--precision guard: its dataset {recorded} is gone; measuring on the model's own music instead",
                  stacklevel=3)
    return None


def _check_record(gen: Generator) -> Optional[dict]:
    """The guard's numbers for generation.json (None when it did not run)."""
    c = gen.precision_check
    return None if c is None else {"data": c.data, "backend": c.backend, "nll_fp32_bits": c.nll_fp32,
                                   "nll_bits": c.nll, "delta_bits": c.delta, "limit_bits": c.limit}


def _check_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be > 0 and finite, got {value}")
    return value


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

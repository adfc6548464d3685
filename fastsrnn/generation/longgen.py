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

This module drives a run; its parts live beside it: rundir (the settings and state files, the
lock), preflight (argument, open-file and disk checks), ranks (torchrun: rows split, meetings,
RowsGenerator) and finish (finalizing).
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch

from fastsrnn.atomic import atomic_path, atomic_write_text
from fastsrnn.checkpoint import load_checkpoint, model_from_checkpoint
from fastsrnn.data.audio import AudioStreamWriter, require_soundfile
from fastsrnn.data.manifest import file_sha256
from fastsrnn.generation import finish
from fastsrnn.generation.finish import _copy_with_gain
from fastsrnn.generation.generator import Generator, check_device, prime_levels
from fastsrnn.generation.memory import check_generation_fits
from fastsrnn.generation.precision import recorded_dataset
from fastsrnn.generation.preflight import _check_disk, _ensure_open_files, _resume_precision_data
from fastsrnn.generation.ranks import _generator, _raise_if_any_failed, init_ranks, split_rows
from fastsrnn.generation.rundir import (
    SETTINGS,
    STATE,
    _check_new_output,
    _lock,
    _read_settings,
    _read_state,
    _state_path,
    new_record,
)
from fastsrnn.generation.settings import GenerationSettings


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
    def create(cls, checkpoint, out_dir, settings: GenerationSettings, *, backend=None, device=None,
               check_precision=True) -> "GenerationRun":
        """settings: what to generate (checked when made); backend, device: where (they may change on
        a resume). A precision other than fp32 is checked against fp32 first unless ``check_precision``
        is False, on ``settings.precision_data`` (None: the dataset the checkpoint's run folder
        records, else the model's own music); the settings are kept, so a resume uses the same."""
        if not isinstance(settings, GenerationSettings):
            raise TypeError(f"settings must be a GenerationSettings, got {type(settings).__name__}")
        out, s = Path(out_dir), settings
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"--out {out} is a file, not a directory")
        world, rank = init_ranks()
        rows = split_rows(s.n_seq, world, rank)
        if rank == 0:  # the other ranks may already see rank 0's files
            _check_new_output(out)  # again under the lock, below: this one fails before the model is loaded
        check_device(device, "--device")
        require_soundfile()  # the part files need it: say so before the model is loaded
        ckpt_path = Path(checkpoint).resolve()
        model = model_from_checkpoint(load_checkpoint(ckpt_path), ckpt_path)
        sr, F = model.cfg.sample_rate, model.cfg.frame_size
        n_samples = int(round(s.seconds * sr))
        if n_samples < F:
            raise ValueError(f"--seconds {s.seconds:g} is under one frame: the minimum is {F} samples = "
                             f"{F / sr:g} s at {sr} Hz")
        check_generation_fits(model.cfg, len(rows), device)
        _ensure_open_files(len(rows))
        levels = prime_levels(s.prime, model.cfg, s.prime_seconds) if s.prime is not None else None
        prime_samples = 0 if levels is None else int(levels.numel())
        _check_disk(out, s.n_seq, prime_samples + n_samples, prime_samples + n_samples)
        if s.precision != "fp32" and s.precision_data is None:
            s = replace(s, precision_data=recorded_dataset(ckpt_path))
        gen = _generator(model, s.n_seq, rows, backend=backend, device=device, prime=levels,
                         check_precision=check_precision, **s.generator_options())
        settings = new_record(s, ckpt_path, sr, n_samples, prime_samples, gen)
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
        stored = GenerationSettings.from_dict(_read_settings(out)).precision  # first: clear for a non-generation
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
        options = GenerationSettings.from_dict(settings).generator_options()
        options["precision_data"] = _resume_precision_data(options["precision_data"])
        gen = _generator(model, settings["n_seq"], rows, backend=backend or settings["backend"], device=device,
                         check_precision=check_precision, **options)
        saved = _read_state(state_path, len(rows), settings["prime_samples"], settings["n_samples"])
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
        # longgen._copy_with_gain is looked up here, at call time: the fault tests patch it on this module
        return finish.finalize(self, _copy_with_gain)

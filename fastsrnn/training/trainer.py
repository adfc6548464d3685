"""Training: truncated BPTT over the chunks of a prepared dataset, exact resume, clips at checkpoints.

The Dadabots setup (docs/DESIGN.md §2): Adam lr 1e-3, gradients clipped element-wise to
[-1, 1], batches of chunks cut into sub-sequences of 64 frames with the RNN state carried
(detached) across the sub-sequences of the same chunks; one optimizer step per sub-sequence.

Run directory: ``RUN/config.json``, ``RUN/checkpoints/{last,best}.pt``, ``RUN/metrics.jsonl``,
``RUN/samples/<step>/clip_XX.wav``, ``RUN/summary.json``. A checkpoint holds everything the loop
carries (weights, Adam state, position, RNN state, RNG states), so a run killed at any moment
continues from ``last.pt`` to bit-identical weights.

Speed options (off by default, so the default loop is plain fp32 eager): ``amp='bf16'`` runs the
forward and the loss under ``torch.autocast(device, bfloat16)`` with fp32 master weights, fp32
Adam and an fp32 carried RNN state; ``compile=True`` runs the forward through ``torch.compile``
(a compile failure is a warning and the step runs eagerly). ``fastsrnn bench --train`` times them.

Shapes: B chunks per batch, L samples per chunk, F frame size, T samples per sub-sequence.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import shlex
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch

from fastsrnn import env
from fastsrnn.atomic import atomic_write_text
from fastsrnn.backends import ALIASES, BACKENDS
from fastsrnn.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from fastsrnn.config import PRESETS, SampleRNNConfig
from fastsrnn.model import RNNState, SampleRNN, nll_bits
from fastsrnn.outlock import LOCK_NAME, locked_output
from fastsrnn.training.clip_scores import ClipScorer
from fastsrnn.training.data import (
    ChunkSet,
    chunk_nll,
    data_path,
    describe,
    epoch_permutation,
    equal_length_train,
    load_split,
    n_subsequences,
    subsequence,
    with_context,
)
from fastsrnn.training.dist import Dist

LN2 = 0.6931471805599453
DEFAULT_PRESET = "dadabots-2tier"
# Changing these would give the saved position (batch, sub-sequence, RNN state) another meaning.
RUN_DEFINING = ("batch_size", "tbptt", "seed")
CLIP_BACKENDS = ("auto",) + BACKENDS + tuple(ALIASES)
FLOAT_OPTIONS = ("lr", "grad_clip", "clip_seconds", "clip_temperature")
AMP_MODES = ("off", "bf16")


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN or infinite; nothing was saved after the last good checkpoint."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, ...); the previous one is intact."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT stopped the run after saving last.pt. exit_code: 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 128  # B: chunks per batch (the paper's 128), global over DDP ranks
    tbptt: int = 64  # frames per truncated-BPTT sub-sequence (64 x F=16 = 1,024 samples)
    lr: float = 1e-3  # Adam learning rate
    grad_clip: float = 1.0  # gradients clipped element-wise to [-grad_clip, grad_clip]; 0 = off
    max_steps: int = 100_000  # optimizer steps in all (one per sub-sequence)
    checkpoint_every: int = 1000  # steps between last.pt writes (and clips)
    valid_every: int = 0  # steps between validations; 0 = at every checkpoint
    n_clips: int = 10  # clips generated at each checkpoint (the paper: 10); 0 = none
    clip_seconds: float = 30.0  # length of each clip (the paper: 30 s)
    clip_h0: str = "random"  # initial RNN state of clips: random (more varied, the paper), learned, zeros
    clip_temperature: float = 1.0  # sampling temperature of clips
    clip_backend: str = "auto"  # generation backend for clips (see 'fastsrnn backends')
    seed: int = 0  # weights init and chunk order
    device: str = "auto"  # 'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...
    num_threads: int = 0  # torch CPU threads; 0 = FASTSRNN_NUM_THREADS or torch's default
    amp: str = "off"  # 'bf16': autocast bf16 forward and loss, fp32 master weights and Adam; 'off': fp32
    compile: bool = False  # torch.compile the forward (falls back to eager with a warning if compiling fails)

    def __post_init__(self):
        def need(ok: bool, msg: str):
            if not ok:
                raise ValueError(f"TrainConfig: {msg}")

        for name in ("batch_size", "tbptt", "max_steps", "checkpoint_every"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in FLOAT_OPTIONS:
            need(math.isfinite(getattr(self, name)), f"{name} must be a finite number, got {getattr(self, name)}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.clip_temperature > 0, f"clip_temperature must be > 0, got {self.clip_temperature}")
        need(self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}")
        need(self.valid_every >= 0 and self.n_clips >= 0 and self.num_threads >= 0,
             "valid_every, n_clips and num_threads must be >= 0")
        need(self.clip_seconds > 0, f"clip_seconds must be > 0, got {self.clip_seconds}")
        need(self.clip_h0 in ("random", "learned", "zeros"),
             f"clip_h0 must be random, learned or zeros, got {self.clip_h0!r}")
        need(self.clip_backend in CLIP_BACKENDS,
             f"clip_backend must be one of {', '.join(CLIP_BACKENDS)}, got {self.clip_backend!r}")
        need(self.amp in AMP_MODES, f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        need(isinstance(self.compile, bool), f"compile must be true or false, got {self.compile!r}")

    @property
    def validate_every(self) -> int:
        return self.valid_every or self.checkpoint_every

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Position:
    """Where the loop is: everything besides weights and Adam that an exact resume needs."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch: int = 0  # index of the batch of chunks within the epoch
    sub: int = 0  # index of the next sub-sequence within the batch
    state: Optional[RNNState] = None  # carried RNN state (detached); None = reset to h0
    best_valid: float = float("inf")
    best_step: int = -1
    elapsed: float = 0.0  # seconds of training over all sessions

    def advance(self, n_sub: int, n_batches: int) -> None:
        self.step += 1
        self.sub += 1
        if self.sub == n_sub:  # the chunks are done: next batch starts from h0
            self.sub, self.batch, self.state = 0, self.batch + 1, None
            if self.batch == n_batches:
                self.batch, self.epoch = 0, self.epoch + 1


class TrainForward:
    """The forward and loss of one training step, as ``amp`` and ``compile`` ask:
    ``(inp (B, F + T), state) -> (bits, new state)``.

    amp 'bf16': autocast bf16 around the forward and the loss (cross-entropy runs in fp32 under
    autocast); the parameters, their gradients and Adam stay fp32, and the new RNN state is cast
    back to fp32, so checkpoints hold the same dtypes whatever the setting. compile: the model's
    forward through ``torch.compile``; the first call compiles, and a failure there is a warning,
    after which every step runs eagerly (nothing has changed: the forward has no side effects).
    With both off this is exactly ``nll_bits(model(inp, state))``, bit for bit.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, amp: str = "off", compile: bool = False):
        if amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
        self.model, self.device, self.amp = model, torch.device(device), amp
        self.compiled = torch.compile(model) if compile else None
        self.compile_ok = False  # the compiled forward has run once
        self.compile_error: Optional[str] = None

    def autocast(self):
        if self.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _model(self, inp: torch.Tensor, state: RNNState):
        if self.compiled is not None:
            try:
                out = self.compiled(inp, state)
                self.compile_ok = True
                return out
            except Exception as e:  # torch.compile raises many kinds (no C++ compiler, an unsupported op, ...)
                if self.compile_ok:  # it compiled and ran before: a real error of this step
                    raise
                self.compile_error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                warnings.warn(f"torch.compile failed ({self.compile_error}); training goes on without it",
                              RuntimeWarning, stacklevel=3)
                self.compiled = None
        return self.model(inp, state)

    def __call__(self, inp: torch.Tensor, state: RNNState, frame_size: int):
        with self.autocast():
            logits, new_state = self._model(inp, state)
            bits = nll_bits(logits, inp[:, frame_size:])
        if self.amp != "off":  # the carried state (and what last.pt saves) stays fp32
            new_state = RNNState(new_state.h.float(), None if new_state.c is None else new_state.c.float())
        return bits.float(), new_state


def grads_finite(params) -> bool:
    """Whether every gradient is finite (one device sync; under DDP the all-reduced gradients,
    so that every rank agrees)."""
    grads = [p.grad for p in params if p.grad is not None]
    return not grads or bool(torch.stack([g.detach().abs().amax().float() for g in grads]).isfinite().all())


def optimizer_step(forward: TrainForward, opt: torch.optim.Optimizer, params, inp: torch.Tensor, state: RNNState,
                   frame_size: int, grad_clip: float, on_bad: Callable[[str], None]):
    """One training step on ``inp`` (B, F + T): forward and loss, backward (of nats; the loss is
    reported in bits), the finite check, element-wise clipping (grad_clip > 0), Adam. on_bad(what)
    must raise: it runs when the loss or the gradients are not finite, before the weights change.
    Returns (loss in bits, the new RNN state, detached)."""
    bits, new_state = forward(inp, state, frame_size)
    opt.zero_grad(set_to_none=True)
    (bits * LN2).backward()
    loss = bits.item()
    if not (math.isfinite(loss) and grads_finite(params)):
        on_bad(f"the loss is {loss}" if not math.isfinite(loss) else
               f"the gradients hold NaN or infinite values (loss {loss:.4f} bits)")
    if grad_clip > 0:
        torch.nn.utils.clip_grad_value_(params, grad_clip)
    opt.step()
    return loss, new_state.detach()


class _Loop:
    """The run's objects: configs, data, model, optimizer, paths, distributed context."""

    def __init__(self, data_dir, run: Path, cfg: SampleRNNConfig, tcfg: TrainConfig, dist: Dist, progress: bool):
        self.run, self.cfg, self.tcfg, self.dist, self.data_dir = run, cfg, tcfg, dist, data_dir
        self.log = print if (progress and dist.rank0) else (lambda *a, **k: None)
        self.device = dist.device(tcfg.device)
        self.tbptt_samples = tcfg.tbptt * cfg.frame_size
        self._load_data(data_dir)
        torch.manual_seed(tcfg.seed)
        self.raw = SampleRNN(cfg).to(self.device)
        self.model = dist.wrap(self.raw)
        self.opt = torch.optim.Adam(self.raw.parameters(), lr=tcfg.lr)
        self.forward = TrainForward(self.model, self.device, tcfg.amp, tcfg.compile)
        self._perm_epoch, self._perm, self._batch_key, self._batch_x = None, None, None, None
        self.pending_clips = None  # (step, CPU weights, epoch) of clips that failed at the last checkpoint
        self.scorer = ClipScorer(data_dir, run, tcfg.checkpoint_every)  # judges the clips against the album
        self.resume_clips = False  # last.pt's clips are missing: write them before training on
        self.stop_signal = None  # SIGTERM/SIGINT received: save and stop after this step

    def _load_data(self, data_dir) -> None:
        train = load_split(data_dir, "train", self.cfg)
        self.train, dropped = equal_length_train(train)  # (N, L)
        self.valid, self.test = load_split(data_dir, "valid", self.cfg), load_split(data_dir, "test", self.cfg)
        N, L = self.train.shape
        self.batch_size = min(self.tcfg.batch_size, N)
        if self.batch_size < self.tcfg.batch_size:
            self.log(f"note: only {N} train chunks, so batches hold {N} chunks instead of {self.tcfg.batch_size}")
        self.local_batch = self.dist.local_batch(self.batch_size)
        self.n_batches = N // self.batch_size  # the last partial batch of an epoch is skipped
        self.n_sub = n_subsequences(L, self.tbptt_samples)
        self.log(describe(train, L, self.valid, self.test, self.cfg.sample_rate)
                 + (f"; {dropped + train.dropped} train chunks of odd length skipped"
                    if dropped + train.dropped else ""))

    def batch_input(self, pos: Position) -> torch.Tensor:
        """This rank's chunks of the current batch with their silence context: (B_local, F + L) int64."""
        if self._perm_epoch != pos.epoch:
            self._perm_epoch, self._perm = pos.epoch, epoch_permutation(self.train.shape[0], self.tcfg.seed, pos.epoch)
        if self._batch_key != (pos.epoch, pos.batch):
            idx = self._perm[pos.batch * self.batch_size:(pos.batch + 1) * self.batch_size]
            idx = self.dist.shard(idx)  # DistributedSampler-like: rank r takes idx[r::world]
            self._batch_key, self._batch_x = ((pos.epoch, pos.batch),
                                              with_context(self.train[idx], self.cfg).to(self.device))
        return self._batch_x

    def step(self, pos: Position) -> float:
        """One optimizer step on the next sub-sequence; returns its loss in bits per sample."""
        x = self.batch_input(pos)
        state = pos.state if pos.state is not None else self.raw.initial_state(x.shape[0])
        inp = subsequence(x, pos.sub, self.tbptt_samples, self.cfg.frame_size)  # (B, F + T)
        loss, pos.state = optimizer_step(self.forward, self.opt, list(self.raw.parameters()), inp, state,
                                         self.cfg.frame_size, self.tcfg.grad_clip,
                                         lambda what: self._diverged(pos.step + 1, what))
        pos.advance(self.n_sub, self.n_batches)
        return loss

    def weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p.detach()).all()) for p in self.raw.parameters())

    def _diverged(self, step: int, what: str) -> None:
        last = self.run / "checkpoints" / "last.pt"
        keep = (f"the last good checkpoint, {last}, is kept" if last.exists() else "no checkpoint was written")
        raise TrainingDiverged(f"training diverged at step {step}: {what} (lr {self.tcfg.lr}); {keep}. "
                               "Lower --lr and resume, or start again in another --out")

    def nll(self, chunks: ChunkSet) -> Optional[float]:
        """Mean bits per sample over whole chunks (all ranks share the work); None if there are none."""
        total, count = chunk_nll(self.raw, chunks, self.tbptt_samples, self.batch_size, self.device,
                                 shard=(self.dist.rank, self.dist.world))
        total, count = self.dist.sum(total, count)
        return total / count if count else None

    # ---- checkpoints -------------------------------------------------------------------
    def save_last(self, pos: Position, clips_pending: bool = False) -> None:
        """last.pt; clips_pending: this step's clips are still to be written (a resume writes them)."""
        h, c = self.dist.gather_state(pos.state)  # every rank's carried state, batch in rank order
        if not self.dist.rank0:
            return
        if not self.weights_finite():  # never replace a good checkpoint with a broken one
            self._diverged(pos.step, "the weights hold NaN or infinite values")
        rng = {"torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            rng["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        self._save(self.run / "checkpoints" / "last.pt", kind="last", optimizer=self.opt.state_dict(),
                   train_config=self.tcfg.to_dict(), step=pos.step, epoch=pos.epoch, batch=pos.batch, sub=pos.sub,
                   rnn_h=h, rnn_c=c, best_valid=pos.best_valid, best_step=pos.best_step,
                   elapsed=pos.elapsed, clips_pending=clips_pending, **rng)

    def _save(self, path: Path, **extra) -> None:
        """save_checkpoint, a failed write (a full disk: torch raises '[enforce fail at
        inline_container.cc] ... unexpected pos' or OSError ENOSPC) turned into a clear error."""
        try:
            save_checkpoint(path, self.raw, **extra)
        except (OSError, RuntimeError) as e:
            raise CheckpointWriteError(
                f"could not write the checkpoint {path} at step {extra['step']}: {_write_cause(e, path)}; "
                f"the previous {path.name} is intact. Free some space and resume with:\n"
                f"  {resume_command(self.data_dir, self.run)}") from e

    def restore(self, path: Path) -> Position:
        """Load last.pt into the model and optimizer; returns the saved position (and sets
        ``resume_clips`` when that step's clips were not all written)."""
        ckpt = load_checkpoint(path)
        saved = SampleRNNConfig.from_dict(ckpt["config"])
        if saved != self.cfg:
            raise CheckpointError(f"{path}: made for another model config "
                                  f"({_diff(saved.to_dict(), self.cfg.to_dict())})")
        self.raw.load_state_dict(model_from_checkpoint(ckpt, path).state_dict())
        try:
            self.opt.load_state_dict(ckpt["optimizer"])
            for group in self.opt.param_groups:  # the lr of this session (--lr on resume), not the saved one
                group["lr"] = self.tcfg.lr
            pos = Position(ckpt["step"], ckpt["epoch"], ckpt["batch"], ckpt["sub"], None,
                           float(ckpt["best_valid"]), int(ckpt["best_step"]), float(ckpt["elapsed"]))
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: not a training checkpoint that can be resumed "
                                  f"({type(e).__name__}: {e})") from None
        if pos.batch >= self.n_batches or pos.sub >= self.n_sub:
            raise CheckpointError(f"{path}: stopped at batch {pos.batch}, sub-sequence {pos.sub}, but this dataset "
                                  f"has {self.n_batches} batches of {self.n_sub} sub-sequences: was the run "
                                  "trained on another dataset? Choose another --out")
        if ckpt["rnn_h"] is not None:
            pos.state = self.dist.local_state(ckpt["rnn_h"], ckpt["rnn_c"], self.device)
        self.resume_clips = bool(ckpt.get("clips_pending", False)) and not self.clips_complete(pos.step)
        torch.set_rng_state(ckpt["torch_rng"])
        if "cuda_rng" in ckpt and self.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["cuda_rng"], self.device)
        return pos

    def save_best(self, pos: Position, valid_bits: float) -> None:
        if self.dist.rank0:
            if not self.weights_finite():
                self._diverged(pos.step, "the weights hold NaN or infinite values")
            self._save(self.run / "checkpoints" / "best.pt", kind="best", step=pos.step,
                       valid_bits=valid_bits, train_config=self.tcfg.to_dict())

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


def train(data_dir, out_dir, model_cfg: Union[SampleRNNConfig, str, None] = None,
          train_cfg: Optional[TrainConfig] = None, *, resume: bool = True, progress: bool = True,
          callback: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Train a SampleRNN on the prepared dataset ``data_dir``, writing the run to ``out_dir``.

    model_cfg: a SampleRNNConfig, a preset name, or None (the run's saved config, else
    'dadabots-2tier'); train_cfg: None means the run's saved one, else the defaults.
    resume: continue from ``out_dir/checkpoints/last.pt`` when it exists (else that is an error).
    callback(info) runs after every step (info: step, epoch, train_bits, checkpointed).
    Returns a summary dict (also written to ``out_dir/summary.json``).
    """
    data_dir, run = data_path(data_dir), Path(out_dir)
    _check_run_folder(run)
    dist = Dist.from_env()
    # One process per run folder: rank 0 holds the lock for the whole run (the other ranks are its helpers).
    try:
        with (locked_output(run, "fastsrnn train") if dist.rank0 else contextlib.nullcontext()):
            summary = _train_locked(data_dir, run, model_cfg, train_cfg, dist, resume, progress, callback)
    except TrainingInterrupted:  # every rank stops at the same step (_stop_requested): the group ends cleanly
        dist.close()
        raise
    dist.close()
    return summary


def _train_locked(data_dir: Path, run: Path, model_cfg, train_cfg, dist: Dist, resume: bool, progress: bool,
                  callback) -> Dict[str, Any]:
    # Everything is checked before anything is written: a refused resume leaves the run as it was.
    _check_run_folder(run)
    saved = _read_run_config(run)
    cfg, tcfg = _resolve_configs(run, saved, model_cfg, train_cfg)
    _check_sample_rate(data_dir, cfg)
    fingerprint = _dataset_fingerprint(data_dir)
    last = run / "checkpoints" / "last.pt"
    if last.exists() and not resume:
        raise FileExistsError(f"{run} already holds a training run ({last}); resume it, or choose another --out")
    if saved and saved.get("dataset") and saved["dataset"] != fingerprint and last.exists():
        raise ValueError(f"{run} was trained on another dataset ({saved.get('data')}, not {data_dir}: their chunks "
                         "differ); resume it with its own dataset, or choose another --out")
    if tcfg.num_threads or env.num_threads():
        torch.set_num_threads(tcfg.num_threads or env.num_threads())
    loop = _Loop(data_dir, run, cfg, tcfg, dist, progress)
    pos = loop.restore(last) if last.exists() else Position()
    if dist.rank0:
        _write_run_config(run, cfg, tcfg, data_dir, fingerprint)
        _truncate_metrics(run / "metrics.jsonl", pos.step)
    loop.log(f"model: {cfg.rnn_type} {cfg.n_rnn} x {cfg.dim}, {loop.raw.num_params() / 1e6:.2f} M parameters; "
             f"device {loop.device}; " + (f"resuming at step {pos.step}" if pos.step else "starting"))
    if loop.resume_clips:  # killed between last.pt and its clips: write them from the same weights
        loop.write_clips(pos.step, pos.epoch)
    with _StopOnSignal(loop):
        _run_steps(loop, pos, progress, callback)
    return _finish(loop, pos)


def resume_command(data_dir, run) -> str:
    """The command that continues the run in ``run`` (its options are kept in RUN/config.json)."""
    return f"fastsrnn train {shlex.quote(str(data_dir))} --out {shlex.quote(str(run))}"


class _StopOnSignal:
    """SIGTERM and SIGINT set ``loop.stop_signal``; the loop then saves last.pt after the current
    step and stops (TrainingInterrupted). A second signal of the same kind, received by this
    process, stops at once. A stop set by another rank (``_stop_requested``), or a signal of the
    other kind (Ctrl-C's SIGINT, then the SIGTERM torchrun sends its workers), still saves."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, loop: _Loop):
        self.loop, self.old, self.received = loop, {}, set()

    def _handler(self, signum, frame):
        if signum in self.received:  # asked twice: stop now, without saving
            self._restore()
            raise KeyboardInterrupt
        self.received.add(signum)
        if self.loop.stop_signal is None:  # the first signal names the stop (and the exit code)
            self.loop.stop_signal = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.old[s] = signal.signal(s, self._handler)
        return self

    def _restore(self):
        for s, h in self.old.items():
            signal.signal(s, h)
        self.old = {}

    def __exit__(self, *exc):
        self._restore()
        return False


def _run_steps(loop: _Loop, pos: Position, progress: bool, callback) -> None:
    from tqdm.auto import tqdm

    t = loop.tcfg
    samples_per_step = loop.batch_size * loop.tbptt_samples
    bits_sum, n_bits, t_train = 0.0, 0, 0.0
    with tqdm(total=t.max_steps, initial=pos.step, unit="step", disable=not (progress and loop.dist.rank0),
              desc="train", dynamic_ncols=True) as bar:
        while pos.step < t.max_steps:
            t0 = time.perf_counter()
            bits = loop.step(pos)
            dt = time.perf_counter() - t0
            pos.elapsed += dt
            bits_sum, n_bits, t_train = bits_sum + bits, n_bits + 1, t_train + dt
            bar.update(1)
            bar.set_postfix(bits=f"{bits:.3f}", samples_s=f"{samples_per_step / dt:,.0f}")
            done = pos.step == t.max_steps
            info = {"step": pos.step, "epoch": pos.epoch, "train_bits": bits, "checkpointed": False}
            if pos.step % t.validate_every == 0 or done:
                info["valid_bits"] = _validate(loop, pos, loop.dist.mean(bits_sum / n_bits),  # over the ranks
                                               samples_per_step * n_bits / t_train)
                bits_sum, n_bits, t_train = 0.0, 0, 0.0
            if pos.step % t.checkpoint_every == 0 or done:
                loop.save_last(pos, clips_pending=t.n_clips > 0)
                loop.write_clips(pos.step, pos.epoch)
                info["checkpointed"] = True
            if callback is not None:
                callback(info)
            if _stop_requested(loop):
                if not info["checkpointed"]:
                    loop.save_last(pos)
                name = signal.Signals(loop.stop_signal).name
                last = loop.run / "checkpoints" / "last.pt"
                msg = (f"{name}: stopped at step {pos.step} of {t.max_steps}; saved {last}. "
                       f"Resume with:\n  {resume_command(loop.data_dir, loop.run)}")
                if loop.dist.rank0:
                    print(f"fastsrnn train: {msg}", file=sys.stderr, flush=True)
                raise TrainingInterrupted(msg, loop.stop_signal)


def _stop_requested(loop: _Loop) -> bool:
    """Whether a signal asked the run to stop; under torchrun every rank must agree (save_last is collective)."""
    sig = loop.stop_signal  # read once: the handler may set it at any moment
    if loop.dist.world > 1:
        total, _ = loop.dist.sum(float(sig or 0), 0)
        if total and loop.stop_signal is None:  # another rank's signal
            loop.stop_signal = signal.SIGTERM
        return bool(total)
    return sig is not None


def _validate(loop: _Loop, pos: Position, train_bits: float, samples_per_s: float) -> Optional[float]:
    valid = loop.nll(loop.valid)
    # Without a valid split, the latest weights stand in for the best.
    if valid is None or valid < pos.best_valid:
        pos.best_valid, pos.best_step = (valid if valid is not None else float("inf")), pos.step
        loop.save_best(pos, valid)
    if loop.dist.rank0:
        _append_metrics(loop.run / "metrics.jsonl", {
            "step": pos.step, "epoch": pos.epoch, "train_bits": round(train_bits, 5),
            "valid_bits": None if valid is None else round(valid, 5), "samples_per_s": round(samples_per_s, 1),
            "time": round(pos.elapsed, 2)})
    loop.log(f"step {pos.step}: train {train_bits:.4f} bits, valid "
             + ("-" if valid is None else f"{valid:.4f}") + " bits/sample")
    return valid


def _finish(loop: _Loop, pos: Position) -> Dict[str, Any]:
    """Test NLL of the best checkpoint; summary.json."""
    best = loop.run / "checkpoints" / "best.pt"
    loop.dist.barrier()
    if best.exists():
        loop.raw.load_state_dict(model_from_checkpoint(load_checkpoint(best), best).state_dict())
    test = loop.nll(loop.test)
    summary = {"run_dir": str(loop.run), "steps": pos.step, "epoch": pos.epoch, "best_step": pos.best_step,
               "best_valid_bits": None if pos.best_valid == float("inf") else pos.best_valid, "test_bits": test,
               "best_checkpoint": str(best) if best.exists() else None,
               "last_checkpoint": str(loop.run / "checkpoints" / "last.pt"),
               "samples_dir": str(loop.run / "samples"), "train_seconds": round(pos.elapsed, 2)}
    if loop.dist.rank0:
        _append_metrics(loop.run / "metrics.jsonl", {"step": pos.step, "best_step": pos.best_step, "test_bits": test})
        try:  # matplotlib is the optional 'plot' extra
            from fastsrnn.tools.analysis import plot_metrics

            summary["plot"] = str(plot_metrics(loop.run))
        except ImportError:
            pass
        atomic_write_text(loop.run / "summary.json", json.dumps(summary, indent=2) + "\n")
        loop.log(f"done: best valid {summary['best_valid_bits']} bits at step {pos.best_step}, test {test} bits/sample")
    return summary


# ---- run directory ------------------------------------------------------------------------
def _check_run_folder(run: Path) -> None:
    """A new or empty folder, or a fastsrnn run (RUN/config.json); anything else is refused untouched."""
    if run.exists() and not run.is_dir():
        raise NotADirectoryError(f"{run}: --out must be a folder, and this is a file")
    if not run.is_dir() or (run / "config.json").is_file():
        return
    others = sorted(p.name for p in run.iterdir() if p.name != LOCK_NAME)
    if others:
        raise FileExistsError(f"{run} is not empty and is not a fastsrnn training run (no config.json; it holds "
                              f"{', '.join(others[:5])}{', ...' if len(others) > 5 else ''}); "
                              "choose a new or empty --out folder")


def _dataset_fingerprint(data_dir: Path) -> str:
    """sha256 over the manifest's chunks (file, split, sha256): the same data wherever it lies."""
    from fastsrnn.data.prepare import read_manifest

    h = hashlib.sha256()
    for c in read_manifest(data_dir)["chunks"]:
        h.update(f"{c['file']}\t{c['split']}\t{c['sha256']}\n".encode())
    return h.hexdigest()


def _write_cause(e: BaseException, path: Path) -> str:
    """Why a checkpoint write failed, in words (the disk's free space when it is a full disk)."""
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:,.0f} MiB free on that disk"
    except OSError:
        free = "free space unknown"
    text = f"{type(e).__name__}: {e}"
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"no space left on the device ({free}; {text})"
    if "inline_container" in str(e) or "unexpected pos" in str(e):
        return f"the write was cut short, most likely no space left on the device ({free}; torch: {text})"
    return f"{text} ({free})"


def _read_run_config(run: Path) -> Optional[Dict[str, Any]]:
    path = run / "config.json"
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        return {"model": SampleRNNConfig.from_dict(saved["model"]), "train": saved["train"],
                "data": saved.get("data"), "dataset": saved.get("dataset")}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable run config ({e}); choose another --out") from None


def _resolve_configs(run: Path, saved, model_cfg, train_cfg):
    """The run's model and train configs; a RUN made with another model config is an error."""
    if isinstance(model_cfg, str):
        model_cfg = SampleRNNConfig.from_name(model_cfg)
    cfg = model_cfg or (saved["model"] if saved else PRESETS[DEFAULT_PRESET])
    if saved and saved["model"] != cfg:
        raise ValueError(f"{run} was created with another model config "
                         f"({_diff(saved['model'].to_dict(), cfg.to_dict())}); "
                         "choose another --out, or leave --preset out to continue it")
    tcfg = train_cfg or (TrainConfig.from_dict(saved["train"]) if saved else TrainConfig())
    if saved:
        old = TrainConfig.from_dict(saved["train"]).to_dict()
        bad = {k: (old[k], getattr(tcfg, k)) for k in RUN_DEFINING if old[k] != getattr(tcfg, k)}
        if bad and (run / "checkpoints" / "last.pt").exists():
            raise ValueError(f"{run} was trained with other "
                             f"{', '.join(f'{k}={a} (now {b})' for k, (a, b) in bad.items())}; "
                             "resuming needs the same values: choose another --out to change them")
    return cfg, tcfg


def _diff(a: Dict[str, Any], b: Dict[str, Any]) -> str:
    return ", ".join(f"{k}: {a.get(k)!r} in the run, {b.get(k)!r} now"
                     for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def _check_sample_rate(data_dir: Path, cfg: SampleRNNConfig) -> None:
    from fastsrnn.data.prepare import read_manifest

    sr = int(read_manifest(data_dir)["sample_rate"])
    if sr != cfg.sample_rate:
        raise ValueError(f"{data_dir}: prepared at {sr} Hz but the model config wants {cfg.sample_rate} Hz; "
                         f"re-run 'fastsrnn prepare --sample-rate {cfg.sample_rate}' or change the config")


def _write_run_config(run: Path, cfg: SampleRNNConfig, tcfg: TrainConfig, data_dir: Path, dataset: str) -> None:
    from fastsrnn import __version__

    text = json.dumps({"model": cfg.to_dict(), "train": tcfg.to_dict(), "data": str(data_dir), "dataset": dataset,
                       "fastsrnn_version": __version__}, indent=2)
    atomic_write_text(run / "config.json", text + "\n")


def _append_metrics(path: Path, record: Dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop the records after the checkpoint: the resumed run writes them again."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill mid-write
        if rec.get("step", 0) <= step and "test_bits" not in rec:
            keep.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in keep))

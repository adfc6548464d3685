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
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch

from fastsrnn import env
from fastsrnn.config import SampleRNNConfig
from fastsrnn.data.chunks import ChunkSet, data_path, describe, equal_length_train, load_split
from fastsrnn.model import RNNState, SampleRNN, nll_bits
from fastsrnn.outlock import locked_output
from fastsrnn.training.checkpointing import CheckpointMixin, Position
from fastsrnn.training.clip_scores import ClipScorer
from fastsrnn.training.clips import ClipsMixin
from fastsrnn.training.dist import Dist
from fastsrnn.training.errors import TrainingDiverged, TrainingInterrupted
from fastsrnn.training.run_folder import (
    _check_run_folder,
    _check_sample_rate,
    _dataset_fingerprint,
    _read_run_config,
    _resolve_configs,
    _truncate_metrics,
    _write_run_config,
)
from fastsrnn.training.signals import _StopOnSignal
from fastsrnn.training.steps import _finish, _run_steps
from fastsrnn.training.tbptt import chunk_nll, epoch_permutation, n_subsequences, subsequence, with_context
from fastsrnn.training.train_config import AMP_MODES, TrainConfig, tbptt_samples

LN2 = 0.6931471805599453


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

    def __call__(self, inp: torch.Tensor, state: RNNState, context: int):
        """inp (B, context + T): context = cfg.lookback samples before the first target."""
        with self.autocast():
            logits, new_state = self._model(inp, state)
            bits = nll_bits(logits, inp[:, context:])
        if self.amp != "off":  # the carried state (and what last.pt saves) stays fp32
            new_state = new_state.map(torch.Tensor.float)
        return bits.float(), new_state


def grads_finite(params) -> bool:
    """Whether every gradient is finite (one device sync; under DDP the all-reduced gradients,
    so that every rank agrees)."""
    grads = [p.grad for p in params if p.grad is not None]
    return not grads or bool(torch.stack([g.detach().abs().amax().float() for g in grads]).isfinite().all())


def optimizer_step(forward: TrainForward, opt: torch.optim.Optimizer, params, inp: torch.Tensor, state: RNNState,
                   context: int, grad_clip: float, on_bad: Callable[[str], None]):
    """One training step on ``inp`` (B, S + T), S = ``context`` = cfg.lookback: forward and loss,
    backward (of nats; the loss is reported in bits), the finite check, element-wise clipping
    (grad_clip > 0), Adam. on_bad(what) must raise: it runs when the loss or the gradients are
    not finite, before the weights change.
    Returns (loss in bits, the new RNN state, detached)."""
    bits, new_state = forward(inp, state, context)
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


class _Loop(CheckpointMixin, ClipsMixin):
    """The run's objects: configs, data, model, optimizer, paths, distributed context. Its parts,
    which never import it back: checkpoints (:mod:`fastsrnn.training.checkpointing`), clips
    (:mod:`fastsrnn.training.clips`, :mod:`fastsrnn.training.clip_scores`), the step schedule
    (:mod:`fastsrnn.training.steps`), signals (:mod:`fastsrnn.training.signals`), TBPTT slicing
    (:mod:`fastsrnn.training.tbptt`)."""

    def __init__(self, data_dir, run: Path, cfg: SampleRNNConfig, tcfg: TrainConfig, dist: Dist, progress: bool):
        self.run, self.cfg, self.tcfg, self.dist, self.data_dir = run, cfg, tcfg, dist, data_dir
        self.log = print if (progress and dist.rank0) else (lambda *a, **k: None)
        self.device = dist.device(tcfg.device)
        self.tbptt_samples = tbptt_samples(tcfg.tbptt, cfg)
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
        """This rank's chunks of the current batch with their silence context: (B_local, S + L) int64."""
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
        inp = subsequence(x, pos.sub, self.tbptt_samples, self.cfg.lookback)  # (B, S + T)
        loss, pos.state = optimizer_step(self.forward, self.opt, list(self.raw.parameters()), inp, state,
                                         self.cfg.lookback, self.tcfg.grad_clip,
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
    loop.log(f"model: {cfg.n_tiers}-tier, {cfg.rnn_type} {cfg.n_rnn} x {cfg.dim}, "
             f"{loop.raw.num_params() / 1e6:.2f} M parameters; "
             f"device {loop.device}; " + (f"resuming at step {pos.step}" if pos.step else "starting"))
    if loop.resume_clips:  # killed between last.pt and its clips: write them from the same weights
        loop.write_clips(pos.step, pos.epoch)
    with _StopOnSignal(loop):
        _run_steps(loop, pos, progress, callback)
    return _finish(loop, pos)

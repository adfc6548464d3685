"""last.pt and best.pt: the loop's Position and the checkpoint save and exact-resume methods.

Separate from the step code: a checkpoint holds everything the loop carries (weights, Adam
state, Position, RNN state, RNG states), and this module is the one place that writes and reads
it. CheckpointMixin is a base of the trainer's ``_Loop`` (it uses the loop's run, model,
optimizer and distributed context).
"""
from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from fastsrnn.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from fastsrnn.config import SampleRNNConfig
from fastsrnn.model import RNNState
from fastsrnn.training.errors import CheckpointWriteError
from fastsrnn.training.run_folder import _diff, resume_command


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



def _carried_fields(state: Optional[RNNState]) -> dict:
    """The carried state as last.pt stores it: rnn_h, rnn_c (the bottom frame tier, as before n
    tiers), and rnn_upper [(h, c), ...] for the tiers above (n tiers only)."""
    if state is None:
        return dict(rnn_h=None, rnn_c=None)
    d = state.to_dict()
    out = dict(rnn_h=d["h"], rnn_c=d["c"])
    if "upper" in d:
        out["rnn_upper"] = d["upper"]
    return out


class CheckpointMixin:
    """The checkpoint methods of the trainer's ``_Loop``."""

    def save_last(self, pos: Position, clips_pending: bool = False) -> None:
        """last.pt; clips_pending: this step's clips are still to be written (a resume writes them)."""
        carried = self.dist.gather_state(pos.state)  # every rank's carried state, batch in rank order
        if not self.dist.rank0:
            return
        if not self.weights_finite():  # never replace a good checkpoint with a broken one
            self._diverged(pos.step, "the weights hold NaN or infinite values")
        rng = {"torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            rng["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        self._save(self.run / "checkpoints" / "last.pt", kind="last", optimizer=self.opt.state_dict(),
                   train_config=self.tcfg.to_dict(), step=pos.step, epoch=pos.epoch, batch=pos.batch, sub=pos.sub,
                   **_carried_fields(carried), best_valid=pos.best_valid, best_step=pos.best_step,
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
            carried = RNNState.from_dict({"h": ckpt["rnn_h"], "c": ckpt["rnn_c"], "upper": ckpt.get("rnn_upper") or ()})
            if len(carried.upper) != len(self.raw.upper_rnns):
                raise CheckpointError(f"{path}: its carried state has {1 + len(carried.upper)} frame tiers, the model "
                                      f"{1 + len(self.raw.upper_rnns)}; the checkpoint is damaged")
            pos.state = self.dist.local_state(carried, self.device)
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

"""The step loop of a run: steps, validation and checkpoints on schedule, the stop on a signal,
then the test NLL of the best checkpoint and summary.json.

Separate from :mod:`fastsrnn.training.trainer`, which builds the run (configs, data, model,
optimizer) and holds the training step itself; this module only schedules what happens between
steps. ``loop`` is the trainer's ``_Loop``, which holds this module as one of its parts: the
parts never import the loop (docs/DESIGN.md §1).
"""
from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any, Dict, Optional

from fastsrnn.atomic import atomic_write_text
from fastsrnn.checkpoint import load_checkpoint, model_from_checkpoint
from fastsrnn.training.checkpointing import Position
from fastsrnn.training.errors import TrainingInterrupted
from fastsrnn.training.run_folder import _append_metrics, resume_command
from fastsrnn.training.signals import _stop_requested


def _run_steps(loop, pos: Position, progress: bool, callback) -> None:
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


def _validate(loop, pos: Position, train_bits: float, samples_per_s: float) -> Optional[float]:
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


def _finish(loop, pos: Position) -> Dict[str, Any]:
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
            from fastsrnn.training.plot import plot_metrics

            summary["plot"] = str(plot_metrics(loop.run))
        except ImportError:
            pass
        atomic_write_text(loop.run / "summary.json", json.dumps(summary, indent=2) + "\n")
        loop.log(f"done: best valid {summary['best_valid_bits']} bits at step {pos.best_step}, test {test} bits/sample")
    return summary

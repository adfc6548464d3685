"""The training's exceptions: a diverged loss, a failed checkpoint write, a stop on a signal.

Separate so that the CLI, the loop and the checkpoint code can raise and catch them without
importing one another; re-exported by :mod:`fastsrnn.training.trainer`.
"""
from __future__ import annotations


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

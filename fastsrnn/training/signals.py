"""SIGTERM and SIGINT: stop after the current step and save last.pt, on every rank alike.

Separate from the loop: signal handlers and the cross-rank agreement on a stop are their own
concern, and tests drive them without a run. ``loop`` is the trainer's ``_Loop`` (its
``stop_signal`` and ``dist``), which this module does not import (docs/DESIGN.md §1).
"""
from __future__ import annotations

import signal
import threading


class _StopOnSignal:
    """SIGTERM and SIGINT set ``loop.stop_signal``; the loop then saves last.pt after the current
    step and stops (TrainingInterrupted). A second signal of the same kind, received by this
    process, stops at once. A stop set by another rank (``_stop_requested``), or a signal of the
    other kind (Ctrl-C's SIGINT, then the SIGTERM torchrun sends its workers), still saves."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, loop):
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


def _stop_requested(loop) -> bool:
    """Whether a signal asked the run to stop; under torchrun every rank must agree (save_last is collective)."""
    sig = loop.stop_signal  # read once: the handler may set it at any moment
    if loop.dist.world > 1:
        total, _ = loop.dist.sum(float(sig or 0), 0)
        if total and loop.stop_signal is None:  # another rank's signal
            loop.stop_signal = signal.SIGTERM
        return bool(total)
    return sig is not None

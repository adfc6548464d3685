"""CUDA graphs around one frame's launches (the frame step's products and the sample-frame kernel).

A frame is a few dozen small launches (per RNN layer: two products, the gate maths, the skip
projection; then the upsampling and the sample-frame kernel); at small batch the launch
overhead is a large share of the frame. :class:`FrameGraph` captures them once into a
``torch.cuda.CUDAGraph`` and replays it per frame.

What stays fixed between replays: the state tensors (their addresses are captured, so the
state must be updated in place, as the fused backends do) and static buffers for the per-frame
inputs (uniforms, inverse temperatures, forced samples) and outputs (samples, logits). Each
call copies its inputs into the static buffers, replays, and copies the outputs out. A new
state object, batch size or mode (argmax, forced, logits) gets its own capture.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from fastsrnn.backends.base import DecodeState
from fastsrnn.backends.folded import FoldedBackend

# Captures kept at once (each holds a private memory pool): enough for sampling + teacher forcing.
_MAX_GRAPHS = 4


@dataclass
class _Capture:
    graph: "torch.cuda.CUDAGraph"
    uniforms: torch.Tensor  # (B, F) float32 static input
    inv_temperature: torch.Tensor  # (B,) float32 static input
    forced: Optional[torch.Tensor]  # (B, F) int64 static input, teacher forcing only
    logits: Optional[torch.Tensor]  # (B, F, Q) float32 static output
    out: torch.Tensor  # (B, F) int64 static output (written by the replay)


class GraphCaptureError(RuntimeError):
    """Capturing a frame failed (nothing ran on the real state): plain launches still work."""


def _state_key(state: DecodeState) -> tuple:
    ts = (state.window, state.rnn.h) + (() if state.rnn.c is None else (state.rnn.c,))
    return tuple((t.data_ptr(), tuple(t.shape), t.dtype) for t in ts)


class FrameGraph:
    """Replays ``step`` (a backend's eager ``step_frame``) from captured CUDA graphs.

    step(state, uniforms, inv_temperature, argmax, forced, logits_out) -> (B, F) int64 must
    update ``state`` in place and must not synchronise with the host (no ``.item()``).
    """

    def __init__(self, step: Callable, q_levels: int, warmup: int = 2):
        self.step = step
        self.q_levels = q_levels
        self.warmup = warmup
        self._captures: "OrderedDict[tuple, _Capture]" = OrderedDict()

    def __call__(self, state: DecodeState, uniforms, inv_temperature, argmax=False, forced=None, logits_out=None):
        """Same contract as Backend.step_frame; returns a fresh (B, F) int64 tensor."""
        key = (_state_key(state), bool(argmax), forced is not None, logits_out is not None)
        cap = self._captures.get(key)
        if cap is None:
            cap = self._capture(state, uniforms, argmax, forced is not None, logits_out is not None)
            self._captures[key] = cap
            while len(self._captures) > _MAX_GRAPHS:
                self._captures.popitem(last=False)
        self._captures.move_to_end(key)
        cap.uniforms.copy_(uniforms)
        cap.inv_temperature.copy_(inv_temperature)
        if forced is not None:
            cap.forced.copy_(forced)
        cap.graph.replay()
        if logits_out is not None:
            logits_out.copy_(cap.logits)
        return cap.out.clone()  # the static buffer is overwritten by the next replay

    def _capture(self, state: DecodeState, uniforms, argmax: bool, has_forced: bool, has_logits: bool) -> _Capture:
        B, F = uniforms.shape
        dev = state.window.device
        u = torch.zeros(B, F, dtype=torch.float32, device=dev)
        inv_t = torch.ones(B, dtype=torch.float32, device=dev)
        forced = torch.zeros(B, F, dtype=torch.int64, device=dev) if has_forced else None
        logits = torch.zeros(B, F, self.q_levels, dtype=torch.float32, device=dev) if has_logits else None
        # Warm up on a copy of the state, on a side stream (torch's recipe): lazy initialisation
        # (cuBLAS workspaces, Triton compilation, the extension build) must not be captured,
        # and the real state must not advance.
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            scratch = state.clone()
            for _ in range(self.warmup):
                self.step(scratch, u, inv_t, argmax, forced, logits)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                out = self.step(state, u, inv_t, argmax, forced, logits)
        except RuntimeError as e:  # capture is not execution: the real state is untouched
            raise GraphCaptureError(str(e)) from e
        return _Capture(graph, u, inv_t, forced, logits, out)


def graphs_usable(device: torch.device) -> tuple:
    """(ok, reason): CUDA graphs need a CUDA device (not the CPU interpreter)."""
    if device.type != "cuda":
        return False, f"CUDA graphs need a CUDA device, not {device}"
    if not torch.cuda.is_available():
        return False, "torch has no usable CUDA device"
    return True, "CUDA graphs"


class GraphedBackend(FoldedBackend):
    """A FoldedBackend whose ``step_frame`` may replay CUDA graphs (``graphs``: None = on where
    possible, True = required, False = off). A capture that fails falls back to plain launches
    with a warning, so that generation never stops on it."""

    def _setup_graphs(self, graphs: Optional[bool]) -> None:
        ok, why = graphs_usable(self.device)
        if graphs and not ok:
            raise ValueError(f"{self.name} backend: graphs=True but {why}")
        self.graphs = ok if graphs is None else bool(graphs)
        self._graph = FrameGraph(super().step_frame, self.cfg.q_levels) if self.graphs else None

    @torch.no_grad()
    def step_frame(self, state, uniforms, inv_temperature, argmax=False, forced=None, logits_out=None):
        if self._graph is not None:
            try:
                return self._graph(state, uniforms, inv_temperature, argmax, forced, logits_out)
            except GraphCaptureError as e:  # capture unsupported here (driver, MPS, ...): plain launches
                warnings.warn(f"{self.name} backend: CUDA graph capture failed ({e}); using plain launches")
                self._graph, self.graphs = None, False
        return super().step_frame(state, uniforms, inv_temperature, argmax, forced, logits_out)

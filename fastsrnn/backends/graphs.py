"""CUDA graphs around a frame's launches, and around whole runs of frames.

A frame is a handful of launches (the frame step's products and gate kernels, then the
sample-frame kernel); at small batch launch overhead is a large share of it. :class:`FrameGraph`
captures them once into ``torch.cuda.CUDAGraph`` objects and replays them:

- one frame per replay (``__call__``), with every option (any Sampling, teacher forcing, logits):
  what tests and the bench's correctness gate use;
- ``frames_per_graph`` frames per replay (``frames``): what generation uses, so that a chunk of
  frames costs one host launch per ``frames_per_graph`` frames. A chunk's uniforms arrive as
  one (n, B, F) tensor and its samples leave as one (B, n, F) tensor.

What stays fixed between replays: the state tensors (their addresses are captured, so the
state must be updated in place, as the fused backends do) and static buffers for the inputs
(uniforms, the Sampling's inverse temperatures, forced samples) and outputs (samples, logits).
Each call copies its inputs into the static buffers, replays, and copies the outputs out. A new
state object, batch size, frame count, mode or ``Sampling.key()`` (the sampling fields a kernel
takes by value) gets its own capture (at most ``_MAX_GRAPHS`` kept, and with n tiers one more
per phase of the top tier).

n tiers: which upper tiers step in a frame depends on the state's phase (a host-side int), so
the phase at the first captured frame is part of a capture's key; capturing runs the Python step
(which moves the phase on) without running the kernels, so the phase is put back after a capture
and moved on by the frame count after each replay.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from fastsrnn.backends.base import DecodeState
from fastsrnn.backends.fused_frame import FusedFrameBackend
from fastsrnn.ops.sampling import Sampling

# Captures kept at once (each holds a private memory pool): sampling, a chunk, teacher forcing.
_MAX_GRAPHS = 4
# Frames per replay in generation: 16 frames of 16 samples = 256 samples per host launch.
FRAMES_PER_GRAPH = 16


@dataclass
class _Capture:
    graph: "torch.cuda.CUDAGraph"
    uniforms: torch.Tensor  # (n, B, F) float32 static input
    sampling: Sampling  # its inv_temperature (B,) float32: a static input
    forced: Optional[torch.Tensor]  # (B, F) int64 static input, teacher forcing only (n = 1)
    logits: Optional[torch.Tensor]  # (B, F, Q) float32 static output (n = 1)
    out: torch.Tensor  # (B, n, F) int64 static output (written by the replay)


class GraphCaptureError(RuntimeError):
    """Capturing a frame failed (nothing ran on the real state): plain launches still work."""


def _state_key(state: DecodeState) -> tuple:
    """The captured addresses of every state tensor, and the phase (n tiers)."""
    ts = [state.window, state.rnn.h] + ([] if state.rnn.c is None else [state.rnn.c])
    for u in state.rnn.upper:
        ts += [u.h] + ([] if u.c is None else [u.c])
    ts += ([] if state.history is None else [state.history]) + list(state.conds)
    return tuple((t.data_ptr(), tuple(t.shape), t.dtype) for t in ts) + (state.phase,)


def _advance_phase(state: DecodeState, n_frames: int) -> None:
    """A replay of n_frames frames moved the state on by as many frames: its phase too."""
    if state.history is not None:
        state.phase = (state.phase + n_frames) % (state.history.shape[1] // state.window.shape[1])


class FrameGraph:
    """Replays ``step`` (a backend's eager ``step_frame``) from captured CUDA graphs.

    step(state, uniforms, sampling, forced, logits_out) -> (B, F) int64 must
    update ``state`` in place and must not synchronise with the host (no ``.item()``).
    """

    def __init__(self, step: Callable, q_levels: int, warmup: int = 2, frames_per_graph: int = FRAMES_PER_GRAPH,
                 phases: int = 1):
        self.step = step
        self.q_levels = q_levels
        self.warmup = warmup
        self.frames_per_graph = frames_per_graph
        # n tiers: a chunk's last frames replay one-frame captures at each of ``phases`` phases
        self.max_graphs = _MAX_GRAPHS + phases - 1
        self._captures: "OrderedDict[tuple, _Capture]" = OrderedDict()

    def __call__(self, state: DecodeState, uniforms, sampling: Sampling, forced=None, logits_out=None):
        """Same contract as Backend.step_frame; returns a fresh (B, F) int64 tensor."""
        cap = self._get(state, 1, uniforms.shape, sampling, forced is not None, logits_out is not None)
        cap.uniforms[0].copy_(uniforms)
        cap.sampling.inv_temperature.copy_(sampling.inv_temperature)
        if forced is not None:
            cap.forced.copy_(forced)
        cap.graph.replay()
        _advance_phase(state, 1)
        if logits_out is not None:
            logits_out.copy_(cap.logits)
        return cap.out[:, 0].clone()  # the static buffer is overwritten by the next replay

    def frames(self, state: DecodeState, uniforms, sampling: Sampling) -> torch.Tensor:
        """Same contract as Backend.step_frames: uniforms (n, B, F) -> samples (B, n, F) int64.
        Whole groups of ``frames_per_graph`` frames replay one graph each; the rest one per frame."""
        n, B, F = uniforms.shape
        out = torch.empty(B, n, F, dtype=torch.long, device=uniforms.device)
        k, i = self.frames_per_graph, 0
        if n >= k:
            if state.history is not None and k % (state.history.shape[1] // F):
                raise ValueError(f"frames_per_graph {k} must be a multiple of the {state.history.shape[1] // F} "
                                 "bottom frames per top-tier step (n tiers)")
            cap = self._get(state, k, (B, F), sampling, False, False)
            cap.sampling.inv_temperature.copy_(sampling.inv_temperature)
            for i in range(0, n - k + 1, k):
                cap.uniforms.copy_(uniforms[i:i + k])
                cap.graph.replay()
                _advance_phase(state, k)
                out[:, i:i + k] = cap.out
            i = n - n % k
        for j in range(i, n):
            out[:, j] = self(state, uniforms[j], sampling)
        return out

    def _get(self, state, n_frames: int, frame_shape, sampling: Sampling, has_forced: bool,
             has_logits: bool) -> _Capture:
        key = (_state_key(state), n_frames, sampling.key(), has_forced, has_logits)
        cap = self._captures.get(key)
        if cap is None:
            cap = self._capture(state, n_frames, frame_shape, sampling, has_forced, has_logits)
            self._captures[key] = cap
            while len(self._captures) > self.max_graphs:
                self._captures.popitem(last=False)
        self._captures.move_to_end(key)
        return cap

    def _run(self, state, u, sampling, forced, logits, out) -> None:
        for i in range(u.shape[0]):
            out[:, i] = self.step(state, u[i], sampling, forced, logits)

    def _capture(self, state: DecodeState, n_frames: int, frame_shape, sampling: Sampling, has_forced: bool,
                 has_logits: bool) -> _Capture:
        B, F = frame_shape
        dev = state.window.device
        u = torch.zeros(n_frames, B, F, dtype=torch.float32, device=dev)
        static = sampling.replace(inv_temperature=torch.ones(B, dtype=torch.float32, device=dev))
        forced = torch.zeros(B, F, dtype=torch.int64, device=dev) if has_forced else None
        logits = torch.zeros(B, F, self.q_levels, dtype=torch.float32, device=dev) if has_logits else None
        out = torch.zeros(B, n_frames, F, dtype=torch.int64, device=dev)
        # Warm up on a copy of the state, on a side stream (torch's recipe): lazy initialisation
        # (cuBLAS workspaces, Triton compilation, the extension build) must not be captured,
        # and the real state must not advance.
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            scratch = state.clone()
            period = 1 if state.history is None else state.history.shape[1] // F  # n tiers: every tier's step
            for _ in range(self.warmup * period):
                self._run(scratch, u[:1], static, forced, logits, out)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        phase = state.phase
        try:
            with torch.cuda.graph(graph):
                self._run(state, u, static, forced, logits, out)
        except RuntimeError as e:  # capture is not execution: the real state is untouched
            raise GraphCaptureError(str(e)) from e
        finally:
            state.phase = phase  # the Python side ran n_frames frames, the kernels none yet
        return _Capture(graph, u, static, forced, logits, out)


def graphs_usable(device: torch.device) -> tuple:
    """(ok, reason): CUDA graphs need a CUDA device (not the CPU interpreter)."""
    if device.type != "cuda":
        return False, f"CUDA graphs need a CUDA device, not {device}"
    if not torch.cuda.is_available():
        return False, "torch has no usable CUDA device"
    return True, "CUDA graphs"


class GraphedBackend(FusedFrameBackend):
    """A FusedFrameBackend whose ``step_frame``/``step_frames`` may replay CUDA graphs (``graphs``:
    None = on where possible, True = required, False = off). A capture that fails falls back to
    plain launches with a warning, so that generation never stops on it."""

    def _setup_graphs(self, graphs: Optional[bool]) -> None:
        ok, why = graphs_usable(self.device)
        if graphs and not ok:
            raise ValueError(f"{self.name} backend: graphs=True but {why}")
        self.graphs = ok if graphs is None else bool(graphs)
        # n tiers: a multiple of the bottom frames per top step, so a replay keeps the phase
        per_top = self.cfg.lookback // self.cfg.frame_size
        k = FRAMES_PER_GRAPH if FRAMES_PER_GRAPH % per_top == 0 else per_top * max(1, FRAMES_PER_GRAPH // per_top)
        self._graph = (FrameGraph(super().step_frame, self.cfg.q_levels, frames_per_graph=k, phases=per_top)
                       if self.graphs else None)

    def _capture_failed(self, e: GraphCaptureError) -> None:
        warnings.warn(f"{self.name} backend: CUDA graph capture failed ({e}); using plain launches")
        self._graph, self.graphs = None, False

    @torch.no_grad()
    def step_frame(self, state, uniforms, sampling, forced=None, logits_out=None):
        if self._graph is not None:
            try:
                return self._graph(state, uniforms, sampling, forced, logits_out)
            except GraphCaptureError as e:  # capture unsupported here (driver, MPS, ...): plain launches
                self._capture_failed(e)
        return super().step_frame(state, uniforms, sampling, forced, logits_out)

    @torch.no_grad()
    def step_frames(self, state, uniforms, sampling):
        if self._graph is not None:
            try:
                return self._graph.frames(state, uniforms, sampling)
            except GraphCaptureError as e:
                self._capture_failed(e)
        return super().step_frames(state, uniforms, sampling)

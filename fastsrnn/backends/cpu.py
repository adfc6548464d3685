"""The ``cpu`` backend: fused C++ kernels (csrc/cpu/), JIT-built on first use and cached.

Per frame, two calls: the frame step (csrc/cpu/frame_step.h, the twin of frame_step.py) and
all F sample steps (csrc/cpu/sample_frame.cpp, the twin of reference.sample_frame_ref), each
multi-threaded (OpenMP, rows of every matrix split across cores) and vectorized (AVX-512,
AVX2 or portable), with nothing returning to Python per sample. Large batches hand the frame
step's products to torch's BLAS, which wins there. Weights: fp32, or bf16 storage (dtype,
frame_dtype) widened exactly to fp32 in the kernels, activations and sums stay fp32.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import env
from ..build import BuildError, isa_level, load_extension
from .base import DecodeState
from .frame_step import _mm as _torch_mm
from .frame_step import frame_step
from .fused import FusedBackend, dense

_SOURCES = ["cpu/sample_frame.cpp"]
# Largest batch at which the op's linear beats torch's for the frame step (see frame_mm).
_FP32_STREAM_MAX_B, _BF16_STREAM_MAX_B = 128, 4
# -fno-trapping-math -fno-math-errno (as torch's own build): lets the select/floor/exp loops
# vectorise; no -ffast-math, so sums keep their order and NaN/Inf keep their meaning.
_CFLAGS = ["-O3", "-std=c++17", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
_HINT = "install g++ and ninja (pip install ninja), or use backend='eager'"


def build_extension(isa: Optional[str] = None):
    """Build (or load from the cache) the CPU extension; raises BuildError with a hint.

    isa: 'avx512', 'avx2' or 'generic' to build a narrower variant than this CPU allows
    (tests of the fallbacks); default: the widest this CPU has.
    """
    level, flags = isa_level()
    if isa is not None and isa != level:
        order = ("generic", "avx2", "avx512")
        if isa not in order or order.index(isa) > order.index(level):
            raise BuildError(f"isa={isa!r}: this CPU supports at most {level!r}")
        flags = {"generic": [], "avx2": ["-mavx2", "-mfma", "-mf16c"]}[isa]
    try:
        return load_extension("cpu", _SOURCES, extra_cflags=[*_CFLAGS, *flags],
                              extra_ldflags=["-fopenmp"])
    except BuildError as e:
        raise BuildError(f"{e}\nTo fix: {_HINT}.") from e


def sample_frame_cpu(table, cond, w3, b3, wo, bo, window, uniforms, inv_temperature, argmax: bool, out,
                     forced: Optional[torch.Tensor] = None, logits_out: Optional[torch.Tensor] = None,
                     num_threads: int = 0) -> None:
    """The fused op; same contract and shapes as reference.sample_frame_ref (its eager twin).

    table: (F, Q, H), w3: (H, H), wo: (Q, H) all float32 or all bfloat16; cond: (B, F, H) float32;
    b3: (H,), bo: (Q,) float32; window: (B, F) int64 updated in place; uniforms: (B, F) float32;
    inv_temperature: (B,) float32; out: (B, F) int64; forced: (B, F) int64; logits_out: (B, F, Q)
    float32. num_threads: 0 = torch's thread count (the op uses fewer for small products).
    Bad dtypes or shapes raise TypeError / ValueError naming the argument.
    """
    build_extension().sample_frame(table, cond, w3, b3, wo, bo, window, uniforms, inv_temperature,
                                   bool(argmax), out, forced, logits_out, int(num_threads))


class CpuBackend(FusedBackend):
    name = "cpu"
    _status: Optional[Tuple[bool, str]] = None  # the build's outcome, once per process

    def __init__(self, model, device="cpu", dtype: torch.dtype = torch.float32,
                 frame_dtype: Optional[torch.dtype] = None, num_threads: Optional[int] = None):
        ok, why = self.is_available(torch.device(device))
        if not ok:
            from . import BackendUnavailable

            raise BackendUnavailable(f"cpu backend unavailable: {why}")
        super().__init__(model, device, dtype, frame_dtype)
        self._op = build_extension()
        self.num_threads = num_threads if num_threads is not None else (env.num_threads() or 0)
        if env.num_threads():  # FASTSRNN_NUM_THREADS covers the torch frame step as well
            torch.set_num_threads(env.num_threads())

    def frame_mm(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """x (B, K) @ w.T + b for the frame step: the op's weight-streaming kernel where it beats
        torch's BLAS (measured on a 2-core EPYC: fp32 at every B up to 128, 2x at B = 1 where the
        frame tier is DRAM-bound; bf16 up to B = 4), else frame_step's torch product."""
        if x.shape[0] <= (_FP32_STREAM_MAX_B if w.dtype == torch.float32 else _BF16_STREAM_MAX_B):
            return self._op.linear(x.contiguous(), w, b, self.num_threads)
        return _torch_mm(x, w, b)

    def frame_step(self, state: DecodeState) -> torch.Tensor:
        """The frame step: the op's fused C++ step where it is faster (see frame_mm), else
        frame_step.py with the op's products. Updates state.rnn in place; cond (B, F, H)."""
        w, rnn = self.w, state.rnn
        if state.batch > (_FP32_STREAM_MAX_B if w.up_w.dtype == torch.float32 else _BF16_STREAM_MAX_B):
            return frame_step(w, state.window, rnn, mm=self.frame_mm)
        h, c = dense(rnn.h), dense(rnn.c)
        cond = self._op.frame_step(w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.skip_w, w.skip_b, w.up_w, w.up_b,
                                   state.window.contiguous(), h, c, self.cfg.q_levels, self.num_threads)
        for dst, src in ((rnn.h, h), (rnn.c, c)):
            if dst is not None and dst is not src:
                dst.copy_(src)
        return cond

    @torch.no_grad()
    def step_frame(self, state: DecodeState, uniforms, inv_temperature, argmax=False, forced=None, logits_out=None):
        cond = self.frame_step(state)  # (B, F, H)
        out = torch.empty_like(state.window)
        self.sample_frame(cond, state.window, uniforms, inv_temperature, argmax, out, forced, logits_out)
        return out

    def sample_frame(self, cond, window, uniforms, inv_temperature, argmax, out, forced=None, logits_out=None):
        self.call_dense(lambda w, c, *rest: self._op.sample_frame(w.table, c, w.w3, w.b3, w.wo, w.bo, *rest, self.num_threads),
                        cond, window, uniforms, inv_temperature, argmax, out, forced, logits_out)

    @classmethod
    def is_available(cls, device) -> Tuple[bool, str]:
        """(ok, reason): the device must be the CPU and the extension must build (cached)."""
        device = torch.device(device)
        if device.type != "cpu":
            return False, f"the cpu backend runs on the CPU only, not on {device}"
        if cls._status is None:
            try:
                mod = build_extension()
                cls._status = (True, f"fused C++ kernel ({mod.isa}, {torch.get_num_threads()} threads)")
            except BuildError as e:
                cls._status = (False, str(e))
        return cls._status

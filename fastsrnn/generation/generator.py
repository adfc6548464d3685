"""Generation: a persistent :class:`Generator` that advances n_seq sequences frame by frame.

State (RNN states, the last-F window) lives on the backend's device for the whole run; the
uniforms for sampling come from one seeded CPU ``torch.Generator``, one (n_frames, B, F) draw per chunk,
so a run is reproducible whatever the backend, the chunking or an interruption in between.
Samples come back to the host once per chunk, so memory does not grow with length.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Iterator, Optional, Union

import numpy as np
import torch

from fastsrnn import env
from fastsrnn.backends import DecodeState, make_backend, resolve_backend
from fastsrnn.generation.precision import guard_precision, merge_options
from fastsrnn.model import RNNState, SampleRNN
from fastsrnn.ops.sampling import Sampling, check_top_k, check_top_p
from fastsrnn.quantize import dequantize, quantize, silence_level

H0_MODES = ("learned", "random", "zeros")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_device(device, what: str = "device") -> torch.device:
    """``device`` (None: the default) as a torch.device that exists here, or a clear ValueError."""
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{what}: {device!r} is not a device; use cpu or cuda[:N]") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what} {device}: torch has no CUDA device here (torch {torch.__version__}, "
                             f"built with CUDA {torch.version.cuda}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{what} {device}: torch sees only {torch.cuda.device_count()} CUDA device(s)")
    return dev


def check_int(name: str, value, minimum: Optional[int] = None) -> int:
    """``value`` as an int, or a TypeError/ValueError naming ``name`` (an argument or a CLI option)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_temperature(temperature, name: str = "temperature", greedy: str = "argmax") -> None:
    """A number or one per sequence (list, tuple, tensor, array), finite and > 0, or a TypeError/
    ValueError naming ``name``; ``greedy`` names the argmax option in the message."""
    if isinstance(temperature, (torch.Tensor, np.ndarray)):
        t = torch.as_tensor(temperature) if temperature.dtype != object else None
        if t is None or t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{name} must be a number or one number per sequence, got {temperature!r}")
        return  # the values are checked by temperature_tensor
    vals = temperature if isinstance(temperature, (list, tuple)) else [temperature]
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name} must be a number or a list of numbers (one per sequence), "
                            f"got {temperature!r}")
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be finite and > 0 (use {greedy} for greedy), got {temperature!r}")


def _check_model(model) -> None:
    if not isinstance(model, SampleRNN):
        hint = " (load a checkpoint first: fastsrnn.load(path))" if isinstance(model, (str, os.PathLike)) else ""
        raise TypeError(f"model must be a SampleRNN, got {type(model).__name__}{hint}")


def _check_prime(prime) -> torch.Tensor:
    """prime: quantized levels (an integer tensor, array or list), never audio in [-1, 1]."""
    if isinstance(prime, (str, os.PathLike)):
        raise TypeError("prime: a path is read with prime_levels(path, model.cfg) (fastsrnn.generate accepts one); "
                        "Generator takes the quantized levels")
    if isinstance(prime, (list, tuple)):
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in prime):
            raise TypeError("prime: expected integer quantized levels (see prime_levels), got a list with non-integers")
        return torch.as_tensor(prime, dtype=torch.long)
    if isinstance(prime, np.ndarray):
        prime = torch.from_numpy(np.ascontiguousarray(prime))
    if not isinstance(prime, torch.Tensor):
        raise TypeError(f"prime: expected a tensor of integer quantized levels (see prime_levels), "
                        f"got {type(prime).__name__}")
    if prime.dtype == torch.bool or prime.is_floating_point() or prime.is_complex():
        raise TypeError(f"prime: expected integer quantized levels (see prime_levels), got a {prime.dtype} tensor; "
                        "audio in [-1, 1] must be quantized first (prime_levels reads and quantizes a file)")
    return prime


class Generator:
    """n_seq sequences generated in parallel from one model.

    model: a SampleRNN (moved to ``device``); temperature: scalar or one per sequence;
    top_k: draw only among the k highest logits (ties with the k-th kept; 0 = off); top_p: then
    among the fewest highest levels holding a fraction top_p of their mass (nucleus; 1.0 = off),
    docs/DESIGN.md §4; prime: None, or a (T,) int64 tensor of quantized samples to continue (all sequences).
    precision: fp32 (default), bf16 or int8 weights (fastsrnn/generation/precision.py), merged with
    ``backend_options``; bf16 and int8 must first pass the NLL guard (its result:
    ``precision_check``; :class:`PrecisionRefused` if it fails) on ``precision_data`` (a prepared
    dataset or levels; None: the model's own music), unless ``check_precision`` is False.
    """

    def __init__(self, model: SampleRNN, n_seq: int = 1, *, temperature: Union[float, list] = 1.0,
                 argmax: bool = False, top_k: int = 0, top_p: float = 1.0, h0: str = "learned", seed: int = 0,
                 backend: str = None, device=None, prime: Optional[torch.Tensor] = None, precision: str = "fp32",
                 check_precision: bool = True, precision_data=None, **backend_options):
        _check_model(model)
        n_seq = check_int("n_seq", n_seq, 1)
        seed = check_int("seed", seed)
        check_temperature(temperature)
        top_k, top_p = check_top_k(top_k), check_top_p(top_p)
        if h0 not in H0_MODES:
            raise ValueError(f"h0 must be one of {H0_MODES}, got {h0!r}")
        if prime is not None:
            prime = _check_prime(prime)
        options = merge_options(precision, backend_options)  # an unknown precision or a clash fails here
        self.cfg = model.cfg
        self.device = check_device(device)
        self.model = model.to(self.device).eval()
        self.n_seq, self.seed = n_seq, seed
        self.sampling = Sampling.make(temperature, n_seq, self.device, argmax, top_k, top_p)
        name = resolve_backend(backend or env.default_backend(), self.device, n_seq, options.get("dtype"))
        if precision == "int8" and name in ("triton", "cuda"):  # their frame kernels take fp32 and bf16
            raise ValueError(f"precision='int8' runs on the cpu and folded backends, not on {name!r}; "
                             "on a GPU use precision='bf16' (or backend='folded')")
        self.backend = make_backend(name, self.model, self.device, n_seq=n_seq, **options)
        self.precision, self.precision_check = precision, None
        if precision != "fp32":
            self._guard(precision, check_precision, precision_data, backend_options)
        self.rng = torch.Generator().manual_seed(seed)
        self.frames_done = 0
        with torch.no_grad():
            rnn = self.model.initial_state(n_seq, h0, self.rng)
            window = torch.full((n_seq, self.cfg.frame_size), silence_level(self.cfg.q_levels), dtype=torch.long)
            self.state = DecodeState.begin(self.cfg, rnn, window.to(self.device))
            if prime is not None:
                self._prime(prime)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def argmax(self) -> bool:
        return self.sampling.argmax

    @property
    def inv_temperature(self) -> torch.Tensor:
        """(n_seq,) float32 on the device: 1 / temperature per sequence."""
        return self.sampling.inv_temperature

    def _guard(self, precision: str, check: bool, data, backend_options: dict) -> None:
        if self.backend.name == "eager":  # make_backend gives eager no weight options: it would stay fp32
            raise ValueError(f"precision={precision!r} needs a backend that runs exported weights (folded, cpu, "
                             "triton, cuda); the eager backend runs the model's own fp32 modules")

        if check:
            self.precision_check = guard_precision(self.model, precision, self.backend.name, self.device, data,
                                                   **backend_options)

    def _prime(self, levels: torch.Tensor) -> None:
        """Warm the frame tiers on a recording P (its last whole top frames of S = cfg.lookback
        samples; S = F with 2 tiers): teacher-force [S samples of silence, P] (the state a
        generation that had made P would have), window = P's last F samples, history its last S."""
        F, S = self.cfg.frame_size, self.cfg.lookback
        levels = torch.as_tensor(levels, dtype=torch.long).flatten()
        if levels.numel() < S:
            what = "one frame" if S == F else "one frame of the top tier"
            raise ValueError(f"prime: need at least {what} ({S} samples), got {levels.numel()}")
        if levels.min() < 0 or levels.max() >= self.cfg.q_levels:
            raise ValueError(f"prime: levels must lie in [0, {self.cfg.q_levels})")
        kept = levels[levels.numel() - levels.numel() // S * S:]  # the last whole top frames
        x = torch.cat([torch.full((S,), silence_level(self.cfg.q_levels), dtype=torch.long), kept])
        x = x[None].expand(self.n_seq, x.numel()).to(self.device)  # (B, S + T)
        rnn = self.model.advance(x, self.state.rnn)
        self.state = DecodeState.begin(self.cfg, rnn, x[:, -F:].contiguous(), history=x[:, -S:].contiguous())

    @torch.no_grad()
    def frames(self, n_frames: int) -> torch.Tensor:
        """Generate ``n_frames`` frames: (B, n_frames * F) int64 on the CPU."""
        F, B = self.cfg.frame_size, self.n_seq
        u = self._uniforms(n_frames)
        if self.device.type == "cuda":
            u = u.pin_memory()
        u = u.to(self.device, non_blocking=True)
        buf = self.backend.step_frames(self.state, u, self.sampling)  # (B, n, F) on device
        self.frames_done += n_frames
        return buf.view(B, n_frames * F).cpu()  # one copy to the host per chunk

    def _uniforms(self, n_frames: int) -> torch.Tensor:
        """A chunk's uniforms (n_frames, B, F) on the CPU, in one draw: the same numbers, in the same
        order, as one (B, F) draw per frame (torch's CPU generator fills element by element)."""
        return torch.rand(n_frames, self.n_seq, self.cfg.frame_size, generator=self.rng)

    def stream(self, n_samples: int, chunk_samples: int = 16000) -> Iterator[np.ndarray]:
        """Yield (B, <= chunk_samples) float32 audio chunks until n_samples more have been made.

        Chunks are whole frames (chunk_samples is rounded up to a multiple of F); the last is trimmed.
        """
        F = self.cfg.frame_size
        if n_samples <= 0:
            raise ValueError(f"n_samples must be > 0, got {n_samples}")
        chunk_frames = max(1, math.ceil(chunk_samples / F))
        left = n_samples
        while left > 0:
            q = self.frames(min(chunk_frames, math.ceil(left / F)))[:, :left]
            left -= q.shape[1]
            yield self.to_audio(q)

    def to_audio(self, q: torch.Tensor) -> np.ndarray:
        """Quantized (B, T) -> float32 audio (B, T) in [-1, 1]."""
        return dequantize(q, self.cfg.q_levels, self.cfg.q_type).numpy().astype(np.float32)

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: tensors and plain values (weights-only safe).
        n tiers add the upper tiers' states ("upper"), "history", "conds" and "phase"."""
        s = self.state
        d = {**s.rnn.map(torch.Tensor.cpu).to_dict(), "window": s.window.cpu(),
             "rng": self.rng.get_state(), "frames_done": self.frames_done, "n_seq": self.n_seq,
             "seed": self.seed, "argmax": self.argmax, "inv_temperature": self.inv_temperature.cpu(),
             "top_k": self.sampling.top_k, "top_p": self.sampling.top_p}
        if s.history is not None:
            d.update(history=s.history.cpu(), conds=[c.cpu() for c in s.conds], phase=s.phase)
        return d

    def load_state_dict(self, d: dict) -> None:
        if d["n_seq"] != self.n_seq:
            raise ValueError(f"generation state is for n_seq={d['n_seq']}, this generator has {self.n_seq}")
        for name in ("top_k", "top_p"):  # a state saved before the cut-offs existed has neither: off
            if name in d and d[name] != getattr(self.sampling, name):
                raise ValueError(f"generation state was drawn with {name}={d[name]}, this generator has "
                                 f"{name}={getattr(self.sampling, name)}: resume with the same one")
        window, q = d["window"], self.cfg.q_levels
        if tuple(window.shape) != (self.n_seq, self.cfg.frame_size) or window.min() < 0 or window.max() >= q:
            raise ValueError(f"generation state: window must be ({self.n_seq}, {self.cfg.frame_size}) samples in "
                             f"[0, {q}), got shape {tuple(window.shape)}; the state file is damaged")
        if self.state.history is not None:
            self._check_tiers(d)
        elif "upper" in d or "history" in d:
            raise ValueError("generation state: a state of an n-tier model, not of this 2-tier one")
        dev = lambda t: t.to(self.device).clone()  # noqa: E731
        self.state.rnn = RNNState.from_dict(d).map(dev)
        self.state.window = dev(d["window"])
        if self.state.history is not None:
            self.state.history = dev(d["history"])
            self.state.conds = tuple(dev(c) for c in d["conds"])
            self.state.phase = int(d["phase"])
        self.rng.set_state(d["rng"])
        self.frames_done = int(d["frames_done"])

    def _check_tiers(self, d: dict) -> None:
        """A generation state of an n-tier model: every tier's state, the history, the upper
        outputs and the phase, with the shapes this generator has."""
        s, q = self.state, self.cfg.q_levels
        try:
            ok = (len(d["upper"]) == len(s.rnn.upper) and len(d["conds"]) == len(s.conds)
                  and tuple(d["history"].shape) == tuple(s.history.shape)
                  and all(tuple(a.shape) == tuple(b.shape) for a, b in zip(d["conds"], s.conds))
                  and all(tuple(h.shape) == tuple(u.h.shape) for (h, _), u in zip(d["upper"], s.rnn.upper))
                  and 0 <= int(d["phase"]) < self.cfg.lookback // self.cfg.frame_size
                  and int(d["history"].min()) >= 0 and int(d["history"].max()) < q)
        except (KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            raise ValueError(f"generation state: not a state of this {self.cfg.n_tiers}-tier model "
                             f"(frame_sizes {self.cfg.frame_sizes}: upper tiers, history, conds, phase); "
                             "the state file is damaged or from another model")


def prime_levels(path, cfg, seconds: Optional[float] = None) -> torch.Tensor:
    """Read a recording like the training data (mono, resampled, quantized): (T,) int64.

    seconds: keep only the last ``seconds`` of it (the frame tier's state forgets the rest).
    """
    from fastsrnn.data.audio import read_audio  # audio I/O only where a file is read

    audio = read_audio(path, cfg.sample_rate)
    if seconds is not None:  # not audio[-n:]: n == 0 (under one sample) would keep the whole recording
        audio = audio[max(audio.shape[0] - int(seconds * cfg.sample_rate), 0):]
    return quantize(torch.from_numpy(np.ascontiguousarray(audio)), cfg.q_levels, cfg.q_type)


def generate(model: SampleRNN, n_samples: int, *, n_seq: int = 1, temperature=1.0, argmax: bool = False,
             top_k: int = 0, top_p: float = 1.0, h0: str = "learned", seed: int = 0, backend: str = None,
             device=None, prime=None, progress: bool = False, precision: str = "fp32", check_precision: bool = True,
             precision_data=None) -> np.ndarray:
    """Generate ``n_samples`` samples for each of ``n_seq`` sequences: (n_seq, n_samples) float32.

    top_k, top_p: the cut-offs (see :class:`Generator`). prime: None, (T,) int64 quantized samples
    (see :func:`prime_levels`), or the path of a recording (read whole with :func:`prime_levels`).
    precision, check_precision, precision_data: see :class:`Generator` (bf16 and int8 are measured
    against fp32 first, once per model and data).
    """
    from tqdm.auto import tqdm

    _check_model(model)
    n_samples = check_int("n_samples", n_samples, 1)
    if isinstance(prime, (str, os.PathLike)):
        prime = prime_levels(prime, model.cfg)
    gen = Generator(model, n_seq, temperature=temperature, argmax=argmax, top_k=top_k, top_p=top_p, h0=h0, seed=seed,
                    backend=backend, device=device, prime=prime, precision=precision,
                    check_precision=check_precision, precision_data=precision_data)
    if progress and gen.precision_check is not None:
        print(gen.precision_check.describe())
    out = np.empty((n_seq, n_samples), dtype=np.float32)
    pos = 0
    with tqdm(total=n_samples / model.cfg.sample_rate, unit="s", disable=not progress,
              desc=f"generate ({gen.backend_name})",
              bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]") as bar:
        for chunk in gen.stream(n_samples, chunk_samples=model.cfg.sample_rate):
            out[:, pos:pos + chunk.shape[1]] = chunk
            pos += chunk.shape[1]
            bar.update(chunk.shape[1] / model.cfg.sample_rate)
    return out

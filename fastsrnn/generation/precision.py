"""Generation precision (fp32, bf16, int8) and the quality guard a lower one must pass first.

Lower-precision weights stream fewer bytes per frame, which is what bounds CPU generation
(docs/DESIGN.md §8), but they must not make the music worse. The guard measures the
teacher-forced NLL (bits per sample) of the same data through the same backend twice, with
fp32 weights and with the precision's, and refuses the precision when it costs more than
:data:`MAX_NLL_DELTA_BITS`. Paired (the same samples under both weights), so the data's own
variation cancels out of the delta.

The data: the model's test audio when the caller gives it (a prepared dataset, whose test split
is read, or quantized levels), else :data:`GUARD_SEQUENCES` x :data:`GUARD_SECONDS` that the fp32
model generates itself with a fixed seed. That fallback measures how far the precision moves the
model's own distribution (its NLL is the model's entropy on its own music), not the test loss.

Results are cached in-process per (weights version, precision, backend, data): the weights
version is the export cache's (fastsrnn/ops/export.py: its fingerprint, then a bit-for-bit
comparison), so a changed model is measured again and an unchanged one never is.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.nn.functional as fnn

from fastsrnn.backends import DecodeState, make_backend
from fastsrnn.model import SampleRNN
from fastsrnn.ops.export import export_inference_cached
from fastsrnn.ops.sampling import Sampling
from fastsrnn.quantize import silence_level

PRECISIONS = ("fp32", "bf16", "int8")
# Backend options per precision. int8: the frame tier's weights in int8 (per-row scales), the sample
# tier's in bf16: 14% faster than an fp32 sample tier at one sequence of dadabots-2tier on a 2-core
# CPU, and +0.0001 bits against +0.0000 on a trained model's test split (BENCHMARKS.md).
_OPTIONS = {"fp32": {}, "bf16": {"dtype": torch.bfloat16, "frame_dtype": torch.bfloat16},
            "int8": {"dtype": torch.bfloat16, "frame_dtype": torch.int8}}
MAX_NLL_DELTA_BITS = 0.01  # the most a precision may add to the fp32 NLL, bits per sample
GUARD_SEQUENCES, GUARD_SECONDS, GUARD_SEED = 4, 1.0, 0  # the guard's data: sequences x seconds each
LOG2E = 1.4426950408889634


class PrecisionRefused(ValueError):
    """A precision whose measured NLL exceeds fp32's by more than the limit; the message says by how much."""


def precision_options(precision: str) -> dict:
    """The backend options of ``precision`` (one of PRECISIONS), or a ValueError naming the argument."""
    if precision not in _OPTIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return dict(_OPTIONS[precision])


def merge_options(precision: str, backend_options: dict) -> dict:
    """``backend_options`` plus ``precision``'s; a backend option that contradicts the precision
    (precision='bf16' with dtype=torch.float32) is a ValueError. fp32 sets nothing, so it leaves
    the backend's own defaults and options as they are."""
    merged = dict(backend_options)
    for key, value in precision_options(precision).items():
        if key in merged and merged[key] != value:
            raise ValueError(f"precision={precision!r} sets {key}={value} but backend_options give {key}="
                             f"{merged[key]}; drop {key} from the backend options or choose another precision")
        merged[key] = value
    return merged


def _check_levels(levels, cfg) -> torch.Tensor:
    """levels: (T,) or (B, T) integer quantization levels -> (B, T') int64, T' whole frames (of the
    top tier: cfg.lookback samples)."""
    if not isinstance(levels, torch.Tensor) or levels.dtype == torch.bool or levels.is_floating_point() \
            or levels.is_complex() or levels.dim() not in (1, 2):
        raise TypeError("levels must be a 1-d or 2-d integer tensor of quantization levels, got "
                        + (f"{levels.dtype} of shape {tuple(levels.shape)}" if isinstance(levels, torch.Tensor)
                           else type(levels).__name__))
    x = levels.reshape(1, -1) if levels.dim() == 1 else levels
    S = cfg.lookback
    T = x.shape[1] // S * S
    if T == 0 or x.shape[0] == 0:
        raise ValueError(f"levels: need at least one sequence of one frame ({S} samples), got {tuple(levels.shape)}")
    if x.min() < 0 or x.max() >= cfg.q_levels:
        raise ValueError(f"levels must lie in [0, {cfg.q_levels}) (the model's q_levels)")
    return x[:, :T].long().cpu()


@torch.no_grad()
def _run_frames(be, model: SampleRNN, B: int, n_frames: int, forced: Optional[torch.Tensor] = None,
                seed: int = GUARD_SEED) -> Tuple[torch.Tensor, float]:
    """n_frames frames on backend ``be`` from the model's learned h0 and a silent window, as training
    starts a chunk: teacher-forced on ``forced`` (B, n_frames*F), else drawn at temperature 1 from
    seeded uniforms. Returns the samples (B, n_frames*F) on the CPU and their mean NLL in bits."""
    F, Q, dev = model.cfg.frame_size, model.cfg.q_levels, be.device
    window = torch.full((B, F), silence_level(Q), dtype=torch.long)
    state = DecodeState.begin(model.cfg, model.initial_state(B), window).to(dev)
    g = torch.Generator().manual_seed(seed)
    sampling, logits = Sampling(torch.ones(B, device=dev)), torch.empty(B, F, Q, device=dev)
    x = None if forced is None else forced.to(dev)
    out, total = [], torch.zeros((), dtype=torch.float64, device=dev)
    for n in range(n_frames):
        target = None if x is None else x[:, n * F:(n + 1) * F].contiguous()  # (B, F)
        u = torch.zeros(B, F) if x is not None else torch.rand(B, F, generator=g)  # Generator's draw order
        got = be.step_frame(state, u.to(dev), sampling, forced=target, logits_out=logits)
        y = got if target is None else target
        total += fnn.cross_entropy(logits.reshape(-1, Q).double(), y.reshape(-1), reduction="sum")
        out.append(got)
    return torch.cat(out, 1).cpu(), float(total) / (B * n_frames * F) * LOG2E


def teacher_forced_nll(model: SampleRNN, levels, backend: str = "folded", device=None, **options) -> float:
    """Mean NLL in bits per sample of ``levels`` under ``model`` run by ``backend`` with ``options``
    (dtype, frame_dtype, ...): each next sample's cross-entropy given the backend's logits, fed the
    true samples (teacher forcing), from the learned h0 and cfg.lookback samples of silence (as
    training's test NLL). levels: (T,) or (B, T) int64 quantization levels; the tail short of a
    (top) frame is dropped.
    """
    x = _check_levels(levels, model.cfg)
    dev = torch.device(device) if device is not None else model.frame_rnn.h0.device
    be = make_backend(backend, model, dev, n_seq=x.shape[0], **options)
    return _run_frames(be, model, x.shape[0], x.shape[1] // model.cfg.frame_size, forced=x)[1]


# --- the guard's data and cache ------------------------------------------------------------------

_cache: "weakref.WeakKeyDictionary[SampleRNN, tuple]" = weakref.WeakKeyDictionary()


def _model_cache(model: SampleRNN) -> dict:
    """This model's measurements, emptied whenever the export cache sees new weights."""
    version = export_inference_cached(model)  # the same object while the weights are unchanged
    entry = _cache.get(model)
    if entry is None or entry[0]() is not version:
        entry = _cache[model] = (weakref.ref(version), {})
    return entry[1]


def clear_precision_cache() -> None:
    _cache.clear()


def _digest(x: torch.Tensor) -> str:
    return hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16] + f":{tuple(x.shape)}"


def dataset_test_levels(data_dir, cfg, n_seq: int = GUARD_SEQUENCES, seconds: float = GUARD_SECONDS) -> torch.Tensor:
    """The first ``seconds`` of the first ``n_seq`` chunks of a prepared dataset's test split,
    cut to a common whole number of frames: (B, T) int64."""
    from fastsrnn.data.chunks import data_path, load_split

    chunks = load_split(data_path(data_dir), "test", cfg).levels[:n_seq]
    if not chunks:
        raise ValueError(f"precision_data {data_dir}: its test split has no chunk of a frame or more")
    T = min(min(int(c.numel()) for c in chunks), max(int(seconds * cfg.sample_rate), cfg.lookback))
    T = T // cfg.lookback * cfg.lookback
    return torch.stack([c[:T].long() for c in chunks])


def recorded_dataset(checkpoint) -> Optional[Path]:
    """The dataset a checkpoint was trained on, where its run folder records one that still exists
    (RUN/config.json beside RUN/checkpoints/): the checkpoint itself does not record it."""
    import json

    config = Path(checkpoint).resolve().parent.parent / "config.json"
    try:
        data = json.loads(config.read_text()).get("data")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(data) if data and (Path(data) / "manifest.json").is_file() else None


@dataclass(frozen=True)
class PrecisionCheck:
    """One guard result: NLLs in bits per sample with fp32 and with ``precision`` weights, same data."""

    precision: str
    backend: str
    data: str  # what was measured on, in words
    nll_fp32: float
    nll: float
    limit: float
    seconds: Optional[float]  # spent measuring; None when every number came from the cache

    @property
    def delta(self) -> float:
        return self.nll - self.nll_fp32

    @property
    def passed(self) -> bool:
        return self.delta <= self.limit  # NaN fails

    def describe(self) -> str:
        took = "cached" if self.seconds is None else f"measured in {self.seconds:.1f} s"
        return (f"precision {self.precision} ({self.backend} backend): NLL {self.nll:.4f} bits/sample vs "
                f"{self.nll_fp32:.4f} with fp32 weights on {self.data}: delta {self.delta:+.4f} bits "
                f"(limit {self.limit:g}; {took})")


def _guard_data(model, data, be, cache: dict, key) -> Tuple[torch.Tensor, str]:
    """(levels (B, T), description) of ``data``: None -> the fp32 model's own music (cached)."""
    cfg = model.cfg
    if data is None:
        per = cfg.lookback // cfg.frame_size  # whole top frames: the levels are teacher-forced again later
        n_frames = max(1, round(GUARD_SECONDS * cfg.sample_rate / cfg.lookback)) * per
        skey = ("self", key, GUARD_SEQUENCES, n_frames, GUARD_SEED)
        if skey not in cache:
            x, nll = _run_frames(be(), model, GUARD_SEQUENCES, n_frames)
            cache[skey] = x
            cache[("nll", "fp32", key, _digest(x))] = nll  # the draw's own logits: fp32's NLL on it
        return cache[skey], (f"{GUARD_SEQUENCES} x {GUARD_SECONDS:g} s the fp32 model generated itself "
                             f"(seed {GUARD_SEED}; no test data given)")
    if isinstance(data, (str, os.PathLike)):
        x = dataset_test_levels(data, cfg)
        return x, f"{x.shape[0]} x {x.shape[1] / cfg.sample_rate:.2f} s of the test split of {data}"
    x = _check_levels(data, cfg)
    return x, f"the given levels ({x.shape[0]} x {x.shape[1]} samples)"


def nll_pair(model: SampleRNN, options: dict, backend: str = "folded", device=None, data=None,
             fp32_options: Optional[dict] = None) -> Tuple[float, float, str, Optional[float]]:
    """(NLL with fp32 weights, NLL with ``options``, data description, seconds spent measuring or
    None when all came from the cache) on the same
    data through ``backend`` (cached: see the module's docstring). data: None (the model's own
    music), a prepared dataset folder (its test split), or (T,)/(B, T) levels. fp32_options: the
    backend's other options (threads, graphs), used for both runs."""
    t0 = time.perf_counter()
    base = dict(fp32_options or {})
    dev = torch.device(device) if device is not None else model.frame_rnn.h0.device
    cache = _model_cache(model)
    entries = len(cache)
    key = (backend, str(dev), tuple(sorted((k, repr(v)) for k, v in base.items())))
    make = lambda opts: make_backend(backend, model, dev, n_seq=GUARD_SEQUENCES, **opts)  # noqa: E731
    x, what = _guard_data(model, data, lambda: make(base), cache, key)
    nlls = []
    for name, opts in (("fp32", base), ("low", {**base, **options})):
        nkey = ("nll", name if name == "fp32" else tuple(sorted((k, repr(v)) for k, v in opts.items())), key,
                _digest(x))
        if nkey not in cache:
            cache[nkey] = _run_frames(make(opts), model, x.shape[0], x.shape[1] // model.cfg.frame_size, x)[1]
        nlls.append(cache[nkey])
    return nlls[0], nlls[1], what, (time.perf_counter() - t0) if len(cache) > entries else None


def guard_precision(model: SampleRNN, precision: str, backend: str = "folded", device=None, data=None,
                    limit: Optional[float] = None, **backend_options) -> PrecisionCheck:
    """Measure ``precision`` against fp32 (:func:`nll_pair`) and return the :class:`PrecisionCheck`,
    or raise :class:`PrecisionRefused` when its NLL exceeds fp32's by more than ``limit`` bits
    (None: :data:`MAX_NLL_DELTA_BITS`, read at call time; any finite number, so a test can force a
    refusal). backend_options: the backend's other options (threads, graphs), used for both runs.
    fp32 is the reference: never measured (a check of two zero NLLs is returned)."""
    opts = precision_options(precision)
    limit = MAX_NLL_DELTA_BITS if limit is None else limit
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit):
        raise ValueError(f"limit must be a finite number of bits, got {limit!r}")
    if precision == "fp32":
        return PrecisionCheck("fp32", backend, "nothing (fp32 is the reference)", 0.0, 0.0, limit, None)
    rest = {k: v for k, v in backend_options.items() if k not in opts}
    nll32, nll, what, spent = nll_pair(model, opts, backend, device, data, rest)
    check = PrecisionCheck(precision, backend, what, nll32, nll, limit, spent)
    if not check.passed:
        raise PrecisionRefused(
            f"precision {precision!r} refused: on {what}, the teacher-forced NLL through the {backend} backend is "
            f"{nll:.4f} bits/sample with {precision} weights against {nll32:.4f} with fp32 weights, a loss of "
            f"{check.delta:+.4f} bits, over the limit of {limit:g} bits (MAX_NLL_DELTA_BITS). Generate with "
            f"precision 'fp32' (or another lower precision that passes), or skip this check with "
            f"check_precision=False (CLI: --no-precision-check) if you accept the loss.")
    return check

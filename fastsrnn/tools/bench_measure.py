"""How the project measures generation: the one timing method, the one peak-memory method, the
correctness gate, and this machine's floor. ``fastsrnn bench`` (fastsrnn/tools/bench.py), the
pytest-benchmark suite (benchmarks/test_generation_bench.py) and the long-generation memory check
(benchmarks/long_memory.py) all call these; none has its own timer or memory probe.

- :func:`parse_variant` reads a backend variant (``cpu:bf16``, ``cpu:int8``, ``cpu:int8frame``, ``cuda:nograph``;
  ``ref`` is the old name of ``folded``); :func:`fresh_state` makes a reproducible decode state.
- :func:`measured` is the timing and peak-memory method: wall seconds of a block, synchronised
  on CUDA, and the peak memory inside it (CUDA: torch's allocations; CPU: the process's RSS).
- :func:`frame_stepper` is one timed unit (one ``step_frame``, synchronised);
  :func:`time_frames` times it: warm-up, repeats, median seconds per frame and peak memory.
- :func:`check_against_eager` / :func:`check_low_precision` / :func:`check_int8` /
  :func:`checked_backends`: the gate, which refuses to time a backend that disagrees with eager.
"""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

from fastsrnn.backends import DecodeState, canonical_name, make_backend
from fastsrnn.config import SampleRNNConfig
from fastsrnn.generation.precision import precision_options
from fastsrnn.ops.sampling import Sampling, cdf_margin

NEAR_TIE = 1e-4  # a CDF margin below this explains a differing draw (fp32 summation order)
# A variant's options: a precision of `fastsrnn generate --precision` (bf16, int8: the same backend
# options, generation/precision.py), int8frame (the frame tier in int8, the sample tier kept fp32),
# nograph (no CUDA graphs).
VARIANT_OPTIONS = ("bf16", "int8", "int8frame", "nograph")
# int8 frame weights (per-row scales, fp32 sample tier): the largest teacher-forced logits error
# against fp32 eager (||diff|| / ||ref||) the gate accepts. Measured (bench_measure's own check,
# the folded twin): 1.5e-3 on dadabots-2tier at its initial weights (bf16 frame weights alone:
# 6.8e-4; bf16 in both tiers, the cpu:bf16 variant: 2.6e-3), 0.7e-3 on tiny, 0.6-1.3e-3 on the
# test models. int8 rounds each weight to 1/254 of its row's largest value, so trained rows whose
# largest value is far above their typical one lose more: 1e-2 (bf16's gate) leaves ~7x for that,
# while a wrong kernel (a scale lost, a layer skipped) is off by O(1).
INT8_LOGITS_LIMIT = 1e-2
# A fused int8 backend against its torch twin (folded, same int8 weights): both widen the same
# integers exactly and sum in fp32, so only the summation order differs (fp32 rounding through
# the layers: measured 1-3e-7 on tiny and dadabots-2tier); up_w's scales off by 1% give ~1e-3.
INT8_TWIN_LIMIT = 1e-5


def parse_variant(variant: str) -> Tuple[str, dict]:
    """'cpu:bf16' and 'cpu:int8' -> the cpu backend with the options of ``--precision bf16`` / ``int8``
    (int8: frame tier int8, sample tier bf16); 'cpu:int8frame' -> ('cpu', {frame_dtype: int8}), the
    sample tier fp32; 'cuda:nograph' -> ('cuda', {graphs: False}). At most one precision option.
    The backend name is canonical ('ref' -> 'folded', with a DeprecationWarning)."""
    name, _, opts = variant.partition(":")
    kw, precision = {}, None
    for opt in filter(None, opts.split(",")):
        if opt in ("bf16", "int8", "int8frame"):
            if precision is not None:
                raise ValueError(f"backend variant {variant!r}: one precision ({opt!r} after {precision!r}); "
                                 "int8 is --precision int8 (int8 frame tier, bf16 sample tier), int8frame keeps "
                                 "an fp32 sample tier")
            precision = opt
            kw.update(precision_options(opt) if opt != "int8frame" else {"frame_dtype": torch.int8})
        elif opt == "nograph":
            kw["graphs"] = False
        else:
            raise ValueError(f"backend variant {variant!r}: unknown option {opt!r} ({', '.join(VARIANT_OPTIONS)})")
    return canonical_name(name), kw


def canonical_variant(variant: str) -> str:
    """The variant with its backend's current name: 'ref:bf16' -> 'folded:bf16'."""
    name, _, opts = variant.partition(":")
    return canonical_name(name) + (f":{opts}" if opts else "")


def fresh_state(model, n_seq: int, device, seed: int) -> DecodeState:
    """A reproducible decode state: random h0 and a random window of F samples, on ``device``."""
    g = torch.Generator().manual_seed(seed)
    window = torch.randint(0, model.cfg.q_levels, (n_seq, model.cfg.frame_size), generator=g)
    return DecodeState.begin(model.cfg, model.initial_state(n_seq, "random", g), window).to(device)


def sync(device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the one timing and peak-memory method -------------------------------------------------------

@dataclass
class Measurement:
    """What :func:`measured` saw: seconds (None while the block runs), peak and starting memory in
    MiB (None where this OS cannot reset its peak), and the growth (peak - start)."""

    seconds: Optional[float] = None
    start_mib: Optional[float] = None
    peak_mib: Optional[float] = None

    @property
    def growth_mib(self) -> Optional[float]:
        return None if self.peak_mib is None or self.start_mib is None else self.peak_mib - self.start_mib


def _reset_peak(device: torch.device) -> bool:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:  # Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_mib(device: torch.device) -> Optional[float]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


@contextlib.contextmanager
def measured(device="cpu", memory: bool = True) -> Iterator[Measurement]:
    """Time a block and, with ``memory``, its peak memory: the project's one method for both.

    Seconds are wall time (perf_counter), with the device synchronised before and after. Peak
    memory: on CUDA torch's peak allocation (reset_peak_memory_stats at entry); on the CPU the
    process's peak RSS (Linux VmHWM, reset at entry through /proc/self/clear_refs), which
    includes torch and every loaded weight. start_mib is the same quantity at entry. A nested
    call with ``memory=True`` would reset the outer window: nest with ``memory=False``.
    """
    device = torch.device(device)
    m = Measurement()
    sync(device)
    if memory and _reset_peak(device):
        m.start_mib = _peak_mib(device)
    t = time.perf_counter()
    try:
        yield m
    finally:
        sync(device)
        m.seconds = time.perf_counter() - t
        if m.start_mib is not None:
            m.peak_mib = _peak_mib(device)


def frame_stepper(backend, state: DecodeState, uniforms: torch.Tensor, sampling: Sampling,
                  device) -> Callable[[], None]:
    """One timed unit: ``backend.step_frame`` on ``state`` (advanced in place), synchronised."""
    device = torch.device(device)

    def step() -> None:
        backend.step_frame(state, uniforms, sampling)
        sync(device)
    return step


@dataclass
class FrameTiming:
    seconds_per_frame: float  # median over the repeats
    repeats: List[float] = field(default_factory=list)  # seconds per frame of each repeat
    peak_mib: Optional[float] = None  # over all repeats (see measured)


def time_frames(model, backend, n_seq: int, device, frames: int = 16, repeats: int = 5, warmup: int = 1,
                seed: int = 3) -> FrameTiming:
    """Median seconds per frame of ``backend`` on ``n_seq`` sequences, run as generation runs it:
    ``frames`` frames per ``step_frames`` call (one uniforms tensor per chunk; CUDA graphs of
    several frames per replay). State and uniforms are made outside the timed region, then
    ``warmup`` untimed calls (builds, graph captures, caches), then ``repeats`` timed calls."""
    F = model.cfg.frame_size
    state = fresh_state(model, n_seq, device, seed)
    u = torch.rand(frames, n_seq, F, device=device)  # (n, B, F)
    sampling = Sampling(torch.ones(n_seq, device=device))
    for _ in range(warmup):
        backend.step_frames(state, u, sampling)
    per_frame = []
    with measured(device) as total:
        for _ in range(repeats):
            with measured(device, memory=False) as m:
                backend.step_frames(state, u, sampling)
            per_frame.append(m.seconds / frames)
    return FrameTiming(statistics.median(per_frame), per_frame, total.peak_mib)


# --- the correctness gate ------------------------------------------------------------------------

def check_against_eager(model, be, eager_be, n_seq: int, device, frames: int = 3, ref: str = "eager") -> str:
    """Generate ``frames`` frames with both; 'match', 'near-tie (margin m)' or raise.
    ``ref``: what ``eager_be`` is called in the message (another reference: the folded int8 twin)."""
    F, Q = model.cfg.frame_size, model.cfg.q_levels
    g = torch.Generator().manual_seed(1234)
    us = [torch.rand(n_seq, F, generator=g).to(device) for _ in range(frames)]
    sampling = Sampling(torch.ones(n_seq, device=device))
    s_ref, s_be = fresh_state(model, n_seq, device, 7), fresh_state(model, n_seq, device, 7)
    for u in us:
        logits = torch.empty(n_seq, F, Q, device=device)
        x_ref = eager_be.step_frame(s_ref, u, sampling, logits_out=logits)
        x_be = be.step_frame(s_be, u, sampling)
        bad = (x_ref != x_be).nonzero()
        if len(bad):
            b, j = bad[0].tolist()
            margin = float(cdf_margin(logits[b, j][None].cpu(), u[b, j][None].cpu(), sampling.rows([b]).to("cpu"))[0])
            if margin > NEAR_TIE:
                raise RuntimeError(f"backend {be.name} draws {int(x_be[b, j])} where {ref} draws "
                                   f"{int(x_ref[b, j])} (sequence {b}, step {j}, CDF margin {margin:.2e}): "
                                   "refusing to time it")
            return f"near-tie (margin {margin:.1e})"
    return "match"


def check_low_precision(model, be, eager_be, n_seq: int, device, frames: int = 2, limit: float = 1e-2,
                        label: str = "bf16") -> str:
    """Teacher-forced logits of a bf16-weight (``label``) backend against fp32 eager:
    ||diff|| / ||ref|| <= limit."""
    F, Q = model.cfg.frame_size, model.cfg.q_levels
    g = torch.Generator().manual_seed(4321)
    sampling = Sampling(torch.ones(n_seq, device=device))
    s_ref, s_be = fresh_state(model, n_seq, device, 7), fresh_state(model, n_seq, device, 7)
    num = den = 0.0
    for _ in range(frames):
        u = torch.rand(n_seq, F, generator=g).to(device)
        ref, got = torch.empty(n_seq, F, Q, device=device), torch.empty(n_seq, F, Q, device=device)
        x = eager_be.step_frame(s_ref, u, sampling, logits_out=ref)
        be.step_frame(s_be, u, sampling, forced=x, logits_out=got)
        num += float((got - ref).double().pow(2).sum())
        den += float(ref.double().pow(2).sum())
    err = (num / den) ** 0.5
    if not err <= limit:  # NaN fails too
        raise RuntimeError(f"backend {be.name} ({label}): logits relative error {err:.1e} > {limit:.0e}: "
                           "refusing to time it")
    return f"{label}: logits rel. err {err:.1e}"


def check_int8(model, be, eager_be, variant: str, n_seq: int, device) -> str:
    """int8 frame weights: the logits within INT8_LOGITS_LIMIT of fp32 eager, and a fused backend
    draws what its torch twin, ``folded`` on the same int8 weights, draws (the same integers up to
    a CDF near-tie: both widen the same int8 values exactly and sum in fp32)."""
    name, kw = parse_variant(variant)
    label = "int8" if "dtype" not in kw else "int8 + bf16"
    out = check_low_precision(model, be, eager_be, n_seq, device, limit=INT8_LOGITS_LIMIT, label=label)
    if name != "folded":
        twin = make_backend("folded", model, device, **{k: v for k, v in kw.items() if k != "graphs"})
        ref = "folded:" + ",".join(o for o in variant.partition(":")[2].split(",") if o != "nograph")
        check_low_precision(model, be, twin, n_seq, device, limit=INT8_TWIN_LIMIT, label=f"int8, vs {ref}")
        out += f"; vs {ref} {check_against_eager(model, be, twin, n_seq, device, ref=ref)}"
    return out


def check_backend(model, be, eager_be, variant: str, n_seq: int, device) -> str:
    """The gate for one variant: exact draws for fp32 weights, the logits error for bf16 ones, the
    logits error and the int8 twin's draws for int8 frame weights."""
    name, kw = parse_variant(variant)
    if name == "eager":
        return "reference"
    if kw.get("frame_dtype") == torch.int8:
        return check_int8(model, be, eager_be, variant, n_seq, device)
    if "dtype" in kw:
        return check_low_precision(model, be, eager_be, n_seq, device)
    return check_against_eager(model, be, eager_be, n_seq, device)


def ordered(variants: List[str]) -> List[str]:
    """Canonical names, duplicates dropped, eager first (so every later row has its speedup)."""
    return sorted(dict.fromkeys(map(canonical_variant, variants)), key=lambda v: parse_variant(v)[0] != "eager")


def checked_backends(model, n_seq: int, variants: List[str], device) -> Tuple[Dict[str, object], Dict[str, str]]:
    """Correctness first: build every variant and check it against eager; nothing is timed before."""
    eager = make_backend("eager", model, device)
    backends, checks = {}, {}
    for variant in ordered(variants):
        name, kw = parse_variant(variant)
        backends[variant] = eager if name == "eager" else make_backend(name, model, device, **kw)
        checks[variant] = check_backend(model, backends[variant], eager, variant, n_seq, device)
    return backends, checks


# --- this machine: floor, description, versions ---------------------------------------------------

def measure_floor(device, quick: bool = False) -> dict:
    """This machine's limits, measured now: fp32 matmul GFLOP/s and copy GB/s (read + write)."""
    device = torch.device(device)
    n = 1024 if quick else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    src = torch.randn((64 if quick else 256) * 2**20 // 4, device=device)
    dst = torch.empty_like(src)

    def best(fn, reps=5):
        fn()
        times = []
        for _ in range(reps):
            with measured(device, memory=False) as m:
                fn()
            times.append(m.seconds)
        return min(times)

    gflops = 2 * n**3 / best(lambda: torch.mm(a, b)) / 1e9
    gbs = 2 * src.numel() * 4 / best(lambda: dst.copy_(src)) / 1e9
    return {"matmul_gflops": gflops, "copy_gb_per_s": gbs}


def frame_cost(cfg: SampleRNNConfig, n_seq: int, weight_bytes: int) -> dict:
    """Multiply-adds and the fewest bytes of one frame for n_seq sequences (after the folds)."""
    F, H, Q, L, G = cfg.frame_size, cfg.dim, cfg.q_levels, cfg.n_rnn, cfg.gates
    frame_macs = L * G * H * (2 * H + F) + (L * H * H if cfg.skip and L > 1 else 0) + F * H * H
    sample_macs = F * (H * H + Q * H + F * H)  # W3, Wo, F table rows per step
    return {"flops": 2 * n_seq * (frame_macs + sample_macs), "bytes": weight_bytes}


def machine_info(device) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform()}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from fastsrnn import __version__

    v = {"python": platform.python_version(), "torch": torch.__version__, "fastsrnn": __version__, "triton": None}
    with contextlib.suppress(PackageNotFoundError):
        v["triton"] = version("triton")
    v["git_commit"] = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        v["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                         cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    return v

"""The sample-frame op: all F sample steps of one frame for B sequences. One home for it:

- :func:`sample_frame_ref`, its eager twin in torch ops: the specification, the CPU fallback of
  the ``folded`` backend and the oracle every kernel is tested against;
- :func:`check_sample_frame_args`, the one argument check every launcher runs;
- the launchers :func:`sample_frame_cpu` (csrc/cpu/sample_frame.cpp), :func:`sample_frame_triton`
  (kernels/sample_frame.py) and :func:`sample_frame_cuda` (csrc/cuda/sample_frame.cu).

Every variant has the same signature and contract:

    table: (F, Q, H), w3: (H, H), wo: (Q, H) all float32 or all bfloat16; cond: (B, F, H) float32
    = W2 c_j + b2; b3: (H,), bo: (Q,) float32; window: (B, F) int64, updated in place to the last
    F samples; uniforms: (B, F) float32 in [0, 1); sampling: a Sampling (ops/sampling.py), its
    inv_temperature (B,) float32 on the table's device; out: (B, F) int64 written with the drawn
    samples; forced: (B, F) int64 samples fed instead of drawn (teacher forcing); logits_out:
    (B, F, Q) float32 written with every step's logits.

    Step j: a2 = relu(cond_j + sum_k table[k, window_k]); a3 = relu(W3 a2 + b3);
    logits = Wo a3 + bo; x = inverse-CDF sample (ops/sampling.py) or forced[:, j];
    window <- window[1:] + [x].

The kernels want dense tensors; the launchers refuse views rather than copying silently
(backends/folded.py densifies a view and copies the result back). Every launcher runs
:func:`check_sample_frame_args` unless called with ``check=False``, which only a caller that has
already checked the same tensors may pass: the backends check a state's first frame and every
teacher-forced frame, after which the window holds only samples the kernel itself drew (the
check costs about 8 us a frame, a tenth of a `tiny` frame on the CPU).
"""
from __future__ import annotations

from typing import Optional

import torch

from fastsrnn.ops import thresholds  # read at each call: a test may lower a threshold on the module
from fastsrnn.ops.sampling import Sampling, sample_ref


def sample_frame_ref(
    table: torch.Tensor, cond: torch.Tensor, w3: torch.Tensor, b3: torch.Tensor,
    wo: torch.Tensor, bo: torch.Tensor, window: torch.Tensor, uniforms: torch.Tensor,
    sampling: Sampling, out: torch.Tensor,
    forced: Optional[torch.Tensor] = None, logits_out: Optional[torch.Tensor] = None,
) -> None:
    """The F sample steps of one frame in torch ops (see the module docstring for the contract)."""
    F = table.shape[0]
    slots = torch.arange(F, device=window.device)
    for j in range(F):
        a2 = torch.relu(cond[:, j].float() + table[slots, window].float().sum(dim=1))  # (B, F, H) -> (B, H)
        a3 = torch.relu(a2 @ w3.float().t() + b3)
        logits = a3 @ wo.float().t() + bo  # (B, Q)
        if logits_out is not None:
            logits_out[:, j] = logits
        x = forced[:, j] if forced is not None else sample_ref(logits, uniforms[:, j], sampling)
        out[:, j] = x
        window.copy_(torch.cat([window[:, 1:], x[:, None]], dim=1))


def _check(op: str, name: str, t: torch.Tensor, shape, dtypes, device) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{op}: {name} must be {' or '.join(map(str, dtypes))}, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{op}: {name} must be contiguous")
    if t.device != device:
        raise ValueError(f"{op}: {name} is on {t.device}, the table on {device}")


def _check_samples(op: str, name: str, t: torch.Tensor, q_levels: int) -> None:
    if t.numel() == 0:
        return
    lo, hi = torch.aminmax(t)  # one pass; the offender is located only on failure
    if lo < 0 or hi >= q_levels:
        i = int(((t < 0) | (t >= q_levels)).flatten().nonzero()[0])
        raise ValueError(f"{op}: {name} holds samples outside [0, {q_levels}): "
                         f"{int(t.flatten()[i])} at flat index {i}")


def check_sample_frame_args(op: str, table, cond, w3, b3, wo, bo, window, uniforms, sampling, out,
                            forced=None, logits_out=None) -> None:
    """Raise TypeError/ValueError naming the argument (and ``op``) unless every tensor has the
    contract's shape, dtype, density and device. Sample values (window, forced) are range-checked
    on the CPU only: on a GPU that would synchronise with the host every frame, so the GPU kernels
    clamp an index into the table instead of reading out of bounds."""
    if table.dim() != 3:
        raise ValueError(f"{op}: table must be (F, Q, H), got shape {tuple(table.shape)}")
    F, Q, H = table.shape
    B, dev, wdt = cond.shape[0], table.device, table.dtype
    if not isinstance(sampling, Sampling):
        raise TypeError(f"{op}: sampling must be a fastsrnn.ops.sampling.Sampling, got {type(sampling).__name__}")
    if wdt not in (torch.float32, torch.bfloat16):
        raise TypeError(f"{op}: table must be torch.float32 or torch.bfloat16, got {wdt}")
    f32, i64 = (torch.float32,), (torch.int64,)
    for name, t, shape, dts in (("table", table, (F, Q, H), (wdt,)), ("cond", cond, (B, F, H), f32),
                                ("w3", w3, (H, H), (wdt,)), ("b3", b3, (H,), f32),
                                ("wo", wo, (Q, H), (wdt,)), ("bo", bo, (Q,), f32), ("window", window, (B, F), i64),
                                ("uniforms", uniforms, (B, F), f32),
                                ("inv_temperature", sampling.inv_temperature, (B,), f32),
                                ("out", out, (B, F), i64), ("forced", forced, (B, F), i64),
                                ("logits_out", logits_out, (B, F, Q), f32)):
        if t is not None:
            _check(op, name, t, shape, dts, dev)
    if dev.type == "cpu":
        _check_samples(op, "window", window, Q)
        if forced is not None:
            _check_samples(op, "forced", forced, Q)


def sample_frame_cpu(table, cond, w3, b3, wo, bo, window, uniforms, sampling: Sampling, out,
                     forced: Optional[torch.Tensor] = None, logits_out: Optional[torch.Tensor] = None,
                     num_threads: int = 0, check: bool = True) -> None:
    """The fused C++ op (OpenMP, AVX-512/AVX2/portable). num_threads: 0 = torch's thread count
    (the op uses fewer for small products). check: see the module docstring."""
    from fastsrnn.ops.build import cpu_extension

    if check:
        check_sample_frame_args("sample_frame_cpu", table, cond, w3, b3, wo, bo, window, uniforms,
                                sampling, out, forced, logits_out)
    if num_threads < 0:
        raise ValueError(f"sample_frame_cpu: num_threads must be >= 0 (0 = torch's), got {num_threads}")
    cpu_extension().sample_frame(table, cond, w3, b3, wo, bo, window, uniforms, sampling, out, forced, logits_out,
                                 int(num_threads))


def sample_frame_triton(table, cond, w3, b3, wo, bo, window, uniforms, sampling: Sampling, out,
                        forced: Optional[torch.Tensor] = None, logits_out: Optional[torch.Tensor] = None,
                        block_b: Optional[int] = None, path: Optional[str] = None,
                        scratch: Optional[dict] = None, check: bool = True) -> None:
    """The Triton kernels (compiled on a GPU; TRITON_INTERPRET=1 on the CPU). Two paths:

    - "split" (default from n_seq TRITON_SAMPLE_SPLIT_MIN_B, or H TRITON_SAMPLE_SPLIT_MIN_H: both in
      fastsrnn/ops/thresholds.py): each step split over
      sequence tiles x row slices of W3, tensor cores, 2F + 1 launches per frame
      (kernels/sample_frame_split.py);
    - "small" (default below it): one launch per frame, one program per block_b sequences
      (kernels/sample_frame.py).
    block_b: sequences per program, a power of two (>= 16 for "split"; default: the path's
    launch_config). scratch: a dict the caller owns where the kernels' scratch buffers are
    cached (default: one per kernel module, shared in the process). check: see the module docstring."""
    from fastsrnn.kernels import sample_frame as small

    if check:
        check_sample_frame_args("sample_frame_triton", table, cond, w3, b3, wo, bo, window, uniforms,
                                sampling, out, forced, logits_out)
    if path is None:
        big = (cond.shape[0] >= thresholds.TRITON_SAMPLE_SPLIT_MIN_B
               or table.shape[2] >= thresholds.TRITON_SAMPLE_SPLIT_MIN_H)
        path = "split" if big else "small"
    if path == "split":
        from fastsrnn.kernels.sample_frame_split import launch
    elif path == "small":
        launch = small.launch
    else:
        raise ValueError(f"sample_frame_triton: path must be 'split' or 'small', got {path!r}")
    launch(table, cond, w3, b3, wo, bo, window, uniforms, sampling, out, forced, logits_out,
           block_b=block_b, scratch=scratch)


def sample_frame_cuda(table, cond, w3, b3, wo, bo, window, uniforms, sampling: Sampling, out,
                      forced: Optional[torch.Tensor] = None, logits_out: Optional[torch.Tensor] = None,
                      workspace: Optional[torch.Tensor] = None, max_blocks: int = 0, check: bool = True) -> None:
    """The persistent CUDA kernel, one cooperative launch per frame (capturable in a CUDA graph).

    workspace: uint8 scratch of ``cuda_extension().workspace_bytes(B, H, Q)`` bytes on the table's
    device, 16-byte aligned, ZEROED when allocated and then left to this op (its first word is
    the grid barrier, which each launch leaves as it found it). Launches sharing one must be
    ordered on one stream. None: the extension's own per (device, B, H, Q), created on first use
    outside graph capture. max_blocks: cap on the grid (tuning; 0 = the kernel's choice).
    check: see the module docstring."""
    from fastsrnn.ops.build import cuda_extension

    if check:
        check_sample_frame_args("sample_frame_cuda", table, cond, w3, b3, wo, bo, window, uniforms,
                                sampling, out, forced, logits_out)
    ext = cuda_extension()
    if workspace is not None:
        Q, H = table.shape[1:]
        need = ext.workspace_bytes(cond.shape[0], H, Q)
        if (workspace.dtype != torch.uint8 or workspace.device != table.device or not workspace.is_contiguous()
                or workspace.numel() < need or workspace.data_ptr() % 16):
            raise ValueError(f"sample_frame_cuda: workspace must be a contiguous, 16-byte aligned uint8 tensor of "
                             f">= {need} bytes on {table.device}, got {workspace.dtype} ({workspace.numel()},) "
                             f"on {workspace.device}")
    if max_blocks < 0:
        raise ValueError(f"sample_frame_cuda: max_blocks must be >= 0 (0 = the kernel's choice), got {max_blocks}")
    ext.sample_frame(table, cond, w3, b3, wo, bo, window, uniforms, sampling, out, forced, logits_out, workspace,
                     int(max_blocks))

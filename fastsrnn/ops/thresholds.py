"""Every batch (n_seq) and width threshold that picks a kernel path or a backend, in one table.

The code that chooses a path reads it from here, and so does the performance model
(tools/perf_model.py): no copies. Tests lower a threshold with monkeypatch.setitem on
:data:`CPU_STREAM_MAX_B`, or monkeypatch.setattr on this module.
"""
from __future__ import annotations

# ops/sample_frame.sample_frame_triton: from this many sequences the split, tensor-core path
# (kernels/sample_frame_split.py) instead of one program per block of sequences
# (kernels/sample_frame.py).
TRITON_SAMPLE_SPLIT_MIN_B = 16
# ... and from this hidden width at any n_seq: the one-program kernel streams all of W3 and Wo
# through one SM per step. Measured on an H100 (BENCHMARKS.md, `python -m benchmarks.gpu_profile
# --paths`): the small path 2.2-6.6x slower than the split one at H 1024, at every n_seq.
TRITON_SAMPLE_SPLIT_MIN_H = 512

# kernels/frame_step.py: up to this many sequences the register form (multiply + tl.sum, HBM-bound),
# above it tl.dot tiles.
TRITON_FRAME_SMALL_MAX_B = 8

# backends/cpu.py: the largest batch at which the C++ weight-streaming linear beats torch's for the
# frame step, per frame-weight dtype. int8: torch must widen the whole matrix to fp32 per call, then
# multiply; (4096, 1024) on the 2-core EPYC, 2 threads: B 8 0.17 vs 1.09 ms, 128 2.45 vs 5.72,
# 256 5.5 vs 10.7 (largest measured).
CPU_STREAM_MAX_B = {"fp32": 128, "bf16": 4, "int8": 256}

# backends/__init__.py, 'auto' on a GPU: from this many sequences, per sample-tier weight dtype,
# the Triton split sample tier (tensor cores over all SMs) before the persistent CUDA kernel, whose
# time grows with every sequence. Measured on an H100 (BENCHMARKS.md, `python -m
# benchmarks.gpu_profile`): fp32 cuda 2.83 vs triton 2.92 ms/frame at 64 sequences, 5.06 vs 3.89
# at 128; bf16 0.96 vs 1.02 at 32, 1.73 vs 1.00 at 64.
AUTO_TRITON_MIN_SEQ = {"fp32": 65, "bf16": 33}


def dtype_key(dtype) -> str:
    """'fp32', 'bf16' or 'int8' for a torch dtype (the keys of the tables above)."""
    import torch

    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.int8: "int8"}.get(dtype, str(dtype))

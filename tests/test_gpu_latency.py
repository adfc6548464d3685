"""The device microbenchmark (csrc/cuda/microbench/latency.cu, run by benchmarks/gpu_latency.py)
builds, links and fails clearly on a machine without a GPU.

- it compiles for sm_90a with warnings as errors, and ptxas reports no spill and no stack, with
  few registers (the stream and all-gather kernels within their launch bounds);
- it times the project's grid barrier itself: csrc/cuda/grid_barrier.cuh, which sample_frame.cu
  includes too (no copy of the barrier anywhere else);
- without a GPU it prints one JSON error line naming the failed CUDA call and exits non-zero
  (not a crash); the wrapper parses, saves and tabulates its lines and kills it at its timeout;
- scripts/gpu_check.sh runs it first.
Skipped only where nvcc is absent; CI has it. nvcc is the cost (about 15-40 s): one build per
session (``latency_build``).
"""
import json
import re
import stat
import subprocess
from pathlib import Path

import pytest

from benchmarks import gpu_latency
from fastsrnn.tools.gpu_compile import parse_ptxas

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
needs_nvcc = pytest.mark.skipif(gpu_latency.find_nvcc() is None, reason="nvcc is not installed (CI has it)")
KERNELS = {"pingpong_kernel", "allgather_kernel", "barrier_kernel", "cluster_kernel", "stream_kernel", "chase_kernel"}


@pytest.fixture(scope="session")
def latency_build(tmp_path_factory):
    """(program path or None, nvcc's log with ptxas's report), built once per session."""
    if gpu_latency.find_nvcc() is None:
        pytest.skip("nvcc is not installed (CI has it)")
    return gpu_latency.build(tmp_path_factory.mktemp("latency"),
                             ["-Werror", "all-warnings", "-Xcompiler", "-Wall", "-Xptxas", "-v"])


@needs_nvcc
def test_builds_for_sm90a_without_spills(latency_build):
    exe, log = latency_build
    assert exe is not None, f"nvcc failed on latency.cu:\n{log[-4000:]}"
    entries = {}
    for part in log.split("Compiling entry function '")[1:]:
        name, rest = part.split("'", 1)
        assert "for 'sm_90a'" in rest.splitlines()[0], rest.splitlines()[0]
        entries[name] = parse_ptxas(rest.split("Compiling entry function", 1)[0])
    found = {k for k in KERNELS if any(k in name for name in entries)}
    assert found == KERNELS, sorted(entries)
    for name, r in entries.items():
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0 and r["stack"] == 0, f"{name}: {r}"
        # stream: __launch_bounds__(256, 2); allgather: (512, 1) with its batch of loads; the others are tiny
        limit = 128 if "stream_kernel" in name or "allgather_kernel" in name else 48
        assert 0 < r["registers"] <= limit, f"{name}: {r}"


def test_times_the_projects_own_barrier():
    bench = (CUDA_DIR / "microbench" / "latency.cu").read_text()
    assert '#include "../grid_barrier.cuh"' in bench and "grid_barrier<true>(" in bench
    assert '#include "grid_barrier.cuh"' in (CUDA_DIR / "sample_frame.cu").read_text()
    holders = [p.relative_to(CUDA_DIR).as_posix() for p in sorted(CUDA_DIR.rglob("*.cu*"))
               if "atom.add.release.gpu" in p.read_text()]
    assert holders == ["grid_barrier.cuh"], holders


def _has_gpu(exe) -> bool:
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    first = gpu_latency.parse_line(r.stdout.splitlines()[0]) if r.stdout else {}
    return first.get("name") == "device" and "error" not in first


@needs_nvcc
def test_without_gpu_prints_a_json_error_naming_the_call(latency_build):
    exe, log = latency_build
    assert exe is not None, log[-4000:]
    if _has_gpu(exe):
        pytest.skip("checks the behaviour of a machine without a GPU")
    rc = gpu_latency.run(exe, timeout=60)[0]
    assert rc not in (0, 124) and rc > 0, f"exit status {rc}: a failure, not a crash or a hang"
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    lines = r.stdout.splitlines()
    assert lines and r.returncode == rc
    records = [json.loads(line) for line in lines]  # every line is JSON
    first = records[0]
    assert first["name"] == "device" and re.match(r"cuda\w+\(.*\) failed: cuda\w+: \S", first["error"]), first
    # the wrapper: passed on as they come, and tabulated
    saved = []
    rc2, recs = gpu_latency.run(exe, 60, on_line=saved.append)
    assert rc2 == rc and recs == saved == records
    assert "ERROR cuda" in gpu_latency.table(recs)


def test_wrapper_kills_a_hung_program(tmp_path):
    fake = tmp_path / "hang"
    fake.write_text('#!/bin/sh\necho \'{"name": "device", "gpu": "x"}\'\necho half a line\nsleep 30\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    rc, recs = gpu_latency.run(fake, timeout=1)
    assert rc == 124
    assert [r["name"] for r in recs] == ["device", "unparsed", "timeout"]
    assert "ERROR killed after 1 s" in gpu_latency.table(recs)


def test_table_rows():
    recs = [{"name": "device", "gpu": "NVIDIA H100"},
            {"name": "l2_flag_oneway", "unit": "ns", "median": 612.3, "p10": 590.0, "p90": 650.1, "mean": 620.0,
             "n": 4000, "params": {"mode": "relaxed", "partner_block": 1}},
            {"name": "max_active_clusters", "unit": "clusters", "value": 7, "params": {"cluster_ctas": 16}},
            {"name": "hbm_stream_read", "unit": "GB/s", "median": 3012.0, "params": {}},
            {"name": "cluster_step", "error": "cudaLaunchKernelEx(...) failed: x", "params": {"cluster_ctas": 16}},
            {"name": "done", "failures": 1}]
    rows = gpu_latency.table(recs).splitlines()
    assert len(rows) == 4
    assert "612 ns (590-650)" in rows[0] and "mode=relaxed partner_block=1" in rows[0]
    assert "7 clusters" in rows[1] and "3012 GB/s" in rows[2] and "ERROR cudaLaunchKernelEx" in rows[3]


def test_gpu_check_runs_it_first():
    script = (ROOT / "scripts" / "gpu_check.sh").read_text()
    steps = re.findall(r"^\s*step (\w+) ", script, re.M)
    assert steps and steps[0] == "latency", steps
    assert "benchmarks.gpu_latency" in script

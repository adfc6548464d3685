"""The latencies that step 2 of the GPU work rests on, measured on the device (docs/DESIGN.md §8).

    python -m benchmarks.gpu_latency [--out DIR] [--timeout 60]

Builds csrc/cuda/microbench/latency.cu with nvcc for sm_90a (a standalone program: no torch,
no fastsrnn import), runs it under a timeout, echoes its JSON lines as they come and saves them
to DIR/latency.json (default $GPU_CHECK_OUT, else gpu_check_out), then prints a table (the
program itself is built in build/gpu_latency/). Exit
status: the program's (0 when every number came), 1 when the build fails, 124 on the timeout.
scripts/gpu_check.sh runs it first; about half a minute, most of it nvcc.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc" / "cuda" / "microbench" / "latency.cu"
NVCC_FLAGS = ["-std=c++17", "-O3", "-gencode=arch=compute_90a,code=sm_90a"]


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    return found or next((str(p) for p in [Path("/usr/local/cuda/bin/nvcc")] if p.exists()), None)


def build(out_dir: Path, extra_flags=(), nvcc: str | None = None) -> tuple[Path | None, str]:
    """nvcc the program into out_dir/latency: (its path, or None; nvcc's log)."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        return None, "nvcc is not installed"
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = out_dir / "latency"
    cmd = [nvcc, *NVCC_FLAGS, *extra_flags, str(SOURCE), "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return (exe if r.returncode == 0 else None), " ".join(cmd) + "\n" + r.stdout + r.stderr


def parse_line(line: str) -> dict:
    """One output line as a record; a line that is not a JSON object becomes {"name": "unparsed"}."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        rec = None
    return rec if isinstance(rec, dict) and "name" in rec else {"name": "unparsed", "text": line}


def run(exe: Path, timeout: float, on_line=None) -> tuple[int, list[dict]]:
    """Run the program, at most `timeout` seconds (then its process group is killed and a
    {"name": "timeout"} record added, return code 124); its records in order."""
    proc = subprocess.Popen([str(exe)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    expired = threading.Event()

    def kill():
        expired.set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout, kill)
    timer.start()
    records = []
    try:
        for line in proc.stdout:
            if line.strip():
                records.append(parse_line(line.strip()))
                if on_line:
                    on_line(records[-1])
        rc = proc.wait()
    finally:
        timer.cancel()
    if expired.is_set():
        records.append({"name": "timeout", "error": f"killed after {timeout:g} s"})
        if on_line:
            on_line(records[-1])
        rc = 124
    return rc, records


def table(records: list[dict]) -> str:
    """One row per number: name, median (p10-p90) with its unit, the parameters; errors as such."""
    rows = []
    for r in records:
        if r["name"] in ("device", "done") and "error" not in r:
            continue
        params = " ".join(f"{k}={v}" for k, v in r.get("params", {}).items())
        if "error" in r:
            value = "ERROR " + r["error"]
        elif "median" in r and "p10" in r:
            value = f"{r['median']:.0f} {r['unit']} ({r['p10']:.0f}-{r['p90']:.0f})"
        elif "median" in r:
            value = f"{r['median']:.0f} {r['unit']}"
        elif "value" in r:
            value = f"{r['value']} {r['unit']}"
        else:
            value = r.get("text", "")
        rows.append(f"{r['name']:<20} {value:<32} {params}")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("GPU_CHECK_OUT", "gpu_check_out")),
                   help="folder for latency.json [default: $GPU_CHECK_OUT or gpu_check_out]")
    p.add_argument("--build-dir", type=Path, default=ROOT / "build" / "gpu_latency",
                   help="where the program is built [default: build/gpu_latency]")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds the program may run [default: 60]")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    exe, log = build(args.build_dir)
    if exe is None:
        print(log, file=sys.stderr)
        return 1
    out = args.out / "latency.json"
    records: list[dict] = []

    def save(rec):  # echoed and saved as each line comes, so that a killed run keeps what it measured
        print(json.dumps(rec), flush=True)
        records.append(rec)
        out.write_text(json.dumps(records, indent=1) + "\n")

    rc, _ = run(exe, args.timeout, on_line=save)
    print("\n" + table(records))
    return rc


if __name__ == "__main__":
    sys.exit(main())

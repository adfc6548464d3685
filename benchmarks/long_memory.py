"""Peak memory of a long generation does not grow with its length (issue: multi-minute generation).

Runs ``fastsrnn generate`` end to end (streaming to disk, state saves, finalize) in a fresh
process per length and reports the peak memory during the generation and its speed, both taken
with ``fastsrnn bench``'s one method (fastsrnn/tools/bench_measure.py ``measured``: on the CPU
the process's peak RSS, VmHWM, reset when the generation starts; on CUDA torch's peak
allocation). Usage:

    python -m benchmarks.long_memory --preset tiny --seconds 30 360 --backend auto [--device cuda]

The model is randomly initialised: memory and speed do not depend on training.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, sys
from fastsrnn.generation.longgen import GenerationRun
from fastsrnn.generation.settings import GenerationSettings
from fastsrnn.tools.bench_measure import measured
ckpt, out, seconds, backend, n_seq, device = sys.argv[1:3] + [float(sys.argv[3]), sys.argv[4], int(sys.argv[5]),
                                                              sys.argv[6]]
with measured(device) as m:  # fastsrnn bench's one timing and peak-memory method
    settings = GenerationSettings(seconds=seconds, n_seq=n_seq)
    run = GenerationRun.create(ckpt, out, settings, backend=backend, device=device)
    files = run.run(progress=False)
print(json.dumps({"seconds": seconds, "n_seq": n_seq, "backend": run.gen.backend_name, "device": device,
                  "wall_s": m.seconds, "samples_per_s_per_seq": seconds * run.settings["sample_rate"] / m.seconds,
                  "peak_mib": m.peak_mib, "start_mib": m.start_mib, "peak_growth_mib": m.growth_mib}))
"""

def measure(preset: str, lengths, backend: str, n_seq: int, device: str = "cpu") -> list:
    import torch

    from fastsrnn import SampleRNN, SampleRNNConfig
    from fastsrnn.checkpoint import save_checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        ckpt = save_checkpoint(Path(tmp) / "model.pt", SampleRNN(SampleRNNConfig.from_name(preset)))
        for i, seconds in enumerate(lengths):
            res = subprocess.run([sys.executable, "-c", _CHILD, str(ckpt), str(Path(tmp) / f"gen{i}"), str(seconds),
                                  backend, str(n_seq), device], capture_output=True, text=True, check=True)
            r = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(r)
            peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:7.1f} MiB"
            print(f"{preset} {seconds:>6.0f} s x {n_seq}  backend {r['backend']:<6} peak {peak}  "
                  f"{r['samples_per_s_per_seq']:9,.0f} samples/s/seq  wall {r['wall_s']:.1f} s", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="model preset [default: tiny]")
    p.add_argument("--seconds", type=float, nargs="+", default=[30.0, 360.0],
                   help="lengths to compare [default: 30 360]")
    p.add_argument("--backend", default="auto", help="generation backend [default: auto]")
    p.add_argument("--n-seq", type=int, default=1, help="sequences in parallel [default: 1]")
    p.add_argument("--device", default="cpu", help="cpu or cuda [default: cpu]")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    rows = measure(args.preset, args.seconds, args.backend, args.n_seq, args.device)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if rows[0]["peak_mib"] is not None and rows[-1]["peak_mib"] is not None:
        growth = rows[-1]["peak_mib"] - rows[0]["peak_mib"]
        print(f"peak memory growth from {rows[0]['seconds']:.0f} s to {rows[-1]['seconds']:.0f} s: {growth:+.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peak memory of a long generation does not grow with its length (issue: multi-minute generation).

Runs ``fastsrnn generate`` end to end (streaming to disk, state saves, finalize) in a fresh
process per length and reports each process's peak RSS and speed. Usage:

    python -m benchmarks.long_memory --preset tiny --seconds 30 360 --backend auto

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
import json, resource, sys, time
from fastsrnn.generation.longgen import GenerationRun
ckpt, out, seconds, backend, n_seq = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], int(sys.argv[5])
t0 = time.perf_counter()
run = GenerationRun.create(ckpt, out, seconds=seconds, n_seq=n_seq, backend=backend, device="cpu")
files = run.run(progress=False)
took = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "n_seq": n_seq, "backend": run.gen.backend_name, "wall_s": took,
                  "samples_per_s_per_seq": seconds * run.settings["sample_rate"] / took,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(preset: str, lengths, backend: str, n_seq: int) -> list:
    import torch

    from fastsrnn import SampleRNN, SampleRNNConfig
    from fastsrnn.checkpoint import save_checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        ckpt = save_checkpoint(Path(tmp) / "model.pt", SampleRNN(SampleRNNConfig.from_name(preset)))
        for i, seconds in enumerate(lengths):
            res = subprocess.run([sys.executable, "-c", _CHILD, str(ckpt), str(Path(tmp) / f"gen{i}"), str(seconds),
                                  backend, str(n_seq)], capture_output=True, text=True, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"{preset} {seconds:>6.0f} s x {n_seq}  backend {rows[-1]['backend']:<6} "
                  f"peak RSS {rows[-1]['peak_rss_mib']:7.1f} MiB  {rows[-1]['samples_per_s_per_seq']:9,.0f} samples/s/seq  "
                  f"wall {rows[-1]['wall_s']:.1f} s", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="model preset [default: tiny]")
    p.add_argument("--seconds", type=float, nargs="+", default=[30.0, 360.0], help="lengths to compare [default: 30 360]")
    p.add_argument("--backend", default="auto", help="generation backend [default: auto]")
    p.add_argument("--n-seq", type=int, default=1, help="sequences in parallel [default: 1]")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    rows = measure(args.preset, args.seconds, args.backend, args.n_seq)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    growth = rows[-1]["peak_rss_mib"] - rows[0]["peak_rss_mib"]
    print(f"peak RSS growth from {rows[0]['seconds']:.0f} s to {rows[-1]['seconds']:.0f} s: {growth:+.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

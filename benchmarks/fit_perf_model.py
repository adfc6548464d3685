"""Fit the performance model's step costs to the measured H100 rows, and print pred/meas per row.

    python -m benchmarks.fit_perf_model            # the committed constants' pred/meas per row
    python -m benchmarks.fit_perf_model --fit      # fit them again (scipy), print the values and the rows

The model (fastsrnn/tools/perf_model.py, chains in fastsrnn/tools/perf_chains.py) predicts each
fused row of benchmarks/results/gpu-h100-e25b753.json (triton and cuda, fp32 and bf16, with and
without graphs, every preset and n_seq there); the eager rows are not modelled. The fit minimises
the largest |log(pred/meas)| (a smooth maximum, then Nelder-Mead) with every constant held to
the physical range in BOUNDS (wide around the bounded fit of the H100 review of 2026-12-08,
issue 19, App. B). Paste the printed values into perf_model.Calibration; tests/test_perf_model.py
checks that the committed ones keep every row within 0.8-1.25. Offline, no GPU: the check takes
seconds, the fit a minute or two.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, replace
from pathlib import Path

from fastsrnn.tools import perf_model as pm

ROOT = Path(__file__).resolve().parents[1]
# name: (low, high) in the Calibration's unit: physical ranges, wide around the review's bounded fit.
BOUNDS = {"t_rt": (0.2e-6, 0.6e-6), "t_bar": (1.0e-6, 3.0e-6), "t_node": (0.3e-6, 2.0e-6),
          "c_sm": (0.5e-9, 1.2e-9), "t_draw_triton": (1.0e-6, 8.0e-6), "t_draw_cuda": (1.0e-6, 5.0e-6),
          "t_sync": (0.1e-6, 1.0e-6),
          "cuda_mac_fp32": (5e-12, 80e-12), "cuda_mac_bf16": (5e-12, 80e-12),
          "l2_bytes_per_s": (5e12, 12e12), "host_frame": (0.2e-3, 0.8e-3),
          "host_launch": (10e-6, 60e-6), "launch_gap": (2e-6, 20e-6)}
BAND = (0.8, 1.25)


def measured_rows(path: str = pm.MEASURED_ROWS) -> list:
    """The modelled rows of a bench JSON: (preset, n_seq, backend, measured s/frame)."""
    rows = json.loads((ROOT / path).read_text())["rows"]
    return [(r["preset"], r["n_seq"], r["backend"], r["ms_per_frame"] / 1e3) for r in rows
            if r["backend"].split(":")[0] in pm.BACKENDS]


def ratios(cal: pm.Calibration, rows: list) -> list:
    return [pm.predict(p, n, b, cal=cal).time_per_frame_s / t for p, n, b, t in rows]


def fit(rows: list, start: pm.Calibration = pm.Calibration()) -> pm.Calibration:
    import numpy as np
    from scipy.optimize import minimize

    names = list(BOUNDS)
    lo = np.log([BOUNDS[n][0] for n in names])
    hi = np.log([BOUNDS[n][1] for n in names])

    def cal_of(x):
        return replace(start, **{n: float(math.exp(v)) for n, v in zip(names, np.clip(x, lo, hi))})

    def loss(x, sharp):
        e = np.abs(np.log(ratios(cal_of(x), rows)))
        return np.log(np.sum(np.exp(sharp * e))) / sharp + 10 * np.sum(np.maximum(0, x - hi) + np.maximum(0, lo - x))

    x = np.log([getattr(start, n) for n in names])
    for sharp in (10, 40, 200):
        x = minimize(loss, x, args=(sharp,), method="Nelder-Mead",
                     options=dict(maxiter=3000, xatol=1e-4, fatol=1e-6, adaptive=True)).x
    return cal_of(x)


def report(cal: pm.Calibration, rows: list) -> str:
    r = ratios(cal, rows)
    lines = ["| preset | n_seq | backend | measured ms/frame | pred ms/frame | pred/meas | largest term |",
             "|---|---:|---|---:|---:|---:|---|"]
    for (p, n, b, t), x in zip(rows, r):
        pred = pm.predict(p, n, b, cal=cal)
        lines.append(f"| {p} | {n} | {b} | {t * 1e3:.3f} | {pred.time_per_frame_s * 1e3:.3f} | {x:.2f} | "
                     f"{pred.largest_term} |")
    inside = sum(BAND[0] <= x <= BAND[1] for x in r)
    lines.append(f"{len(r)} rows: pred/meas {min(r):.3f} to {max(r):.3f}; {inside} within {BAND[0]}-{BAND[1]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fit_perf_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fit", action="store_true", help="fit the constants again (needs scipy)")
    args = p.parse_args(argv)
    rows = measured_rows()
    cal = fit(rows) if args.fit else pm.Calibration()
    if args.fit:
        for name, v in asdict(cal).items():
            print(f"{name} = {v:.4g}")
    print(report(cal, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The calibrated performance model (fastsrnn/tools/perf_model.py, chains in perf_chains.py).

Fits nothing: the committed Calibration must put every measured fused row of
benchmarks/results/gpu-h100-e25b753.json within 0.8-1.25 of its time (benchmarks/fit_perf_model.py
refits and prints the same ratios), and each kernel's step counts must come from the code's launch
configs: the launches frame_step_triton really makes, and a changed launch config or threshold
changes the model's counts with it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fastsrnn.config import SampleRNNConfig
from fastsrnn.tools import perf_chains as pc
from fastsrnn.tools import perf_model as pm

ROOT = Path(__file__).resolve().parents[1]
ROWS = json.loads((ROOT / pm.MEASURED_ROWS).read_text())["rows"]
BAND = (0.8, 1.25)
# Rows of the JSON the model does not predict, and why.
EXCLUDED = {"eager": "torch ops and cuBLAS per op (the reference), not the fused kernels the model's chains describe"}
FUSED = [r for r in ROWS if r["backend"].split(":")[0] in pm.BACKENDS]


def test_every_row_is_modelled_or_excluded_with_a_reason():
    backends = {r["backend"].split(":")[0] for r in ROWS}
    assert backends == set(pm.BACKENDS) | set(EXCLUDED)
    assert len(FUSED) == 36  # 2 presets x 3 n_seq x (triton, cuda) x (fp32, bf16, fp32 without graphs)
    assert {r["n_seq"] for r in FUSED} == {1, 16, 128}


@pytest.mark.parametrize("row", FUSED, ids=lambda r: f"{r['preset']}-{r['backend']}-n{r['n_seq']}")
def test_measured_row_within_band(row):
    p = pm.predict(row["preset"], row["n_seq"], row["backend"])
    ratio = p.time_per_frame_s * 1e3 / row["ms_per_frame"]
    assert BAND[0] <= ratio <= BAND[1], (f"pred {p.time_per_frame_s * 1e3:.3f} ms vs measured "
                                         f"{row['ms_per_frame']:.3f} ms: {ratio:.2f}; largest term {p.largest_term}")


def test_frame_kernels_are_the_launches_frame_step_triton_makes():
    """Record (without running) the launches of one frame step of tiny (L 2, skips) at each
    batch path: one modelled kernel per launch, with its grid and warps."""
    from fastsrnn.kernels import frame_step as k
    from fastsrnn.model import SampleRNN
    from fastsrnn.ops.export import export_inference
    from fastsrnn.ops.frame_step import FusedFrameWeights, frame_step_triton
    from tests.helpers import record_launches

    cfg = SampleRNNConfig.from_name("tiny")
    torch.manual_seed(0)
    model = SampleRNN(cfg).eval()
    for dtype in (torch.float32, torch.bfloat16):
        fw = FusedFrameWeights.from_inference(export_inference(model).to("cpu", dtype, dtype))
        for B in (1, 16, 128):
            state = model.initial_state(B, "zeros")
            window = torch.zeros(B, cfg.frame_size, dtype=torch.int64)
            calls, restore = record_launches(k, run=False)
            try:
                frame_step_triton(fw, window, state)
            finally:
                restore()
            kernels = pc.frame_kernels.__wrapped__(cfg, B, dtype == torch.bfloat16)
            assert len(calls) == len(kernels), (B, [c[0] for c in calls])
            for (_, grid, _, kw), kern in zip(calls, kernels):
                assert math.prod(grid) == kern.grid and kw["num_warps"] == kern.warps, (B, kern.name)
                assert all(lp.in_flight == max(1, kw["num_stages"] - 1) for lp in kern.loops)


def test_counts_follow_the_launch_configs(monkeypatch):
    """Halving a BLOCK_K or BLOCK_H in the kernels' own config functions doubles the model's trip
    counts; a threshold moved in ops/thresholds.py moves the model's path; the CUDA plan follows
    the header's constants."""
    from fastsrnn.kernels import frame_step as kf
    from fastsrnn.kernels import sample_frame_split as ks
    from fastsrnn.ops import thresholds

    cfg = SampleRNNConfig.from_name("dadabots-2tier")
    H, Q, F = cfg.dim, cfg.q_levels, cfg.frame_size
    for B, bf16 in ((1, False), (16, True), (128, False)):
        lc = ks.launch_config(B, F, Q, H, w_bf16=bf16)
        a, _, launches, n = pc.split_kernels.__wrapped__(cfg, B, bf16)
        assert [lp.iterations for lp in a.loops] == [math.ceil(H / lc["stage_a"]["BLOCK_K"]),
                                                      math.ceil(Q / lc["stage_a"]["BLOCK_Q"])]
        assert a.grid == math.ceil(B / lc["stage_a"]["BLOCK_B"]) * lc["NS"] and launches == 2 * F + 1
        assert n["gather"] == F * math.ceil(H / lc["stage_b"]["BLOCK_H"])
        before = [k.loops[-1].iterations for k in pc.frame_kernels.__wrapped__(cfg, B, bf16)]
        split_before = (a, n)

        def halve(fn, key):
            def patched(*args, **kw):
                c = fn(*args, **kw)
                (c["stage_a"] if "stage_a" in c else c)[key] //= 2
                return c
            return patched

        with monkeypatch.context() as m:
            m.setattr(kf, "layer_config", halve(kf.layer_config, "BLOCK_K"))
            m.setattr(kf, "linear_config", halve(kf.linear_config, "BLOCK_K"))
            m.setattr(ks, "launch_config", halve(ks.launch_config, "BLOCK_K"))
            after = [k.loops[-1].iterations for k in pc.frame_kernels.__wrapped__(cfg, B, bf16)]
            a2 = pc.split_kernels.__wrapped__(cfg, B, bf16)[0]
        assert after == [2 * x for x in before], B
        assert a2.loops[0].iterations == 2 * split_before[0].loops[0].iterations
    tiny = SampleRNNConfig.from_name("tiny")
    assert pc.triton_path(tiny, 1) == "small" and pc.triton_path(tiny, 16) == "split"
    monkeypatch.setattr(thresholds, "TRITON_SAMPLE_SPLIT_MIN_B", 10 ** 6)
    assert pc.triton_path(tiny, 16) == "small" and pc.triton_path(cfg, 16) == "split"  # H 1024 >= MIN_H
    monkeypatch.setattr(thresholds, "TRITON_SAMPLE_SPLIT_MIN_H", 10 ** 6)
    assert pc.triton_path(cfg, 16) == "small"


def test_cuda_plan_reads_the_header(monkeypatch, tmp_path):
    cfg = SampleRNNConfig.from_name("dadabots-2tier")
    c = pc.cuda_constants()
    plan = pc.cuda_plan(cfg, 128, False)
    assert plan["grid"] == math.ceil(cfg.dim / math.ceil(cfg.dim / min(pc.SMS, cfg.dim // c["kSfRowsPerBlock"])))
    assert plan["tile"] == c["kSfTile"] and plan["threads"] == c["kSfThreads"]
    header = tmp_path / "sample_frame.cuh"
    header.write_text(pc.CUDA_HEADER.read_text().replace(f"kSfTile = {c['kSfTile']};", "kSfTile = 4;"))
    monkeypatch.setattr(pc, "CUDA_HEADER", header)
    pc.cuda_constants.cache_clear()
    try:
        assert pc.cuda_plan(cfg, 128, False)["tile"] == 4
        assert pc.cuda_step_counts.__wrapped__(cfg, 128, False)["tiles"] == 32
    finally:
        pc.cuda_constants.cache_clear()


def test_predict_prints_the_calibrated_model(capsys):
    from fastsrnn.tools.bench import main

    assert main(["--predict", "--presets", "dadabots-2tier", "--n-seq", "1", "16", "128"]) == 0
    text = capsys.readouterr().out
    assert "calibrated latency-chain model" in text and pm.MEASURED_ROWS in text
    assert "| dadabots-2tier | cuda:bf16 | bf16 | 1 |" in text and "largest term" in text

"""The benchmark runner: correctness first (refuses a disagreeing backend), then its table and JSON;
its measuring API (one timing and peak-memory method); the GPU performance model."""
import json
import re

import pytest
import torch

from fastsrnn import SampleRNN, SampleRNNConfig
from fastsrnn.backends import backend_status, make_backend
from fastsrnn.backends.folded import FoldedBackend
from fastsrnn.tools import perf_model
from fastsrnn.tools.bench import Row, format_table, main
from fastsrnn.tools.bench_measure import check_against_eager, measured, parse_variant, time_frames

SMALL = dict(frame_size=4, emb_size=8, dim=32, n_rnn=2, q_levels=16)


def test_runner_writes_table_and_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("fastsrnn.config", fromlist=["PRESETS"]).PRESETS, "bench-small",
                        SampleRNNConfig(**SMALL))
    out = tmp_path / "b.json"
    backends = ["eager", "folded"] + (["cpu"] if backend_status("cpu", "cpu")[0] else [])  # cpu needs a C++ compiler
    assert main(["--presets", "bench-small", "--n-seq", "1", "2", "--backends", *backends,
                 "--frames", "4", "--quick", "--length-frames", "5", "40", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"| bench-small | 2 | {backends[-1]} |" in text and "all results match" in text.lower()
    assert "pred ms/frame" not in text  # no prediction columns on the CPU
    payload = json.loads(out.read_text())
    assert {"machine", "versions", "floor", "config", "rows"} <= set(payload)
    assert payload["versions"]["torch"] == torch.__version__
    rows = payload["rows"]
    assert len(rows) == 2 * len(backends)
    assert all(r["samples_per_s_per_seq"] > 0 and r["floor_fraction"] > 0 for r in rows)
    assert all(r["speedup_vs_eager"] for r in rows)
    assert all(r["peak_mib"] is None or r["peak_mib"] > 10 for r in rows)  # a process with torch loaded
    length = payload["length"]
    assert [(r["backend"], r["frames"]) for r in length] == [(b, n) for b in backends for n in (5, 40)]
    assert all(r["peak_growth_mib"] is None or r["peak_growth_mib"] < 50 for r in length)


def test_bad_arguments_fail_before_timing(capsys):
    with pytest.raises(SystemExit, match="--backends"):
        main(["--presets", "tiny", "--backends", "cpu:fp8"])
    with pytest.raises(SystemExit, match="--n-seq"):
        main(["--presets", "tiny", "--n-seq", "0"])
    assert "floor on this machine" not in capsys.readouterr().out


class _WrongBackend(FoldedBackend):
    """Draws one level higher than it should: the runner must refuse to time it."""

    name = "wrong"

    def sample_frame(self, cond, window, uniforms, sampling, out, forced=None, logits_out=None):
        super().sample_frame(cond, window, uniforms, sampling, out, forced, logits_out)
        out.add_(1).clamp_(max=self.cfg.q_levels - 1)


def test_refuses_a_backend_that_disagrees():
    torch.manual_seed(0)
    model = SampleRNN(SampleRNNConfig(**SMALL)).eval()
    eager = make_backend("eager", model, "cpu")
    folded = make_backend("folded", model, "cpu")
    assert check_against_eager(model, folded, eager, 3, "cpu").startswith(("match", "near-tie"))
    with pytest.raises(RuntimeError, match="refusing to time it"):
        check_against_eager(model, _WrongBackend(model, "cpu"), eager, 3, "cpu")


def test_low_precision_check_measures_the_logits_error():
    from fastsrnn.tools.bench_measure import check_low_precision

    torch.manual_seed(0)
    model = SampleRNN(SampleRNNConfig(**SMALL)).eval()
    eager = make_backend("eager", model, "cpu")
    bf16 = make_backend("folded", model, "cpu", dtype=torch.bfloat16, frame_dtype=torch.bfloat16)
    assert "rel. err" in check_low_precision(model, bf16, eager, 2, "cpu")
    with pytest.raises(RuntimeError, match="relative error"):
        check_low_precision(model, bf16, eager, 2, "cpu", limit=1e-7)  # bf16 cannot be that close


def test_variants_use_the_current_backend_names():
    with pytest.warns(DeprecationWarning):
        assert parse_variant("ref:bf16")[0] == "folded"
    assert parse_variant("cuda:nograph") == ("cuda", {"graphs": False})
    with pytest.raises(ValueError, match="unknown option"):
        parse_variant("cpu:fp8")


def test_one_timing_and_peak_memory_method():
    with measured("cpu") as m:
        x = torch.ones(8 * 2**20)  # 32 MiB, touched
        x += 1
    assert m.seconds > 0
    assert m.peak_mib is None or (m.peak_mib >= m.start_mib and m.growth_mib >= 0)
    torch.manual_seed(0)
    model = SampleRNN(SampleRNNConfig(**SMALL)).eval()
    t = time_frames(model, make_backend("folded", model, "cpu"), 2, "cpu", frames=3, repeats=3)
    assert t.seconds_per_frame > 0 and len(t.repeats) == 3 and sorted(t.repeats)[1] == t.seconds_per_frame


def test_prediction_columns_only_when_predicted():
    base = dict(preset="p", n_seq=1, backend="cuda", ms_per_frame=2.0, samples_per_s_per_seq=8000.0,
                samples_per_s=8000.0, realtime_factor=0.5, speedup_vs_eager=None, gb_per_s=1.0,
                floor_fraction=0.5, peak_mib=None, check="match")
    assert "pred" not in format_table([Row(**base)])
    text = format_table([Row(**base, pred_ms_per_frame=1.0, pred_largest_term="frame tier: launches")])
    assert "| pred ms/frame | pred/meas |" in text and "| 1.000 | 0.50 | frame tier: launches |" in text


def test_predict_needs_no_gpu(capsys):
    assert main(["--predict", "--gpu", "H100-SXM", "--presets", "dadabots-2tier", "--n-seq", "1", "16"]) == 0
    text = capsys.readouterr().out
    assert "H100-SXM" in text and "| dadabots-2tier | triton:bf16 | bf16 | 16 |" in text
    assert "floor on this machine" not in text  # nothing was timed


# --- the performance model -----------------------------------------------------------------------

def test_gpu_names():
    assert perf_model.gpu_for_device_name("NVIDIA H100 80GB HBM3") == "H100-SXM"
    assert perf_model.gpu_for_device_name("NVIDIA H200") == "H200"
    assert perf_model.gpu_for_device_name("NVIDIA H100 PCIe") is None  # other bandwidth: not modelled
    assert perf_model.gpu_for_device_name("NVIDIA A100-SXM4-80GB") is None


@pytest.mark.parametrize("preset", ["tiny", "dadabots-2tier", "dadabots-2tier-gru"])
def test_frame_tier_bytes_match_the_exported_weights(preset):
    from fastsrnn.ops.export import export_inference

    cfg = SampleRNNConfig.from_name(preset)
    torch.manual_seed(0)
    w = export_inference(SampleRNN(cfg).eval())
    assert perf_model.frame_tier_bytes(cfg, "fp32") == w.nbytes_frame_tier()
    bf16 = w.to("cpu", torch.bfloat16, torch.bfloat16)
    assert perf_model.frame_tier_bytes(cfg, "bf16") == bf16.nbytes_frame_tier()


def test_torch_frame_kernels_count_what_frame_step_ref_launches():
    """Count the ops frame_step_ref dispatches (each a kernel on a GPU) with a dispatch-mode hook."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from fastsrnn.ops.export import export_inference
    from fastsrnn.ops.frame_step import frame_step_ref

    VIEWS = {"view", "split", "chunk", "t", "slice", "select", "empty", "unsqueeze", "expand", "detach", "alias"}

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ not in VIEWS:  # a view launches nothing
                Count.n += 1
            return func(*args, **(kwargs or {}))

    for dtype, wd in ((None, "fp32"), (torch.bfloat16, "bf16")):
        for cfg in (SampleRNNConfig(**SMALL), SampleRNNConfig(**SMALL, rnn_type="gru")):
            torch.manual_seed(0)
            model = SampleRNN(cfg).eval()
            w = export_inference(model).to("cpu", frame_dtype=dtype)
            state = model.initial_state(2, "random", torch.Generator().manual_seed(0))
            window = torch.randint(0, cfg.q_levels, (2, cfg.frame_size))
            Count.n = 0
            with torch.no_grad(), Count():
                frame_step_ref(w, window, state)
            assert Count.n == perf_model.torch_frame_kernels(cfg, wd), (cfg.rnn_type, wd)


def test_performance_model_is_self_consistent():
    cfg = SampleRNNConfig.from_name("dadabots-2tier")
    assert perf_model.frame_tier_bytes(cfg, "bf16") * 2 == perf_model.frame_tier_bytes(cfg, "fp32")
    assert perf_model.frame_tier_bytes(cfg, "fp32") > perf_model.GPUS["H100-SXM"].l2_bytes  # HBM-bound
    for gpu in perf_model.GPUS:
        for backend in perf_model.BACKENDS:
            for wd in ("fp32", "bf16"):
                preds = [perf_model.predict(cfg, n, backend, wd, gpu) for n in (1, 2, 4, 8, 16, 32, 64, 128)]
                for a, b in zip(preds, preds[1:]):  # more sequences never fewer samples/s in all
                    assert b.samples_per_s >= a.samples_per_s * (1 - 1e-9), (gpu, backend, wd, a.n_seq, b.n_seq)
                for p in preds:
                    assert p.time_per_frame_s == pytest.approx(sum(p.terms.values()))
                    assert p.terms[p.largest_term] == max(p.terms.values())
                    assert p.samples_per_s == pytest.approx(p.n_seq * cfg.frame_size / p.time_per_frame_s)
                    assert p.flops == pytest.approx(2 * p.n_seq * (perf_model.frame_tier_params(cfg)
                                                                   + cfg.frame_size * (cfg.dim ** 2 + 256 * cfg.dim)))
                    assert p.kernels > 0 and p.bytes == p.hbm_bytes + p.l2_bytes
    for backend in perf_model.BACKENDS:  # H200's faster HBM never predicts slower; bf16 moves half the weights
        for n in (1, 16, 128):
            h100, h200 = (perf_model.predict(cfg, n, backend, "fp32", g) for g in ("H100-SXM", "H200"))
            assert h200.time_per_frame_s <= h100.time_per_frame_s
            fp32, bf16 = (perf_model.predict(cfg, n, backend, d) for d in ("fp32", "bf16"))
            assert bf16.hbm_bytes < fp32.hbm_bytes
    cuda = perf_model.predict(cfg, 1, "cuda", "bf16")
    assert cuda.kernels <= 15 + 1 + 2  # fused frame tier (<= 15) + the persistent launch + graph copies
    nograph, graph = (perf_model.predict(cfg, 1, b) for b in ("cuda:nograph", "cuda"))
    assert nograph.time_per_frame_s > graph.time_per_frame_s


@pytest.mark.parametrize("argv,message", [
    (["--json", "{tmp}"], "is a folder; give a file path"),
    (["--json", "{tmp}/missing/bench.json"], "cannot write into"),
    (["--device", "tpu"], "--device"),
])
def test_bad_arguments_fail_before_any_timing(tmp_path, capsys, argv, message):
    """A --json that cannot be written, or an unknown device, stops the bench at once (it used to
    fail only after the whole run)."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit, match=re.escape(message)):
        main(["--presets", "tiny", "--n-seq", "1", *argv])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_cuda_device_without_a_gpu_is_a_clear_error():
    with pytest.raises(SystemExit, match="--device cuda, but torch .* sees no GPU"):
        main(["--device", "cuda", "--presets", "tiny"])

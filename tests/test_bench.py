"""The benchmark runner: correctness first (refuses a disagreeing backend), then its table and JSON."""
import json

import pytest
import torch

from fastsrnn import SampleRNN, SampleRNNConfig
from fastsrnn.backends import backend_status, make_backend
from fastsrnn.backends.folded import FoldedBackend
from fastsrnn.tools.bench import check_against_eager, main

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
    payload = json.loads(out.read_text())
    assert {"machine", "versions", "floor", "config", "rows"} <= set(payload)
    assert payload["versions"]["torch"] == torch.__version__
    rows = payload["rows"]
    assert len(rows) == 2 * len(backends) and all(r["samples_per_s_per_seq"] > 0 and r["floor_fraction"] > 0 for r in rows)
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

    def sample_frame(self, cond, window, uniforms, inv_temperature, argmax, out, forced=None, logits_out=None):
        super().sample_frame(cond, window, uniforms, inv_temperature, argmax, out, forced, logits_out)
        out.add_(1).clamp_(max=self.cfg.q_levels - 1)


def test_refuses_a_backend_that_disagrees():
    torch.manual_seed(0)
    model = SampleRNN(SampleRNNConfig(**SMALL)).eval()
    eager = make_backend("eager", model, "cpu")
    assert check_against_eager(model, make_backend("folded", model, "cpu"), eager, 3, "cpu").startswith(("match", "near-tie"))
    with pytest.raises(RuntimeError, match="refusing to time it"):
        check_against_eager(model, _WrongBackend(model, "cpu"), eager, 3, "cpu")


def test_low_precision_check_measures_the_logits_error():
    from fastsrnn.tools.bench import check_low_precision

    torch.manual_seed(0)
    model = SampleRNN(SampleRNNConfig(**SMALL)).eval()
    eager = make_backend("eager", model, "cpu")
    bf16 = make_backend("folded", model, "cpu", dtype=torch.bfloat16, frame_dtype=torch.bfloat16)
    assert "rel. err" in check_low_precision(model, bf16, eager, 2, "cpu")
    with pytest.raises(RuntimeError, match="relative error"):
        check_low_precision(model, bf16, eager, 2, "cpu", limit=1e-7)  # bf16 cannot be that close

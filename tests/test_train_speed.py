"""Training speed options: amp bf16 and torch.compile (TrainConfig, CLI, config.json, resume),
the cuDNN flat-weight RNN call (same numbers as the module), and ``fastsrnn bench --train``."""
import json
import math
import warnings

import pytest
import torch
from helpers import SMALL, riff_dataset, small_train_config

from fastsrnn.checkpoint import load_checkpoint
from fastsrnn.model import SampleRNN
from fastsrnn.tools.bench_train import bench_train_preset, format_train_table
from fastsrnn.training.train_config import TrainConfig
from fastsrnn.training.trainer import TrainForward, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return riff_dataset(tmp_path_factory.mktemp("speed"))


def test_options_are_validated_and_round_trip():
    t = TrainConfig(amp="bf16", compile=True)
    assert TrainConfig.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    assert TrainConfig.from_dict({}).amp == "off" and TrainConfig.from_dict({}).compile is False  # old runs
    with pytest.raises(ValueError, match="amp must be one of off, bf16"):
        TrainConfig(amp="fp16")
    with pytest.raises(ValueError, match="compile must be true or false"):
        TrainConfig(compile="yes")


def test_cli_help_and_flags_reach_config_json(data, tmp_path, capsys):
    from fastsrnn.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--amp {off,bf16}" in text and "--compile" in text and "--no-compile" in text
    run = tmp_path / "run"
    common = ["--device", "cpu", "--batch-size", "4", "--tbptt", "8", "--n-clips", "0", "--quiet",
              "--preset", "tiny"]
    assert main(["train", str(data), "--out", str(run), "--max-steps", "2", "--checkpoint-every", "2",
                 "--amp", "bf16", *common]) == 0
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["amp"] == "bf16" and saved["compile"] is False
    # resume with options left out: the run keeps its own amp
    assert main(["train", str(data), "--out", str(run), "--max-steps", "3", "--quiet"]) == 0
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["amp"] == "bf16" and saved["max_steps"] == 3


def test_amp_bf16_training_learns_and_keeps_fp32_state(data, tmp_path):
    bits = []
    cfg = small_train_config(amp="bf16", max_steps=30, checkpoint_every=30, n_clips=0, lr=3e-3)
    train(data, tmp_path / "run", SMALL, cfg, progress=False, callback=lambda info: bits.append(info["train_bits"]))
    assert all(math.isfinite(b) for b in bits)
    assert sum(bits[-5:]) / 5 < sum(bits[:5]) / 5 - 0.2, bits
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["rnn_h"] is None or ckpt["rnn_h"].dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.is_floating_point())


def test_default_forward_is_the_plain_fp32_loss():
    from fastsrnn.model import nll_bits

    torch.manual_seed(0)
    model = SampleRNN(SMALL)
    x = torch.randint(0, SMALL.q_levels, (3, SMALL.frame_size * 5))
    state = model.initial_state(3, "random", torch.Generator().manual_seed(2))
    bits, new = TrainForward(model, torch.device("cpu"))(x, state, SMALL.frame_size)
    logits, ref_state = model(x, state)
    assert torch.equal(bits, nll_bits(logits, x[:, SMALL.frame_size:]))
    assert torch.equal(new.h, ref_state.h) and torch.equal(new.c, ref_state.c)
    bf, new_bf = TrainForward(model, torch.device("cpu"), "bf16")(x, state, SMALL.frame_size)
    assert new_bf.h.dtype == torch.float32 and abs(bf.item() - bits.item()) / bits.item() < 2e-2


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_flat_weight_rnn_call_matches_the_module(rnn_type):
    """The cuDNN path (one contiguous buffer of the weight-normed weights), forced on the CPU:
    the same outputs and gradients, bit for bit, as the module's own call."""
    from dataclasses import replace

    torch.manual_seed(0)
    model = SampleRNN(replace(SMALL, rnn_type=rnn_type))
    fr = model.frame_rnn
    x = torch.randn(3, 5, SMALL.frame_size)
    st = model.initial_state(3, "random", torch.Generator().manual_seed(1))
    hx = (st.h[:1].contiguous(), st.c[:1].contiguous()) if rnn_type == "lstm" else st.h[:1].contiguous()
    results = []
    for flat in (False, True):
        model.zero_grad()
        out, h = fr.run_rnn(fr.rnns[0], x, hx, flat=flat)
        (out.square().sum() + (h[1] if rnn_type == "lstm" else h).sum()).backward()
        results.append([out.detach()] + [p.grad.clone() for p in fr.rnns[0].parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_train_bench_runs_on_tiny_cpu():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        rows = bench_train_preset("tiny", ["fp32", "bf16"], "cpu", steps=3, warmup=1, batch_size=4, tbptt=4)
    assert [r.variant for r in rows] == ["fp32", "bf16"]
    assert rows[0].check == "reference" and rows[0].vs_fp32 == 1.0
    assert rows[1].check.startswith("ok") and rows[1].loss_rel_diff <= 2e-2
    assert all(r.samples_per_s > 0 and r.samples_per_step == 4 * 4 * 16 for r in rows)
    assert all(r.rnn_layout_warnings == 0 for r in rows)
    assert "| tiny | bf16 | 4 |" in format_train_table(rows)


def test_train_bench_refuses_a_variant_that_disagrees(monkeypatch):
    from fastsrnn.tools import bench_train

    monkeypatch.setitem(bench_train.TOLERANCE, "bf16", 0.0)  # no bf16 step matches fp32 to the last bit
    rows = bench_train_preset("tiny", ["bf16"], "cpu", steps=2, warmup=0, batch_size=2, tbptt=2)
    if rows[1].loss_rel_diff:  # (an exact tie would be allowed)
        assert rows[1].check.startswith("refused") and rows[1].ms_per_step is None


def test_cli_bench_train_writes_json(tmp_path, capsys):
    from fastsrnn.cli import main

    out = tmp_path / "t.json"
    assert main(["bench", "--train", "--variants", "fp32", "bf16", "--steps", "2", "--warmup", "0",
                 "--batch-size", "2", "--tbptt", "2", "--json", str(out)]) == 0
    assert "| tiny | bf16 |" in capsys.readouterr().out
    payload = json.loads(out.read_text())
    assert payload["kind"] == "train" and [r["variant"] for r in payload["rows"]] == ["fp32", "bf16"]
    assert payload["config"]["tolerance"]["bf16"] == 2e-2


@pytest.mark.slow
def test_compile_variant_on_cpu():
    """torch.compile on the CPU needs a C++ compiler (Inductor) and ~20 s for tiny on 2 cores."""
    import shutil

    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile on the CPU needs a C++ compiler (g++/c++), and none is on PATH")
    rows = bench_train_preset("tiny", ["compile"], "cpu", steps=2, warmup=1, batch_size=2, tbptt=2)
    assert rows[1].check.startswith("ok"), rows[1].check
    assert rows[1].loss_rel_diff <= 1e-4


def test_compile_failure_falls_back_with_a_warning(monkeypatch):
    def broken(model):
        def call(*a, **k):
            raise RuntimeError("no compiler here")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    torch.manual_seed(0)
    model = SampleRNN(SMALL)
    fw = TrainForward(model, torch.device("cpu"), compile=True)
    x = torch.randint(0, SMALL.q_levels, (2, SMALL.frame_size * 3))
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*no compiler here"):
        bits, _ = fw(x, model.initial_state(2), SMALL.frame_size)
    assert math.isfinite(bits.item()) and fw.compiled is None


def test_amp_bf16_lstm_falls_back_to_fp32_where_the_cpu_has_no_bf16_lstm(monkeypatch):
    """The fallback path, forced, so that it runs on every CPU: under bf16 autocast the LSTM layers
    run in fp32 (once said), so the carried state is the fp32 model's bit for bit (nothing but the
    LSTMs and concatenations lies between the frame input and the state), while the loss, through
    the bf16 upsampling and MLP, stays within bf16's rounding of the fp32 loss."""
    import fastsrnn.model as model_mod
    from fastsrnn.model import nll_bits

    monkeypatch.setattr(model_mod, "cpu_autocast_lstm_ok", lambda: False)
    monkeypatch.setattr(model_mod, "_FP32_LSTM_SAID", False)
    torch.manual_seed(0)
    model = SampleRNN(SMALL)
    x = torch.randint(0, SMALL.q_levels, (3, SMALL.frame_size * 5))
    state = model.initial_state(3, "random", torch.Generator().manual_seed(2))
    logits, ref_state = model(x, state)
    ref_bits = nll_bits(logits, x[:, SMALL.frame_size:])
    with pytest.warns(UserWarning, match="no bf16 LSTM"):
        bits, new = TrainForward(model, torch.device("cpu"), "bf16")(x, state, SMALL.frame_size)
    assert torch.equal(new.h, ref_state.h) and torch.equal(new.c, ref_state.c)
    assert abs(bits.item() - ref_bits.item()) / ref_bits.item() < 2e-2
    bits.backward()  # the fp32 LSTM's backward under the bf16 graph
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_amp_bf16_lstm_runs_natively_where_the_cpu_has_a_bf16_lstm(monkeypatch):
    """The native path, where this CPU has it: torch's own LSTM under autocast (no fp32 fallback),
    within bf16's rounding of the fp32 output (8 mantissa bits: 2^-8 relative per rounding, a
    few roundings deep through the gates and 3 steps: 16 of them as the bound; a wrong weight is O(1))."""
    import fastsrnn.model as model_mod

    if not model_mod.cpu_autocast_lstm_ok():
        pytest.skip("this CPU has no bf16 LSTM (no AVX512-BF16/AMX): the fallback test covers it")
    monkeypatch.setattr(model_mod, "_lstm_fp32", lambda *a, **k: pytest.fail("the fp32 fallback ran"))
    torch.manual_seed(0)
    model = SampleRNN(SMALL)
    x = torch.randn(2, 3, SMALL.frame_size)
    st = model.initial_state(2)
    fr = model.frame_rnn
    hx = (st.h[:1].contiguous(), st.c[:1].contiguous())
    ref, _ = fr.run_rnn(fr.rnns[0], x, hx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = fr.run_rnn(fr.rnns[0], x, hx)
    assert (out.float() - ref).abs().max().item() <= 2 ** -8 * 16 * max(1.0, ref.abs().max().item())

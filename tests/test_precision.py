"""Generation precision: the teacher-forced NLL, the guard against fp32, its cache, the API and the CLI."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as fnn
from helpers import ODD, random_model

import fastsrnn.generation.precision as precision
from fastsrnn import SampleRNN, SampleRNNConfig
from fastsrnn.checkpoint import save_checkpoint
from fastsrnn.cli import main
from fastsrnn.generation.generator import Generator, generate
from fastsrnn.generation.longgen import GenerationRun
from fastsrnn.generation.precision import (
    PRECISIONS,
    PrecisionRefused,
    guard_precision,
    merge_options,
    precision_options,
    teacher_forced_nll,
)
from fastsrnn.generation.settings import GenerationSettings
from fastsrnn.model import nll_bits
from fastsrnn.quantize import quantize, silence_level

# A small tiny-like model at 4 kHz: the guard's 4 x 1 s are 250 frames per sequence.
CFG = SampleRNNConfig.from_name("tiny", dim=32, emb_size=8, n_rnn=2, sample_rate=4000)


def _riff(seconds: float, offset: float = 0.0) -> torch.Tensor:
    """A looped 4-note square-wave riff with a little noise, quantized: (T,) int64 levels."""
    sr = CFG.sample_rate
    t = np.arange(int(seconds * sr)) / sr + offset
    freq = np.array([125.0, 250.0, 500.0, 250.0])[(t * 8).astype(int) % 4]
    audio = 0.5 * np.sign(np.sin(2 * np.pi * np.cumsum(freq) / sr))
    audio += 0.02 * np.random.default_rng(int(offset * 100)).standard_normal(len(t))
    return quantize(torch.from_numpy(audio.astype(np.float32)), CFG.q_levels, CFG.q_type)


@pytest.fixture(scope="module")
def trained():
    """(model, test levels (4, T)): 300 Adam steps on the riff, well below 8 bits/sample."""
    audio, F, T, B = _riff(20.0), CFG.frame_size, 32 * CFG.frame_size, 8
    torch.manual_seed(0)
    model = SampleRNN(CFG)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        x = torch.stack([audio[s:s + T + F] for s in torch.randint(0, audio.numel() - T - F, (B,), generator=g)])
        logits, _ = model(x, model.initial_state(B))
        opt.zero_grad()
        fnn.cross_entropy(logits.reshape(-1, CFG.q_levels), x[:, F:].reshape(-1)).backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 1.0)
        opt.step()
    test = _riff(2.0, offset=0.37)
    return model.eval(), test[:test.numel() // (4 * F) * 4 * F].view(4, -1)


@pytest.fixture
def counted(monkeypatch):
    """How many frame passes the guard runs (generation of its data and teacher-forced NLLs)."""
    calls = []
    real = precision._run_frames

    def run_frames(*a, **k):
        calls.append(a[2:4])
        return real(*a, **k)
    monkeypatch.setattr(precision, "_run_frames", run_frames)
    return calls


@pytest.mark.parametrize("backend", ["folded", "cpu"])
@pytest.mark.parametrize("shape", ["B3", "1d"])
def test_nll_equals_the_parallel_forward(backend, shape):
    """Teacher forcing through a backend gives the training forward's logits, so the same NLL."""
    cfg = SampleRNNConfig(**ODD)
    model = random_model(cfg, scale=0.3)
    B = 3 if shape == "B3" else 1
    x = torch.randint(0, cfg.q_levels, (B, cfg.frame_size * 7 + 2), generator=torch.Generator().manual_seed(5))
    whole = x[:, :cfg.frame_size * 7]  # the tail short of a frame is dropped
    pad = torch.full((B, cfg.frame_size), silence_level(cfg.q_levels), dtype=torch.long)
    with torch.no_grad():
        logits, _ = model(torch.cat([pad, whole], 1), model.initial_state(B))
    want = float(nll_bits(logits, whole))
    got = teacher_forced_nll(model, x if shape == "B3" else x[0], backend)
    assert got == pytest.approx(want, abs=1e-5)
    assert 0 < want < 10


def test_precision_options_and_errors():
    assert PRECISIONS == ("fp32", "bf16", "int8")
    assert precision_options("fp32") == {}
    assert precision_options("bf16") == {"dtype": torch.bfloat16, "frame_dtype": torch.bfloat16}
    assert precision_options("int8") == {"dtype": torch.bfloat16, "frame_dtype": torch.int8}
    assert merge_options("bf16", {"num_threads": 1, "dtype": torch.bfloat16})["frame_dtype"] == torch.bfloat16
    model = random_model(CFG)
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, int8, got 'fp16'"):
        Generator(model, precision="fp16", backend="cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        generate(model, 16, precision="half")
    with pytest.raises(ValueError, match="precision='bf16' sets dtype=torch.bfloat16 but backend_options give "
                                         "dtype=torch.float32"):
        Generator(model, precision="bf16", backend="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="precision='int8' sets frame_dtype"):
        Generator(model, precision="int8", backend="cpu", frame_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="eager backend runs the model's own fp32 modules"):
        Generator(model, precision="bf16", backend="eager")
    with pytest.raises(TypeError, match="levels must be a 1-d or 2-d integer tensor"):
        teacher_forced_nll(model, torch.rand(2, 64))
    with pytest.raises(ValueError, match=r"levels must lie in \[0, 256\)"):
        teacher_forced_nll(model, torch.full((64,), 256))


def test_bf16_passes_the_guard_on_a_trained_model(trained):
    model, test = trained
    nll32 = teacher_forced_nll(model, test, "cpu")
    assert nll32 < 5.0, f"the model did not learn: {nll32:.2f} bits/sample"
    on_test = guard_precision(model, "bf16", "cpu", data=test)
    assert on_test.nll_fp32 == pytest.approx(nll32, abs=1e-9) and on_test.passed
    assert abs(on_test.delta) <= precision.MAX_NLL_DELTA_BITS and on_test.nll < 5.0
    own = guard_precision(model, "bf16", "cpu")  # the fallback: the model's own music
    assert own.passed and "the fp32 model generated itself" in own.data and own.nll_fp32 < 6.0
    assert f"{own.nll:.4f}" in own.describe() and "delta" in own.describe()
    gen = Generator(model, 2, precision="bf16", backend="cpu", precision_data=test)
    assert gen.precision_check == guard_precision(model, "bf16", "cpu", data=test)
    assert gen.precision == "bf16" and gen.backend.w.w3.dtype == torch.bfloat16
    assert gen.frames(3).shape == (2, 3 * CFG.frame_size)


def test_refusal_names_both_nlls_the_delta_and_the_way_out(trained, monkeypatch):
    model, test = trained
    check = guard_precision(model, "bf16", "cpu", data=test)
    limit = check.delta - 1e-3
    with pytest.raises(PrecisionRefused) as e:
        guard_precision(model, "bf16", "cpu", data=test, limit=limit)
    msg = str(e.value)
    for text in (f"{check.nll:.4f}", f"{check.nll_fp32:.4f}", f"{check.delta:+.4f}", f"{limit:g}", "'fp32'",
                 "check_precision=False", "--no-precision-check", "given levels"):
        assert text in msg, (text, msg)
    assert isinstance(e.value, ValueError)
    monkeypatch.setattr(precision, "MAX_NLL_DELTA_BITS", limit)  # the default limit is read at call time
    with pytest.raises(PrecisionRefused, match="precision 'bf16' refused"):
        Generator(model, precision="bf16", backend="cpu", precision_data=test)
    gen = Generator(model, precision="bf16", backend="cpu", precision_data=test, check_precision=False)
    assert gen.precision_check is None and gen.frames(2).shape == (1, 2 * CFG.frame_size)


def test_the_guard_is_measured_once_per_weights_and_data(trained, counted):
    model, test = trained
    model = SampleRNN(CFG).eval()
    model.load_state_dict(trained[0].state_dict())  # a model of its own: nothing cached for it yet
    first = Generator(model, precision="bf16", backend="cpu").precision_check
    assert len(counted) == 2 and first.seconds > 0  # the data with fp32's NLL, then bf16's
    again = Generator(model, 3, precision="bf16", backend="cpu").precision_check
    generate(model, 32, precision="bf16", backend="cpu")
    assert len(counted) == 2 and again.seconds is None and again.nll == first.nll and "cached" in again.describe()
    guard_precision(model, "bf16", "cpu", data=test)
    assert len(counted) == 4  # other data: both NLLs measured on it
    with torch.no_grad():
        model.mlp.out.bias.data.add_(0.5)  # no version bump: the export cache still sees it
    assert guard_precision(model, "bf16", "cpu").nll != first.nll and len(counted) == 6
    assert Generator(model).precision_check is None and len(counted) == 6  # fp32 is never measured


def test_cli_generate_precision_bf16_end_to_end(trained, tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "model.pt", trained[0])
    out = tmp_path / "gen"
    args = ["generate", str(ckpt), "--precision", "bf16", "--seconds", "0.25", "--backend", "cpu", "--device", "cpu",
            "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "precision bf16 (cpu backend): NLL" in said and "with fp32 weights" in said and "delta" in said
    settings = json.loads((out / "generation.json").read_text())
    assert settings["precision"] == "bf16" and settings["complete"]
    assert abs(settings["precision_check"]["delta_bits"]) <= precision.MAX_NLL_DELTA_BITS
    assert (out / "seq_000.wav").is_file()
    assert main([*args, "--out", str(tmp_path / "o2"), "--no-precision-check"]) == 0
    assert "precision bf16" not in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse's choices
        main(["generate", str(ckpt), "--precision", "fp16", "--out", str(tmp_path / "o3")])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
    # A resumed generation keeps its precision: another one is refused.
    settings = GenerationSettings(seconds=0.25, precision="bf16")
    run = GenerationRun.create(ckpt, tmp_path / "part", settings, backend="cpu", device="cpu")
    run.close()
    with pytest.raises(ValueError, match="started with precision bf16; resuming it with fp32"):
        GenerationRun.reopen(tmp_path / "part", precision="fp32")
    assert main(["generate", "--resume", str(tmp_path / "part"), "--precision", "int8", "--no-progress"]) == 1
    assert "--precision int8 (stored: bf16)" in capsys.readouterr().err
    assert main(["generate", "--resume", str(tmp_path / "part"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "part" / "generation.json").read_text())["precision"] == "bf16"


def test_generate_help_says_what_each_precision_costs(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("--precision {fp32,bf16,int8}", "bf16: frame and sample tiers in bf16",
                  "int8: the frame tier's weights in int8", "sample tier in bf16",
                  "refuses a loss over 0.01 bits/sample", "--no-precision-check", "--precision-data"):
        assert words in text, words


# --- int8 frame-tier weights (frame_dtype=torch.int8 on the cpu and folded backends) ----------------

@pytest.mark.parametrize("backend", ["cpu", "folded"])
def test_int8_is_really_int8_and_close_to_fp32(trained, backend):
    model, test = trained
    nll32 = teacher_forced_nll(model, test[:, :640], backend)
    nll8 = teacher_forced_nll(model, test[:, :640], backend, frame_dtype=torch.int8)
    assert nll8 != nll32, "frame_dtype=int8 gave fp32's NLL: the weights were not quantized"
    assert abs(nll8 - nll32) < 0.05, f"int8 moved the NLL by {nll8 - nll32:+.4f} bits"


def test_int8_guard_passes_or_refuses_with_its_numbers(trained):
    model, test = trained
    try:
        check = guard_precision(model, "int8", "cpu", data=test)
    except PrecisionRefused as e:
        assert "precision 'int8' refused" in str(e) and "bits/sample" in str(e)
        return
    assert check.passed and check.nll != check.nll_fp32
    gen = Generator(model, precision="int8", backend="cpu", precision_data=test)
    assert gen.backend.w.up_w.dtype == torch.int8 and gen.backend.w.w3.dtype == torch.bfloat16
    assert gen.frames(2).shape == (1, 2 * CFG.frame_size)


@pytest.mark.interpret
def test_int8_is_refused_on_the_gpu_backends_before_any_export():
    """The triton and cuda frame kernels take fp32 and bf16: int8 there is a clear error up front."""
    model = random_model(CFG)
    with pytest.raises(ValueError, match="precision='int8' runs on the cpu and folded backends, not on 'triton'"):
        Generator(model, precision="int8", backend="triton")


def test_resume_survives_a_moved_precision_dataset(trained, album, tmp_path):
    """The guard's recorded dataset moved away since the start: the resume warns and measures on
    the model's own music instead of failing (the run passed the guard once)."""
    import shutil

    import fastsrnn

    data = tmp_path / "data"
    fastsrnn.prepare([str(p) for p in album], str(data), chunk_seconds=1.0, progress=False)
    ckpt = save_checkpoint(tmp_path / "model.pt", trained[0])
    run = GenerationRun.create(ckpt, tmp_path / "gen", GenerationSettings(seconds=0.25, precision="bf16",
                                                                     precision_data=data), backend="cpu", device="cpu")
    run.close()
    assert json.loads((tmp_path / "gen" / "generation.json").read_text())["precision_data"] == str(data)
    shutil.rmtree(data)
    with pytest.warns(UserWarning, match="is gone; measuring on the model's own music instead"):
        run = GenerationRun.reopen(tmp_path / "gen")
    assert run.gen.precision_check is not None and run.gen.precision_check.passed
    run.close()

"""n-tier SampleRNN (issue 13): the config, the model's algebra, checkpoints from before n tiers,
generation (priming, the resumable state), training (resume, TBPTT rules, the CLI).

Elsewhere, beside their 2-tier twins: the backends' teacher-forcing and generation tests for 3
and 4 tiers (tests/test_backends.py), chunking and kill-and-resume of a long generation
(tests/test_generate.py), torchrun (tests/test_distributed.py), the demo (tests/test_demo.py);
the fused frame steps' own tests on every tier in tests/test_frame_step.py.
"""
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_same_training_state, random_model, riff_dataset, small_train_config

import fastsrnn
from fastsrnn import SampleRNN, SampleRNNConfig
from fastsrnn.checkpoint import load_checkpoint, model_from_checkpoint
from fastsrnn.config import PRESETS
from fastsrnn.generation.generator import Generator
from fastsrnn.quantize import silence_level

# 3 tiers at odd sizes: a bottom tier every 4 samples, one above every 12 (3 bottom frames).
SMALL3 = SampleRNNConfig(frame_sizes=(4, 3), emb_size=8, dim=24, n_rnn=2, q_levels=32, sample_rate=800)
DATA = Path(__file__).parent / "data"


def _model(cfg=SMALL3, seed=0):
    return random_model(cfg, seed, scale=0.2)


# ---------------------------------------------------------------------------------------------
# Config and presets


def test_frame_sizes_and_the_2tier_keyword():
    assert SampleRNNConfig().frame_sizes == (16,) and SampleRNNConfig().n_tiers == 2
    c = SampleRNNConfig(frame_size=8)  # the 2-tier keyword still works
    assert c.frame_sizes == (8,) and c.frame_size == c.lookback == 8
    assert replace(PRESETS["tiny-3tier"], frame_size=8).frame_sizes == (8, 4)  # the tiers above stay
    assert SMALL3.lookback == 12 and SMALL3.tier_samples(1) == 12 and SMALL3.n_tiers == 3
    assert SampleRNNConfig.from_dict({"frame_size": 8}).frame_sizes == (8,)  # a config saved before n tiers
    round_trip = SampleRNNConfig.from_dict(json.loads(json.dumps(SMALL3.to_dict())))  # JSON makes a list
    assert round_trip == SMALL3
    for bad in ((), (0,), (16, 1), [16.0], (16, True)):
        with pytest.raises(ValueError, match="frame_sizes"):
            SampleRNNConfig(frame_sizes=bad)


def test_3tier_presets_have_their_published_sizes():
    iclr = PRESETS["iclr2017-3tier"]  # big frame 8, frame 2, 1 x 1024 GRU, no skip, emb 256
    assert (iclr.frame_sizes, iclr.lookback, iclr.n_rnn, iclr.rnn_type, iclr.dim, iclr.emb_size, iclr.skip) == \
        ((2, 4), 8, 1, "gru", 1024, 256, False)
    sp = PRESETS["samplernn-pytorch-3tier"]
    assert (sp.frame_sizes, sp.n_rnn, sp.rnn_type, sp.dim, sp.q_type) == ((16, 4), 2, "gru", 1024, "linear")
    prism = PRESETS["prism-3tier"]
    assert (prism.frame_sizes, prism.n_rnn, prism.rnn_type, prism.q_type, prism.skip) == ((16, 4), 4, "gru", "mulaw",
                                                                                           False)
    for name in ("iclr2017-3tier", "samplernn-pytorch-3tier", "prism-3tier", "tiny-3tier"):
        assert PRESETS[name].n_tiers == 3


# ---------------------------------------------------------------------------------------------
# The model


def test_2tier_parameters_keep_their_names():
    """A 2-tier model has exactly the parameters (names and shapes) it had before n tiers."""
    names = set(SampleRNN(SampleRNNConfig.from_name("tiny")).state_dict())
    assert not any(n.startswith("upper_rnns") for n in names) and "frame_rnn.upsample.bias" in names
    three = SampleRNN(SampleRNNConfig.from_name("tiny-3tier"))
    assert {n for n in three.state_dict() if n.startswith("upper_rnns.1")} == set()
    H, F = 128, 16
    w0 = dict(three.named_parameters())["frame_rnn.rnns.0.parametrizations.weight_ih_l0.original1"]
    assert w0.shape == (4 * H, H + F)  # the bottom tier's first layer: [conditioning, frame]
    top = dict(three.named_parameters())["upper_rnns.0.rnns.0.parametrizations.weight_ih_l0.original1"]
    assert top.shape == (4 * H, 64)  # the top tier: its 64-sample frame alone
    assert three.upper_rnns[0].upsample.out_features == 4 * H  # one vector per bottom step


@pytest.mark.parametrize("frame_sizes", [(3, 2), (2, 3, 2)], ids=["3tier", "4tier"])
@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_sub_sequences_carry_the_state_and_advance_equals_forward(frame_sizes, rnn):
    cfg = replace(SMALL3, frame_sizes=frame_sizes, rnn_type=rnn)
    m = _model(cfg)
    S, B = cfg.lookback, 2
    x = torch.randint(0, cfg.q_levels, (B, S * 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole, state = m(x, m.initial_state(B))
        first, mid = m(x[:, :S * 3], m.initial_state(B))  # targets [S, 3S)
        second, end = m(x[:, S * 2:], mid)  # targets [3S, 7S)
        primed = m.advance(x, m.initial_state(B), block=2 * S)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)
    for a, b in [(state, end), (state, primed)]:
        for ta, tb in zip(a.tiers(), b.tiers()):
            torch.testing.assert_close(ta.h, tb.h)
    assert len(state.upper) == len(frame_sizes) - 1


def test_the_future_does_not_leak_into_the_past():
    """Changing sample t changes no logit before t + 1 (causality through every tier)."""
    m = _model()
    S = SMALL3.lookback
    x = torch.randint(0, SMALL3.q_levels, (1, S * 5), generator=torch.Generator().manual_seed(2))
    t = S * 3 - 1  # the last sample of a top frame: the top tier sees it at the next step only
    y = x.clone()
    y[0, t] = (y[0, t] + 5) % SMALL3.q_levels
    with torch.no_grad():
        a, _ = m(x, m.initial_state(1))
        b, _ = m(y, m.initial_state(1))
    k = t - S  # logits[:, k] predicts x[S + k]
    torch.testing.assert_close(a[:, :k + 1], b[:, :k + 1], rtol=0, atol=0)
    assert not torch.equal(a[:, k + 1], b[:, k + 1])


# ---------------------------------------------------------------------------------------------
# Checkpoints from before n tiers


LEGACY_AUDIO = {("learned", "eager"): "f6813345b479b4a7", ("learned", "cpu"): "f6813345b479b4a7",
                ("random", "eager"): "9ea9af71c00d090f", ("random", "cpu"): "9ea9af71c00d090f"}


@pytest.mark.parametrize("h0,backend", list(LEGACY_AUDIO))
def test_a_checkpoint_from_before_n_tiers_generates_bit_identically(h0, backend):
    """tests/data/legacy-2tier.pt was written by fastsrnn 946145d (config key frame_size, no
    frame_sizes); the hashes are of the audio that version generated from it (primed)."""
    path = DATA / "legacy-2tier.pt"
    ckpt = load_checkpoint(path)
    assert "frame_size" in ckpt["config"] and "frame_sizes" not in ckpt["config"]
    m = model_from_checkpoint(ckpt, path)
    a = fastsrnn.generate(m, 8 * 30, n_seq=2, seed=5, backend=backend, device="cpu", h0=h0,
                          prime=torch.arange(40) % 64)
    assert hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16] == LEGACY_AUDIO[(h0, backend)]


# ---------------------------------------------------------------------------------------------
# Generation


def test_prime_warms_every_tier_like_the_training_forward():
    m = _model()
    F, S = SMALL3.frame_size, SMALL3.lookback
    prime = torch.randint(0, SMALL3.q_levels, (5 * S + 7,))  # the first 7 samples are dropped
    g = Generator(m, 2, prime=prime, seed=0, backend="eager", device="cpu")
    whole = prime[7:]
    x = torch.cat([torch.full((S,), silence_level(SMALL3.q_levels)), whole])[None].expand(2, -1)
    with torch.no_grad():
        _, state = m(x, m.initial_state(2))
    for a, b in zip(g.state.rnn.tiers(), state.tiers()):
        torch.testing.assert_close(a.h, b.h)
        torch.testing.assert_close(a.c, b.c)
    assert torch.equal(g.state.window, whole[-F:][None].expand(2, F))
    assert torch.equal(g.state.history, whole[-S:][None].expand(2, S)) and g.state.phase == 0
    with pytest.raises(ValueError, match="one frame of the top tier"):
        Generator(m, 1, prime=prime[:S - 1], backend="eager", device="cpu")


def test_state_dict_resumes_mid_top_frame_and_refuses_another_model():
    m = _model()
    want = Generator(m, 2, seed=3, backend="folded", device="cpu", h0="random").frames(20)
    g = Generator(m, 2, seed=3, backend="folded", device="cpu", h0="random")
    first = g.frames(7)  # phase 1 of 3
    d = g.state_dict()
    assert d["phase"] == 1 and len(d["upper"]) == 1
    g2 = Generator(m, 2, seed=99, backend="cpu", device="cpu")
    g2.load_state_dict(d)
    assert torch.equal(torch.cat([first, g2.frames(13)], 1), want)
    two_tier = Generator(_model(replace(SMALL3, frame_sizes=(4,))), 2, device="cpu", backend="eager").state_dict()
    with pytest.raises(ValueError, match="3-tier"):
        Generator(m, 2, device="cpu", backend="eager").load_state_dict(two_tier)
    with pytest.raises(ValueError, match="3-tier"):
        Generator(m, 2, device="cpu", backend="eager").load_state_dict({**d, "phase": 3})
    two_tier_model = _model(replace(SMALL3, frame_sizes=(4,)))
    with pytest.raises(ValueError, match="n-tier model, not of this 2-tier"):
        Generator(two_tier_model, 2, device="cpu", backend="eager").load_state_dict(d)


# ---------------------------------------------------------------------------------------------
# Training


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return riff_dataset(tmp_path_factory.mktemp("riff3"))


def _cfg3():
    return SampleRNNConfig.from_name("tiny-3tier", dim=32, emb_size=8, n_rnn=2)


def test_3tier_trains_and_resumes_bit_identically(data, tmp_path):
    from fastsrnn.training.trainer import train

    tcfg = small_train_config(max_steps=12, checkpoint_every=4, tbptt=8)  # 8 x 16 = 128 samples = 2 top frames
    whole = train(data, tmp_path / "a", _cfg3(), tcfg, progress=False)
    train(data, tmp_path / "b", _cfg3(), replace(tcfg, max_steps=8), progress=False)
    train(data, tmp_path / "b", None, replace(tcfg, max_steps=12), progress=False)
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)
    assert a["rnn_h"] is None or len(a["rnn_upper"]) == 1
    assert_same_training_state(a, b)  # the upper tier's carried state too
    assert whole["steps"] == 12
    m = model_from_checkpoint(load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt"))
    assert m.cfg.n_tiers == 3 and len(m.upper_rnns) == 1


def test_tbptt_must_be_whole_top_frames(data, tmp_path):
    from fastsrnn.training.trainer import train

    with pytest.raises(ValueError, match="multiple of 4"):
        train(data, tmp_path / "r", _cfg3(), small_train_config(tbptt=6), progress=False)
    assert not (tmp_path / "r" / "config.json").exists()


def test_cli_frame_sizes_make_a_3tier_run(data, tmp_path, capsys):
    from fastsrnn.cli import main

    args = ["train", str(data), "--out", str(tmp_path / "r"), "--preset", "tiny", "--frame-sizes", "16", "4",
            "--max-steps", "2", "--checkpoint-every", "2", "--batch-size", "4", "--tbptt", "8", "--n-clips", "1",
            "--clip-seconds", "0.02", "--quiet", "--device", "cpu"]
    assert main(args) == 0
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["model"]
    assert saved["frame_sizes"] == [16, 4] and saved["dim"] == PRESETS["tiny"].dim
    assert main(args[:4] + ["--frame-sizes", "16", "2", "--max-steps", "3", "--quiet"]) == 1  # another model
    assert "another model config" in capsys.readouterr().err


def test_a_3tier_model_learns_the_riff(data, tmp_path):
    """The same check as the 2-tier one (tests/test_train.py): 80 steps take the test NLL of a
    repeating riff far below the 8 bits of a uniform guess."""
    from fastsrnn.training.trainer import train

    seen = []
    tcfg = small_train_config(tbptt=16, max_steps=80, checkpoint_every=80, valid_every=40, n_clips=0, lr=3e-3)
    summary = train(data, tmp_path / "run", _cfg3(), tcfg, progress=False,
                    callback=lambda info: seen.append(info["train_bits"]))
    first, last = sum(seen[:5]) / 5, sum(seen[-5:]) / 5
    assert first > 7.0 and last < first - 2.5, (first, last)
    assert summary["test_bits"] < 2.0, summary

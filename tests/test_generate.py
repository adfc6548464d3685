"""Generation: reproducibility, streaming == one-shot, priming, kill-and-resume, bad inputs."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import random_model

from fastsrnn import SampleRNNConfig
from fastsrnn.checkpoint import save_checkpoint
from fastsrnn.generation.generator import Generator, generate, prime_levels
from fastsrnn.generation.longgen import GenerationRun
from fastsrnn.generation.rundir import STATE
from fastsrnn.generation.settings import GenerationSettings
from fastsrnn.quantize import dequantize, silence_level

SMALL = SampleRNNConfig(frame_size=4, emb_size=8, dim=24, n_rnn=2, q_levels=32, sample_rate=800)


def _model(cfg=SMALL, seed=0):
    return random_model(cfg, seed, scale=0.2)


@pytest.fixture
def ckpt(tmp_path):
    return save_checkpoint(tmp_path / "model.pt", _model())




def test_seed_and_h0_change_the_music():
    m = _model()
    a = generate(m, 200, n_seq=2, seed=1, backend="eager", device="cpu")
    assert np.array_equal(a, generate(m, 200, n_seq=2, seed=1, backend="eager", device="cpu"))
    assert not np.array_equal(a, generate(m, 200, n_seq=2, seed=2, backend="eager", device="cpu"))
    g1 = Generator(m, 2, h0="random", seed=1, backend="eager", device="cpu")
    g2 = Generator(m, 2, h0="learned", seed=1, backend="eager", device="cpu")
    assert not torch.equal(g1.state.rnn.h, g2.state.rnn.h)  # the random h0 is really used
    assert not torch.equal(g1.frames(5), g2.frames(5))


def test_per_sequence_temperature_and_argmax():
    m = _model()
    cold = Generator(m, 2, temperature=[1e-4, 1e-4], seed=3, backend="eager", device="cpu").frames(6)
    greedy = Generator(m, 2, argmax=True, seed=3, backend="eager", device="cpu").frames(6)
    assert torch.equal(cold, greedy)  # temperature -> 0 is argmax
    with pytest.raises(ValueError, match="one per sequence"):
        Generator(m, 2, temperature=[1.0, 1.0, 1.0], backend="eager", device="cpu")


def test_top_k_and_top_p():
    """top_k=1 (no ties in a random model) and a tiny top_p keep only the highest level: argmax;
    the cut-offs draw the same integers on the eager and cpu backends; bad values name the argument."""
    m = _model()
    greedy = Generator(m, 2, argmax=True, seed=3, backend="eager", device="cpu").frames(6)
    for cut in (dict(top_k=1), dict(top_p=1e-6)):
        assert torch.equal(Generator(m, 2, seed=3, backend="eager", device="cpu", **cut).frames(6), greedy)
    kw = dict(temperature=[0.9, 1.2], top_k=9, top_p=0.8, seed=4, device="cpu")
    eager = Generator(m, 2, backend="eager", **kw).frames(8)
    assert torch.equal(Generator(m, 2, backend="cpu", **kw).frames(8), eager)
    assert not torch.equal(Generator(m, 2, backend="eager", **dict(kw, top_k=0, top_p=1.0)).frames(8), eager)
    gen = Generator(m, 2, backend="eager", **kw)
    assert (gen.state_dict()["top_k"], gen.state_dict()["top_p"]) == (9, 0.8)
    with pytest.raises(ValueError, match="drawn with top_k=9, this generator has top_k=0"):
        Generator(m, 2, backend="eager", **dict(kw, top_k=0)).load_state_dict(gen.state_dict())
    Generator(m, 2, backend="eager", **kw).load_state_dict(gen.state_dict())  # the same cut-offs: fine
    for bad, exc, msg in [(dict(top_k=-1), ValueError, "top_k must be >= 0"),
                          (dict(top_k=2.5), TypeError, "top_k must be an integer"),
                          (dict(top_p=0.0), ValueError, r"top_p must be in \(0, 1\]"),
                          (dict(top_p=float("nan")), ValueError, r"top_p must be in \(0, 1\]")]:
        with pytest.raises(exc, match=msg):
            Generator(m, 1, backend="eager", device="cpu", **bad)


def test_prime_warms_the_frame_tier_like_the_training_forward():
    m = _model()
    F = SMALL.frame_size
    prime = torch.randint(0, SMALL.q_levels, (10 * F + 3,))  # the first 3 samples are dropped
    g = Generator(m, 2, prime=prime, seed=0, backend="eager", device="cpu")
    whole = prime[3:]
    x = torch.cat([torch.full((F,), silence_level(SMALL.q_levels)), whole[:-F]])[None].expand(2, -1)
    with torch.no_grad():
        _, state = m(torch.cat([x, whole[-F:][None].expand(2, F)], dim=1), m.initial_state(2))  # N frames
    torch.testing.assert_close(g.state.rnn.h, state.h)
    assert torch.equal(g.state.window, whole[-F:][None].expand(2, F))


def _final_audio(out):
    s = json.loads((out / "generation.json").read_text())
    return [sf.read(out / f, dtype="int16")[0] for f in s["files"]]


# 3 tiers: a tier every 3 frames (12 samples); chunks of 80 samples end at every phase of it.
SMALL3 = SampleRNNConfig(frame_sizes=(4, 3), emb_size=8, dim=24, n_rnn=2, q_levels=32, sample_rate=800)


@pytest.mark.parametrize("cfg,backend", [(SMALL, "eager"), (SMALL, "folded"), (SMALL3, "eager"), (SMALL3, "folded"),
                                         (SMALL3, "cpu")], ids=["eager", "folded", "3tier-eager", "3tier-folded",
                                                                "3tier-cpu"])
def test_chunked_stream_equals_one_shot(cfg, backend):
    """Chunks of 1, 7, 13, 19 frames (with 3 tiers: ending at every phase of the top tier) and a
    stream give the one-shot audio; 3 tiers: the same on every backend as on eager."""
    m = _model(cfg)
    one = Generator(m, 3, seed=7, backend=backend, device="cpu").frames(40)
    g = Generator(m, 3, seed=7, backend=backend, device="cpu")
    parts = [g.frames(n) for n in (1, 7, 13, 19)]
    assert torch.equal(torch.cat(parts, dim=1), one)
    streamed = np.concatenate(list(Generator(m, 3, seed=7, backend=backend, device="cpu").stream(157, 30)), axis=1)
    assert streamed.shape == (3, 157)
    np.testing.assert_array_equal(streamed, dequantize(one[:, :157], cfg.q_levels).numpy())
    if cfg.n_tiers > 2:
        assert torch.equal(one, Generator(m, 3, seed=7, backend="eager", device="cpu").frames(40))


@pytest.mark.parametrize("cfg,backend,cut", [(SMALL, "eager", {}), (SMALL3, "folded", {}),
                                             (SMALL, "cpu", dict(top_k=5, top_p=0.9))],
                         ids=["2tier", "3tier", "2tier-top-k-top-p"])
def test_kill_and_resume_gives_the_uninterrupted_audio(tmp_path, cfg, backend, cut):
    """(top-k, top-p: stored in generation.json, kept by the resume.)"""
    ckpt = save_checkpoint(tmp_path / "model.pt", _model(cfg))
    settings = GenerationSettings(seconds=1.5, n_seq=2, seed=5, chunk_seconds=0.1, save_every=0.2, **cut)
    opts = dict(backend=backend, device="cpu")
    whole = GenerationRun.create(ckpt, tmp_path / "a", settings, **opts).run(progress=False)
    assert len(whole) == 2

    class Killed(Exception):
        pass

    def kill_after_5(run):
        if run.generated >= 5 * 80:
            raise Killed

    run = GenerationRun.create(ckpt, tmp_path / "b", settings, **opts)
    with pytest.raises(Killed):
        run.run(progress=False, on_chunk=kill_after_5)
    state = torch.load(tmp_path / "b" / STATE, weights_only=True)
    saved = state["stats"]["written"]
    assert ("history" in state["generator"]) == (cfg.n_tiers > 2)  # n tiers: the upper tiers' schedule too
    for part in sorted((tmp_path / "b").glob("*.part.wav")):  # valid audio up to the last chunk
        assert len(sf.read(part)[0]) >= saved > 0
    with pytest.raises(FileExistsError, match="--resume"):
        GenerationRun.create(ckpt, tmp_path / "b", settings, **opts)  # nothing overwritten
    stored = json.loads((tmp_path / "b" / "generation.json").read_text())
    assert (stored["top_k"], stored["top_p"]) == (cut.get("top_k", 0), cut.get("top_p", 1.0))
    GenerationRun.reopen(tmp_path / "b").run(progress=False)
    for a, b in zip(_final_audio(tmp_path / "a"), _final_audio(tmp_path / "b")):
        assert len(a) == 1200 and np.array_equal(a, b)
    with pytest.raises(FileExistsError, match="complete"):
        GenerationRun.reopen(tmp_path / "b")


def test_prime_file_starts_the_output_and_level_is_sane(tmp_path, ckpt):
    t = np.arange(800) / 800
    sf.write(tmp_path / "prime.wav", 0.5 * np.sin(2 * np.pi * 110 * t), 800)
    out = tmp_path / "g"
    settings = GenerationSettings(seconds=0.5, seed=1, prime=tmp_path / "prime.wav", audio_format="flac")
    GenerationRun.create(ckpt, out, settings, backend="eager", device="cpu").run(progress=False)
    audio = sf.read(out / "seq_000.flac")[0]
    assert len(audio) == 800 + 400
    assert np.abs(audio).max() <= 0.9 + 1e-3  # peak-normalized, never clipped
    s = json.loads((out / "generation.json").read_text())
    head = audio[:800] / s["gains"][0]
    assert np.corrcoef(head, 0.5 * np.sin(2 * np.pi * 110 * t))[0, 1] > 0.99


def test_prime_seconds_under_one_sample_keeps_nothing_not_everything(tmp_path):
    sf.write(tmp_path / "prime.wav", np.zeros(1000), 16000)
    cfg = SampleRNNConfig()
    assert prime_levels(tmp_path / "prime.wav", cfg, 0.01).numel() == 160
    assert prime_levels(tmp_path / "prime.wav", cfg, 1e-5).numel() == 0  # was the whole recording (audio[-0:])
    assert prime_levels(tmp_path / "prime.wav", cfg, 5.0).numel() == 1000


def test_bad_inputs_are_clear_errors(tmp_path, ckpt):
    with pytest.raises(Exception, match="no such checkpoint"):
        GenerationRun.create(tmp_path / "missing.pt", tmp_path / "o1", GenerationSettings(seconds=1))
    (tmp_path / "foreign.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(Exception, match="foreign.pt.*not a fastsrnn checkpoint"):
        GenerationRun.create(tmp_path / "foreign.pt", tmp_path / "o2", GenerationSettings(seconds=1))
    with pytest.raises(ValueError, match="--seconds must be > 0"):
        GenerationRun.create(ckpt, tmp_path / "o3", GenerationSettings(seconds=0))
    with pytest.raises(ValueError, match="at most .* sequences fit"):
        GenerationRun.create(ckpt, tmp_path / "o4", GenerationSettings(seconds=1, n_seq=10**12), device="cpu")
    (tmp_path / "bad.wav").write_bytes(b"RIFF....garbage")
    with pytest.raises(Exception, match="bad.wav"):
        GenerationRun.create(ckpt, tmp_path / "o5", GenerationSettings(seconds=1, prime=tmp_path / "bad.wav"),
                             device="cpu")
    for name in ("o1", "o2", "o3", "o4", "o5"):  # nothing half-made left behind
        assert not (tmp_path / name / "generation.json").exists()


@pytest.mark.slow
def test_cli_resume_after_sigkill_gives_the_uninterrupted_audio(tmp_path, ckpt):
    """A real kill (SIGKILL mid-run) of `fastsrnn generate`, then `--resume`: identical files."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from fastsrnn.cli import main

    args = [str(ckpt), "--seconds", "16", "--n-seq", "2", "--seed", "9", "--backend", "eager", "--device", "cpu",
            "--chunk-seconds", "0.5", "--save-every", "1", "--no-progress"]
    assert main(["generate", *args, "--out", str(tmp_path / "whole")]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "fastsrnn", "generate", *args, "--out", str(tmp_path / "killed")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / STATE
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and torch.load(state, weights_only=True)["stats"]["written"] >= 3 * 800:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the generation finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "seq_000.wav").exists()
    assert main(["generate", "--resume", str(tmp_path / "killed"), "--no-progress"]) == 0
    for a, b in zip(_final_audio(tmp_path / "whole"), _final_audio(tmp_path / "killed")):
        assert len(a) == 16 * 800 and np.array_equal(a, b)


def test_load_state_dict_refuses_a_damaged_window():
    """The kernels trust the window a generation carries: one read from a file is checked."""
    model = random_model(SampleRNNConfig.from_name("tiny", dim=16, n_rnn=1))
    gen = Generator(model, 2, backend="eager", device="cpu")
    state = gen.state_dict()
    state["window"] = state["window"] + model.cfg.q_levels
    with pytest.raises(ValueError, match="window must be"):
        gen.load_state_dict(state)

"""Generation under faults: concurrent runs, kills during finalize, limits, damaged files, bad arguments."""
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import random_model

from fastsrnn import SampleRNNConfig
from fastsrnn.checkpoint import save_checkpoint
from fastsrnn.cli import main
from fastsrnn.generation import longgen
from fastsrnn.generation.generator import Generator, generate
from fastsrnn.generation.longgen import GenerationRun
from fastsrnn.generation.rundir import SETTINGS, STATE
from fastsrnn.generation.settings import GenerationSettings
from fastsrnn.outlock import LOCK_NAME, OutputLocked, locked_output

SMALL = SampleRNNConfig(frame_size=4, emb_size=8, dim=24, n_rnn=2, q_levels=32, sample_rate=800)
SET = GenerationSettings(seconds=0.5, n_seq=3, seed=5, chunk_seconds=0.1, save_every=0.2)
OPTS = dict(backend="eager", device="cpu")


class Killed(Exception):
    pass


@pytest.fixture
def model():
    return random_model(SMALL, 0, scale=0.2)


@pytest.fixture
def ckpt(tmp_path, model):
    return save_checkpoint(tmp_path / "model.pt", model)


def _final_audio(out):
    s = json.loads((out / SETTINGS).read_text())
    return [sf.read(out / f, dtype="int16")[0] for f in s["files"]]


def _interrupted(ckpt, out, **opts):
    """A run killed after its first saves (state.pt and part files on disk)."""
    def kill(run):
        if run.generated >= 160:
            raise Killed

    run = GenerationRun.create(ckpt, out, replace(SET, **opts), **OPTS)
    with pytest.raises(Killed):
        run.run(progress=False, on_chunk=kill)
    return out


# 1 ------------------------------------------------------------------------------------------------
def test_two_generations_into_one_out_are_refused(tmp_path, ckpt):
    empty = tmp_path / "e"
    with locked_output(empty, "fastsrnn generate"):  # a generation starting there (flock: per open file)
        with pytest.raises(OutputLocked, match="in use by pid .*fastsrnn generate"):
            GenerationRun.create(ckpt, empty, SET, **OPTS)
    assert os.listdir(empty) == [LOCK_NAME]  # nothing written by the refused one
    out = tmp_path / "g"
    first = GenerationRun.create(ckpt, out, SET, **OPTS)  # holds the folder until its run ends
    with pytest.raises(FileExistsError):
        GenerationRun.create(ckpt, out, SET, **OPTS)
    with pytest.raises(OutputLocked, match="in use by pid .*fastsrnn generate"):
        GenerationRun.reopen(out)
    assert main(["generate", "--resume", str(out), "--no-progress"]) == 1
    first.run(progress=False)  # unharmed by the refused ones
    assert len(_final_audio(out)) == 3
    _interrupted(ckpt, tmp_path / "k")
    resumed = GenerationRun.reopen(tmp_path / "k")
    with pytest.raises(OutputLocked):
        GenerationRun.reopen(tmp_path / "k")
    resumed.run(progress=False)
    with pytest.raises(FileExistsError, match="complete"):  # released: the next one gets to the real answer
        GenerationRun.reopen(tmp_path / "k")


# 2 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("when", ["before_final", "final_written", "part_removed"])
def test_kill_during_finalize_is_resumable(tmp_path, ckpt, monkeypatch, when):
    whole = tmp_path / "whole"
    GenerationRun.create(ckpt, whole, SET, **OPTS).run(progress=False)
    real, calls = longgen._copy_with_gain, []

    def dying_copy(src, dst, gain, fmt, block=1 << 16):
        calls.append(src)
        if len(calls) == 2:
            if when != "before_final":
                real(src, dst, gain, fmt, block)
            if when == "part_removed":  # what the old finalize left: final done, part gone, nothing recorded
                src.unlink()
            raise Killed
        real(src, dst, gain, fmt, block)

    monkeypatch.setattr(longgen, "_copy_with_gain", dying_copy)
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        GenerationRun.create(ckpt, out, SET, **OPTS).run(progress=False)
    assert (out / STATE).exists() and not json.loads((out / SETTINGS).read_text())["complete"]
    monkeypatch.setattr(longgen, "_copy_with_gain", real)
    GenerationRun.reopen(out).run(progress=False)
    a, b = _final_audio(whole), _final_audio(out)
    assert len(b) == 3 and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not list(out.glob("*.part.wav")) and not (out / STATE).exists()


def test_full_disk_during_finalize_then_resume_via_cli(tmp_path, ckpt, monkeypatch, capsys):
    import errno

    real = longgen._copy_with_gain

    def full(src, dst, gain, fmt, block=1 << 16):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(longgen, "_copy_with_gain", full)
    args = [str(ckpt), "--seconds", "0.5", "--backend", "eager", "--device", "cpu", "--no-progress"]
    assert main(["generate", *args, "--out", str(tmp_path / "g")]) == 1
    assert "disk is full" in capsys.readouterr().err
    monkeypatch.setattr(longgen, "_copy_with_gain", real)
    assert main(["generate", "--resume", str(tmp_path / "g"), "--no-progress"]) == 0
    assert len(_final_audio(tmp_path / "g")[0]) == 400


# 3 ------------------------------------------------------------------------------------------------
def test_n_seq_above_the_open_file_limit_is_refused_up_front(tmp_path, ckpt):
    code = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))\n"
            "from fastsrnn.cli import main\nsys.exit(main(sys.argv[1:]))")
    out = tmp_path / "g"
    r = subprocess.run([sys.executable, "-c", code, "generate", str(ckpt), "--seconds", "0.1", "--n-seq", "300",
                        "--device", "cpu", "--backend", "eager", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "open-file limit here is 200" in r.stderr and "ulimit -n" in r.stderr
    assert not out.exists()


def test_a_low_soft_open_file_limit_is_raised(tmp_path, ckpt):
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    open_now = len(os.listdir("/proc/self/fd"))
    if hard != resource.RLIM_INFINITY and hard < open_now + 200:
        pytest.skip("hard open-file limit too low to test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 40, hard))
    try:
        files = GenerationRun.create(ckpt, tmp_path / "g", replace(SET, n_seq=60, seconds=0.05), **OPTS).run(
            progress=False)
        assert len(files) == 60
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# 4 ------------------------------------------------------------------------------------------------
def test_a_folder_that_is_not_a_generation_is_refused_unless_empty(tmp_path, ckpt):
    out = tmp_path / "g"
    out.mkdir()
    (out / "state.pt").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="not empty .*state.pt"):
        GenerationRun.create(ckpt, out, SET, **OPTS)
    assert (out / "state.pt").read_bytes() == b"precious" and sorted(os.listdir(out)) == ["state.pt"]
    empty = tmp_path / "e"
    empty.mkdir()
    (empty / LOCK_NAME).write_text("pid 1 (old)\n")  # left by an earlier command: not content
    assert len(GenerationRun.create(ckpt, empty, SET, **OPTS).run(progress=False)) == 3


def test_resuming_where_nothing_was_started_says_so(tmp_path, capsys):
    """A run stopped before its settings were written (e.g. during the extension's first build)
    leaves no folder, or only its lock: --resume says to start it again, not 'not a generation'."""
    from fastsrnn.cli import main

    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / LOCK_NAME).write_text("pid 1 (old)\n")
    for out in (tmp_path / "never", locked):
        assert main(["generate", "--resume", str(out), "--no-progress"]) == 1
        assert "nothing to resume" in capsys.readouterr().err and not (tmp_path / "never").exists()
    (locked / "song.wav").write_bytes(b"x")
    assert main(["generate", "--resume", str(locked), "--no-progress"]) == 1
    assert "not a fastsrnn generation directory" in capsys.readouterr().err


# 5 ------------------------------------------------------------------------------------------------
def test_absurd_lengths_are_refused_before_anything_is_made(tmp_path, ckpt, capsys):
    prime = tmp_path / "prime.wav"
    sf.write(prime, 0.3 * np.sin(np.arange(800) / 5), 800)
    cases = [(dict(seconds=1e12), ValueError, "GB free"),
             (dict(seconds=1e-5), ValueError, "under one frame: the minimum is 4 samples = 0.005 s"),
             (dict(prime=prime, prime_seconds=0), ValueError, "--prime-seconds must be > 0"),
             (dict(prime=prime, prime_seconds=-1), ValueError, "--prime-seconds must be > 0"),
             (dict(prime=prime, prime_seconds=math.nan), ValueError, "--prime-seconds must be > 0 and finite"),
             (dict(prime_seconds=1.0), ValueError, "--prime-seconds needs --prime"),
             (dict(seconds=math.nan), ValueError, "--seconds must be > 0 and finite"),
             (dict(seconds=math.inf), ValueError, "--seconds must be > 0 and finite"),
             (dict(temperature=math.nan), ValueError, "--temperature must be finite"),
             (dict(temperature=[1.0, math.inf, 1.0]), ValueError, "--temperature must be finite"),
             (dict(save_every=math.inf), ValueError, "--save-every must be > 0 and finite"),
             (dict(chunk_seconds=math.nan), ValueError, "--chunk-seconds must be > 0 and finite"),
             (dict(n_seq=2.5), TypeError, "--n-seq must be an integer"),
             (dict(top_k=-1), ValueError, "--top-k must be >= 0"),
             (dict(top_p=0.0), ValueError, r"--top-p must be in \(0, 1\]"),
             (dict(top_p=1.5), ValueError, r"--top-p must be in \(0, 1\]")]
    for i, (opts, exc, msg) in enumerate(cases):
        with pytest.raises(exc, match=msg):
            GenerationRun.create(ckpt, tmp_path / f"o{i}", replace(SET, **opts), **OPTS)
        assert not (tmp_path / f"o{i}" / SETTINGS).exists()
    for option, value in [("--seconds", "nan"), ("--temperature", "inf"), ("--save-every", "nan"),
                          ("--seconds", "1e12"), ("--top-k", "-2"), ("--top-p", "0"), ("--top-p", "2")]:
        assert main(["generate", str(ckpt), option, value, "--device", "cpu", "--out", str(tmp_path / "c")]) == 1
        assert option in capsys.readouterr().err or value == "1e12"


# 6 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_dict", "bad_stats"])
def test_a_damaged_state_file_is_named(tmp_path, ckpt, damage):
    out = _interrupted(ckpt, tmp_path / "g")
    path = out / STATE
    if damage == "garbage":
        path.write_bytes(b"\x80\x04garbage")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "wrong_dict":
        torch.save({"something": 1}, path)
    else:
        saved = torch.load(path, weights_only=True)
        saved["stats"]["peak"] = [0.0]
        torch.save(saved, path)
    with pytest.raises(ValueError, match=r"state.pt: damaged"):
        GenerationRun.reopen(out)
    # the lock was released: another attempt gets the same clear error, not "in use"
    with pytest.raises(ValueError, match="damaged"):
        GenerationRun.reopen(out)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"format": "fastsrnn-generation", "version": 1}',
                                  "\udcff"])
def test_a_damaged_settings_file_is_named(tmp_path, ckpt, text):
    out = _interrupted(ckpt, tmp_path / "g")
    if text == "\udcff":
        (out / SETTINGS).write_bytes(b"\xff\xfe\x00garbage")
    else:
        (out / SETTINGS).write_text(text)
    with pytest.raises(ValueError, match=r"generation.json: (damaged|not a fastsrnn generation)"):
        GenerationRun.reopen(out)


# 7 ------------------------------------------------------------------------------------------------
def test_resume_with_a_checkpoint_or_other_settings_is_refused(tmp_path, ckpt, model, capsys):
    out = _interrupted(ckpt, tmp_path / "g")
    other = save_checkpoint(tmp_path / "other.pt", model)
    for before, after, named in [([str(other)], [], "other.pt"), ([], ["--seconds", "5"], "--seconds 5"),
                                 ([], ["--n-seq", "2"], "--n-seq 2"), ([], ["--out", str(tmp_path / "x")], "--out"),
                                 ([], ["--argmax"], "--argmax"), ([], ["--format", "flac"], "--format flac"),
                                 ([], ["--top-k", "5"], "--top-k 5"), ([], ["--top-p", "0.9"], "--top-p 0.9")]:
        assert main(["generate", *before, "--resume", str(out), *after, "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert "disagree" in err and named in err
    assert json.loads((out / SETTINGS).read_text())["complete"] is False  # nothing was touched
    # options that agree with the stored ones are fine (a repeated command line + --resume)
    assert main(["generate", str(ckpt), "--resume", str(out), "--seconds", "0.5", "--n-seq", "3", "--seed", "5",
                 "--device", "cpu", "--no-progress"]) == 0


# 8 ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error(tmp_path, ckpt, model, capsys):
    assert main(["generate", str(ckpt), "--device", "cuda", "--out", str(tmp_path / "g")]) == 1
    assert "torch has no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()
    with pytest.raises(ValueError, match="torch has no CUDA device"):
        Generator(model, 1, device="cuda")
    with pytest.raises(ValueError, match="torch has no CUDA device"):
        GenerationRun.create(ckpt, tmp_path / "g", GenerationSettings(seconds=1), device="cuda:1")
    with pytest.raises(ValueError, match="'gpu' is not a device"):
        Generator(model, 1, device="gpu")


# 9 ------------------------------------------------------------------------------------------------
def test_python_api_type_errors_name_the_argument(tmp_path, model, ckpt):
    kw = dict(backend="eager", device="cpu")
    for n in (1.5, "100", None, True):
        with pytest.raises(TypeError, match="n_samples must be an int"):
            generate(model, n, **kw)
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        generate(model, 0, **kw)
    with pytest.raises(TypeError, match="n_seq must be an int"):
        generate(model, 10, n_seq=2.5, **kw)
    with pytest.raises(TypeError, match="temperature must be a number"):
        generate(model, 10, temperature="hot", **kw)
    with pytest.raises(ValueError, match="temperature must be finite"):
        generate(model, 10, temperature=float("nan"), **kw)
    with pytest.raises(TypeError, match=r"model must be a SampleRNN, got str \(load a checkpoint"):
        generate(str(ckpt), 10, **kw)
    with pytest.raises(TypeError, match="seed must be an int"):
        generate(model, 10, seed="1", **kw)
    with pytest.raises(TypeError, match="prime: expected integer quantized levels.*float32"):
        generate(model, 10, prime=torch.rand(40), **kw)
    with pytest.raises(TypeError, match="prime: expected integer"):
        generate(model, 10, prime=[0.5] * 40, **kw)
    # a path as prime is read with prime_levels; the same as passing its levels
    from fastsrnn.generation.generator import prime_levels

    sf.write(tmp_path / "p.wav", 0.3 * np.sin(np.arange(400) / 3), 800)
    by_path = generate(model, 40, prime=tmp_path / "p.wav", seed=1, **kw)
    by_levels = generate(model, 40, prime=prime_levels(tmp_path / "p.wav", SMALL), seed=1, **kw)
    assert np.array_equal(by_path, by_levels)
    assert np.array_equal(generate(model, 40, prime=str(tmp_path / "p.wav"), seed=1, **kw), by_path)
    assert generate(model, np.int64(12), **kw).shape == (1, 12)  # numpy integers are integers


# issue 20 W13, W18, W17 ---------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["frame_rnn.h0", "frame_rnn.c0", "upper_rnns.0.h0"])
def test_a_nan_learned_initial_state_in_a_checkpoint_is_refused(tmp_path, where, capsys):
    """Export checks h0/c0 like every other weight: a NaN there is named, never generated from."""
    from fastsrnn.ops.export import export_inference

    cfg = replace(SMALL, frame_sizes=(4, 2)) if where.startswith("upper") else SMALL
    model = random_model(cfg, 0, scale=0.2)
    with torch.no_grad():
        model.get_parameter(where)[-1, 0, 3] = math.nan
    named = where.replace("upper_rnns.0.", "upper_rnns[0].").replace("frame_rnn.", "")
    with pytest.raises(ValueError, match=rf"{re.escape(named)} holds NaN or Inf"):
        export_inference(model)
    ckpt = save_checkpoint(tmp_path / "nan.pt", model)
    out = tmp_path / "g"
    assert main(["generate", str(ckpt), "--seconds", "0.2", "--backend", "folded", "--device", "cpu",
                 "--out", str(out), "--no-progress"]) == 1
    assert f"{named} holds NaN or Inf" in capsys.readouterr().err
    assert not out.exists()  # refused before the folder is made


def _files(out):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.iterdir()) if p.is_file()
            and p.name != LOCK_NAME}  # the lock names its holder: rewritten by each attempt


def test_a_nan_or_overlong_state_is_refused_on_resume(tmp_path, ckpt, capsys):
    """A state.pt with NaN or Inf (W18) or more samples written than the run has (W17): resume names the
    file and the tensor or the numbers, exits 1, and changes nothing in the folder."""
    import shutil

    pristine = _interrupted(ckpt, tmp_path / "g")
    settings = json.loads((pristine / SETTINGS).read_text())
    total = settings["prime_samples"] + settings["n_samples"]
    for damage in ("h", "c", "inv_temperature", "peak", "written"):
        out = shutil.copytree(pristine, tmp_path / damage)
        saved = torch.load(out / STATE, weights_only=True)
        if damage in ("h", "c", "inv_temperature"):
            saved["generator"][damage].view(-1)[-1] = math.inf if damage == "c" else math.nan
            said = rf"state.pt: damaged, generator.{damage} holds NaN or Inf"
        elif damage == "peak":
            saved["stats"]["peak"][1] = math.nan
            said = r"state.pt: damaged, stats.peak\[1\] holds NaN or Inf"
        else:
            saved["stats"]["written"] = total + 7
            said = rf"state.pt: damaged, stats.written is {total + 7} samples per sequence, .* = {total};"
        torch.save(saved, out / STATE)
        before = _files(out)
        capsys.readouterr()
        assert main(["generate", "--resume", str(out), "--no-progress"]) == 1, damage
        assert re.search(said, capsys.readouterr().err), damage
        assert _files(out) == before and not json.loads((out / SETTINGS).read_text())["complete"], damage

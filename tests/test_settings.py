"""One settings object per run: GenerationSettings (generation.json, the generate flags, the resume
comparison) and TrainConfig (the train flags), each option defined once."""
import argparse
import json
import math
from dataclasses import fields, replace

import numpy as np
import pytest
import soundfile as sf
from helpers import random_model

from fastsrnn import SampleRNNConfig
from fastsrnn.checkpoint import save_checkpoint
from fastsrnn.cli import main
from fastsrnn.generation.cli import add_arguments as generate_arguments
from fastsrnn.generation.longgen import GenerationRun
from fastsrnn.generation.rundir import SETTINGS
from fastsrnn.generation.settings import GenerationSettings, flag
from fastsrnn.training.cli import add_arguments as train_arguments
from fastsrnn.training.train_config import TrainConfig

SMALL = SampleRNNConfig(frame_size=4, emb_size=8, dim=24, n_rnn=2, q_levels=32, sample_rate=800)
SET = GenerationSettings(seconds=0.5, n_seq=3, seed=5, chunk_seconds=0.1, save_every=0.2)
# generation.json as the code before GenerationSettings wrote it (format version 1)
V1_KEYS = {"format", "version", "checkpoint", "checkpoint_sha256", "seconds", "n_samples", "sample_rate", "n_seq",
           "temperature", "argmax", "h0", "seed", "prime", "prime_seconds", "prime_samples", "audio_format",
           "normalize", "chunk_samples", "save_every_samples", "backend", "precision", "precision_data",
           "precision_check", "complete"}
ADDED_SINCE = ("prime", "prime_seconds", "precision", "precision_data", "precision_check")  # older files lack them
SAMPLING_CUTS = {"top_k", "top_p"}  # added with GenerationSettings' first new fields; older files lack them too


@pytest.fixture
def ckpt(tmp_path):
    return save_checkpoint(tmp_path / "model.pt", random_model(SMALL, 0, scale=0.2))


def _parser(add):
    p = argparse.ArgumentParser()
    add(p)
    return p


def _interrupted(ckpt, out, settings=SET):
    class Killed(Exception):
        pass

    def kill(run):
        if run.generated >= 160:
            raise Killed

    run = GenerationRun.create(ckpt, out, settings, backend="eager", device="cpu")
    with pytest.raises(Killed):
        run.run(progress=False, on_chunk=kill)
    return out


def _audio(out):
    return [sf.read(out / f, dtype="int16")[0] for f in json.loads((out / SETTINGS).read_text())["files"]]


def test_generation_settings_round_trip_through_generation_json():
    s = replace(SET, temperature=[0.9, 1.0, 1.1], h0="random", audio_format="flac", precision="bf16")
    assert s.temperature == (0.9, 1.0, 1.1)
    d = s.to_dict(800)
    assert d["chunk_samples"] == 80 and d["save_every_samples"] == 160 and d["audio_format"] == "flac"
    assert GenerationSettings.from_dict(json.loads(json.dumps({**d, "sample_rate": 800}))) == s
    assert GenerationSettings.from_dict({"sample_rate": 800, "seconds": 2}) == GenerationSettings(seconds=2.0)
    for sr, n in [(800, 131062), (16000, 3), (44100, 12345)]:  # samples / rate * rate is not always n in floats
        d = {**GenerationSettings().to_dict(sr), "sample_rate": sr, "chunk_samples": n, "save_every_samples": n}
        assert GenerationSettings.from_dict(d).to_dict(sr)["chunk_samples"] == n


@pytest.mark.parametrize("change,message", [
    (dict(seconds=0), "--seconds must be > 0"), (dict(chunk_seconds=math.nan), "--chunk-seconds must be > 0"),
    (dict(save_every=-1.0), "--save-every must be > 0"), (dict(n_seq=0), "--n-seq must be >= 1"),
    (dict(n_seq=1.5), "--n-seq must be an integer"), (dict(seed=0.5), "--seed must be an integer"),
    (dict(temperature=0), "--temperature must be finite and > 0"),
    (dict(temperature=[1.0, 2.0]), "--temperature gives 2 values for --n-seq 3"),
    (dict(h0="warm"), "--h0 must be 'learned' or 'random' or 'zeros'"), (dict(audio_format="mp3"), "--format"),
    (dict(normalize="loud"), "--normalize"), (dict(precision="fp16"), "--precision must be one of"),
    (dict(prime_seconds=1.0), "--prime-seconds needs --prime")], ids=lambda x: str(x)[:30])
def test_generation_settings_errors_name_the_flag(change, message):
    with pytest.raises((TypeError, ValueError), match=message):
        replace(SET, **change)


def test_generate_flags_are_built_from_the_fields():
    p = _parser(generate_arguments)
    help_text = " ".join(p.format_help().split())
    for f in fields(GenerationSettings):
        assert flag(f.name) in help_text and " ".join(f.metadata["help"].split()) in help_text
    args = p.parse_args(["ckpt.pt", "--format", "flac", "--save-every", "5", "--temperature", "0.8,0.9"])
    assert (args.audio_format, args.save_every, args.temperature, args.seconds) == ("flac", 5.0, [0.8, 0.9], None)
    assert "[default: 30]" in help_text and "[default: 0]" in help_text  # the fields' defaults, shown once


def test_generation_json_keys_are_those_of_format_version_1(tmp_path, ckpt):
    out = _interrupted(ckpt, tmp_path / "g")
    assert set(json.loads((out / SETTINGS).read_text())) == V1_KEYS | SAMPLING_CUTS


@pytest.mark.parametrize("era", ["v1", "before_precision"])
def test_resume_of_a_generation_json_written_before_generation_settings(tmp_path, ckpt, era):
    GenerationRun.create(ckpt, tmp_path / "whole", SET, backend="eager", device="cpu").run(progress=False)
    out = _interrupted(ckpt, tmp_path / "g")
    d = json.loads((out / SETTINGS).read_text())
    # the old writer's literal layout: key order of the code before, temperature as given
    old = {k: d[k] for k in ("format", "version", "checkpoint", "checkpoint_sha256", "seconds", "n_samples",
                             "sample_rate", "n_seq", "temperature", "argmax", "h0", "seed", "prime",
                             "prime_seconds", "prime_samples", "audio_format", "normalize", "chunk_samples",
                             "save_every_samples", "backend", "precision", "precision_data", "precision_check",
                             "complete")}
    if era == "before_precision":
        old = {k: v for k, v in old.items() if k not in ADDED_SINCE}
    (out / SETTINGS).write_text(json.dumps(old, indent=2))
    assert main(["generate", "--resume", str(out), "--format", "flac", "--no-progress"]) == 1  # still compared
    assert main(["generate", str(ckpt), "--resume", str(out), "--seconds", "0.5", "--n-seq", "3", "--seed", "5",
                 "--chunk-seconds", "0.1", "--save-every", "0.2", "--precision", "fp32", "--no-progress"]) == 0
    for a, b in zip(_audio(tmp_path / "whole"), _audio(out)):
        assert np.array_equal(a, b)


def test_resume_compares_every_field_as_generation_json_stores_it(tmp_path, ckpt, capsys, monkeypatch):
    prime = tmp_path / "prime.wav"
    sf.write(prime, 0.3 * np.sin(np.arange(800) / 5), 800)
    out = _interrupted(ckpt, tmp_path / "g", replace(SET, temperature=[0.9, 1.0, 1.1], prime=str(prime)))
    for option, value, named in [("--temperature", "0.9,1.0,1.2", "--temperature 0.9,1,1.2 (stored: 0.9,1,1.1)"),
                                 ("--chunk-seconds", "0.2", "--chunk-seconds 0.2 (stored: 0.1)"),
                                 ("--prime", str(tmp_path / "other.wav"), "--prime"),
                                 ("--precision-data", str(tmp_path), "--precision-data")]:
        assert main(["generate", "--resume", str(out), option, value, "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert "disagree" in err and named in err, err
    same = ["--temperature", "0.9,1,1.1", "--chunk-seconds", "0.1", "--prime", str(prime.relative_to(tmp_path))]
    monkeypatch.chdir(tmp_path)  # a relative --prime names the same file
    assert main(["generate", "--resume", str(out), *same, "--no-progress"]) == 0


def test_train_flags_are_built_from_train_config_fields():
    p = _parser(train_arguments)
    help_text = " ".join(p.format_help().split())
    for f in fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in help_text and " ".join(f.metadata["help"].split()) in help_text
    args = p.parse_args(["data", "--out", "run", "--clip-h0", "learned", "--lr", "0.01", "--no-compile"])
    assert (args.clip_h0, args.lr, args.compile, args.batch_size) == ("learned", 0.01, False, None)
    with pytest.raises(SystemExit):
        p.parse_args(["data", "--out", "run", "--lr", "nan"])
    with pytest.raises(ValueError, match="TrainConfig: clip_h0 must be one of random, learned, zeros, got 'warm'"):
        TrainConfig(clip_h0="warm")

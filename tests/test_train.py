"""Training: the loss falls on a learnable signal, an interrupted run resumes to bit-identical
state, run folders are never silently overwritten, and the CLI drives it all."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from helpers import SMALL, assert_same_training_state, riff_dataset, small_train_config

from fastsrnn.checkpoint import load_checkpoint
from fastsrnn.training.train_config import TrainConfig
from fastsrnn.training.trainer import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return riff_dataset(tmp_path_factory.mktemp("riff"))


def _steps(bits_log):
    return lambda info: bits_log.append(info["train_bits"])


def test_loss_falls_on_a_repeating_riff(data, tmp_path):
    seen = []
    cfg = small_train_config(tbptt=16, max_steps=80, checkpoint_every=80, valid_every=20, n_clips=0, lr=3e-3)
    summary = train(data, tmp_path / "run", SMALL, cfg, progress=False, callback=_steps(seen))
    assert len(seen) == 80
    first, last = sum(seen[:5]) / 5, sum(seen[-5:]) / 5
    assert first > 7.0  # a fresh model is close to the 8 bits of a uniform guess
    assert last < first - 2.5, (first, last)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    valids = [r["valid_bits"] for r in records if "valid_bits" in r]
    assert len(valids) == 4 and valids[-1] < valids[0] and valids[-1] < 2.0, valids
    assert summary["test_bits"] < 2.0
    assert summary["best_step"] == 80 and summary["steps"] == 80


class _Killed(Exception):
    pass


def _kill_at(step):
    def cb(info):
        if info["step"] == step:
            raise _Killed
    return cb


# 20 train-ish chunks of 4,000 samples, 4 per batch, 4 sub-sequences of 1,024 per batch: the
# 30 steps cross batch and epoch boundaries, and checkpoint 21 falls in the middle of a batch.
RESUME_CFG = dict(tbptt=64, max_steps=30, checkpoint_every=7)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("full") / "run"
    train(data, run, SMALL, small_train_config(**RESUME_CFG), progress=False)
    return run


def test_resume_after_a_crash_is_bit_identical(data, uninterrupted, tmp_path):
    cfg = small_train_config(**RESUME_CFG)
    with pytest.raises(_Killed):  # dies right after the step-21 checkpoint
        train(data, tmp_path / "run", SMALL, cfg, progress=False, callback=_kill_at(21))
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 21
    seen = []
    summary = train(data, tmp_path / "run", None, None, progress=False, callback=lambda i: seen.append(i["step"]))
    assert seen == list(range(22, 31))  # configs came from the run folder; only the rest was trained
    assert_same_training_state(load_checkpoint(uninterrupted / "checkpoints" / "last.pt"),
                               load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt"))
    full = (uninterrupted / "metrics.jsonl").read_text().splitlines()
    resumed = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()

    def strip(lines):
        return [{k: v for k, v in json.loads(x).items() if k not in ("samples_per_s", "time")} for x in lines]

    assert strip(resumed) == strip(full)  # no duplicated or missing records
    assert summary["test_bits"] == json.loads(full[-1])["test_bits"]


@pytest.mark.slow
def test_resume_after_sigkill_between_checkpoints(data, uninterrupted, tmp_path):
    run = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal
        from fastsrnn.training.trainer import train
        from helpers import SMALL, small_train_config
        def cb(info):
            if info["step"] == 17:  # after the step-14 checkpoint, before the next
                os.kill(os.getpid(), signal.SIGKILL)
        train({str(data)!r}, {str(run)!r}, SMALL, small_train_config(**{RESUME_CFG!r}), progress=False, callback=cb)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 14
    train(data, run, SMALL, small_train_config(**RESUME_CFG), progress=False)
    assert_same_training_state(load_checkpoint(uninterrupted / "checkpoints" / "last.pt"),
                               load_checkpoint(run / "checkpoints" / "last.pt"))


def test_clips_checkpoints_and_config_are_written(uninterrupted):
    ckpts = uninterrupted / "checkpoints"
    assert (ckpts / "last.pt").is_file() and (ckpts / "best.pt").is_file()
    steps = sorted(p.name for p in (uninterrupted / "samples").iterdir())
    assert [int(s) for s in steps] == [7, 14, 21, 28, 30]
    import soundfile as sf

    info = sf.info(str(uninterrupted / "samples" / steps[0] / "clip_00.wav"))
    assert info.samplerate == 16000 and info.frames == round(0.02 * 16000)
    saved = json.loads((uninterrupted / "config.json").read_text())
    assert saved["model"] == SMALL.to_dict() and saved["train"]["max_steps"] == 30


def test_other_model_config_in_existing_run_is_an_error(data, uninterrupted):
    before = (uninterrupted / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ValueError, match="another model config.*dim"):
        train(data, uninterrupted, "tiny", small_train_config(**RESUME_CFG), progress=False)
    with pytest.raises(ValueError, match="batch_size=4 \\(now 2\\)"):
        train(data, uninterrupted, SMALL, small_train_config(**dict(RESUME_CFG, batch_size=2)), progress=False)
    with pytest.raises(FileExistsError, match="already holds a training run"):
        train(data, uninterrupted, SMALL, small_train_config(**RESUME_CFG), resume=False, progress=False)
    assert (uninterrupted / "checkpoints" / "last.pt").read_bytes() == before  # never overwritten


def test_bad_inputs_name_the_culprit(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
        train(tmp_path, tmp_path / "run", SMALL, small_train_config(), progress=False)
    with pytest.raises(ValueError, match="TrainConfig: tbptt"):
        TrainConfig(tbptt=0)
    with pytest.raises(ValueError, match="prepared at 16000 Hz"):
        train(data, tmp_path / "run", SMALL.__class__(**dict(SMALL.to_dict(), sample_rate=8000)),
              small_train_config(), progress=False)


def test_cli_trains_and_resumes_with_more_steps(data, tmp_path):
    from fastsrnn.cli import main

    run = tmp_path / "run"
    args = ["train", str(data), "--out", str(run), "--preset", "tiny", "--batch-size", "2", "--tbptt", "4",
            "--checkpoint-every", "2", "--n-clips", "0", "--device", "cpu", "--quiet"]
    assert main(args + ["--max-steps", "2"]) == 0
    assert main(["train", str(data), "--out", str(run), "--max-steps", "3", "--quiet"]) == 0  # resume
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["step"] == 3 and ckpt["train_config"]["batch_size"] == 2
    assert main(args + ["--max-steps", "3", "--no-resume"]) == 1  # refuses, names the run

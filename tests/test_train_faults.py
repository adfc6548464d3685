"""Training under faults: checkpoints between validations, a diverging loss, foreign or busy run
folders, SIGTERM/SIGINT, failing clips, bad options, a full disk. Each test reproduced a bug."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import SMALL, assert_same_training_state, riff_dataset, small_train_config

from fastsrnn.checkpoint import load_checkpoint
from fastsrnn.cli import main
from fastsrnn.outlock import OutputLocked, locked_output
from fastsrnn.training import trainer
from fastsrnn.training.dist import Dist
from fastsrnn.training.errors import CheckpointWriteError, TrainingDiverged, TrainingInterrupted
from fastsrnn.training.signals import _StopOnSignal
from fastsrnn.training.train_config import TrainConfig
from fastsrnn.training.trainer import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return riff_dataset(tmp_path_factory.mktemp("riff"))


@pytest.fixture(scope="module")
def data_no_valid(data, tmp_path_factory):
    """The riff dataset with its valid chunks taken out of the manifest."""
    out = tmp_path_factory.mktemp("novalid") / "data"
    shutil.copytree(data, out)
    m = json.loads((out / "manifest.json").read_text())
    m["chunks"] = [c for c in m["chunks"] if c["split"] != "valid"]
    (out / "manifest.json").write_text(json.dumps(m))
    return out


def _records(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _clip_steps(run):
    return sorted(int(p.name) for p in (run / "samples").iterdir() if list(p.glob("clip_*.wav")))


# ---- 1. clips at a checkpoint that is not a validation step ---------------------------------
@pytest.mark.parametrize("which", ["valid", "no-valid"])
def test_checkpoint_between_validations_writes_clips(data, data_no_valid, tmp_path, which):
    ds = data if which == "valid" else data_no_valid
    cfg = small_train_config(max_steps=6, checkpoint_every=2, valid_every=4)
    summary = train(ds, tmp_path / "run", SMALL, cfg, progress=False)
    assert summary["steps"] == 6
    assert _clip_steps(tmp_path / "run") == [2, 4, 6]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 6


def test_cli_tiny_checkpoint_between_validations(data, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--preset", "tiny", "--batch-size", "8", "--tbptt", "4",
                 "--max-steps", "4", "--checkpoint-every", "2", "--valid-every", "4", "--n-clips", "1",
                 "--clip-seconds", "0.02", "--clip-backend", "eager", "--device", "cpu", "--quiet"]) == 0
    assert _clip_steps(run) == [2, 4]


# ---- 2. a non-finite loss -------------------------------------------------------------------
def _inf_lr(**kw):
    """A config with lr = inf, as `--lr inf` gave before the option was checked at parse time."""
    cfg = small_train_config(**kw)
    object.__setattr__(cfg, "lr", float("inf"))
    return cfg


@pytest.mark.parametrize("every,says", [(2, r"diverged at step 6: the loss is nan"),
                                        (1, r"diverged at step 5: the weights hold NaN")])
def test_diverging_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(data, tmp_path, every, says):
    run = tmp_path / "run"
    train(data, run, SMALL, small_train_config(max_steps=4, checkpoint_every=4, n_clips=0), progress=False)
    good = (run / "checkpoints" / "last.pt").read_bytes()
    (run / "summary.json").unlink()
    # lr inf: step 5's update makes every weight NaN; the loss of step 6 is NaN
    with pytest.raises(TrainingDiverged, match=says + r".*the last good checkpoint, .*last.pt, is kept"):
        train(data, run, None, _inf_lr(max_steps=40, checkpoint_every=every, n_clips=0), progress=False)
    assert (run / "checkpoints" / "last.pt").read_bytes() == good  # never replaced by NaN weights
    assert not (run / "summary.json").exists()


def test_cli_nan_loss_exits_non_zero_naming_the_step(data, tmp_path, capsys, monkeypatch):
    real, calls = trainer.nll_bits, []

    def nan_from_step_3(logits, target):
        calls.append(1)
        bits = real(logits, target)
        return bits * float("nan") if len(calls) >= 3 else bits

    monkeypatch.setattr(trainer, "nll_bits", nan_from_step_3)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--preset", "tiny", "--batch-size", "4", "--tbptt", "2",
                 "--max-steps", "10", "--checkpoint-every", "2", "--n-clips", "0", "--device", "cpu",
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "training diverged at step 3: the loss is nan" in err, err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2
    assert not (run / "summary.json").exists()


def test_summary_names_no_best_checkpoint_that_was_not_written(data_no_valid, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer._Loop, "save_best", lambda self, pos, valid: None)
    summary = train(data_no_valid, tmp_path / "run", SMALL, small_train_config(max_steps=2, n_clips=0),
                    progress=False)
    assert summary["best_checkpoint"] is None


# ---- 3. a folder that is not a run; a run on another dataset --------------------------------
def test_folder_that_is_not_a_run_is_refused_untouched(data, tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    (out / "summary.json").write_text('{"mine": 1}\n')
    with pytest.raises(FileExistsError, match="not a fastsrnn training run.*summary.json"):
        train(data, out, SMALL, small_train_config(max_steps=2), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]  # no lock file, no config
    assert (out / "summary.json").read_text() == '{"mine": 1}\n'
    assert main(["train", str(data), "--out", str(out), "--preset", "tiny", "--quiet"]) == 1
    # an empty folder holding only a lock file is a new run
    empty = tmp_path / "empty"
    with locked_output(empty, "test"):
        pass
    train(data, empty, SMALL, small_train_config(max_steps=1, n_clips=0), progress=False)


def test_resume_on_another_dataset_is_refused_before_writing(data, tmp_path):
    run = tmp_path / "run"
    train(data, run, SMALL, small_train_config(max_steps=2, n_clips=0), progress=False)
    (tmp_path / "other").mkdir()
    other = riff_dataset(tmp_path / "other", seconds=5.0)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="another dataset"):
        train(other, run, None, small_train_config(max_steps=4, n_clips=0), progress=False)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


# ---- 4. two trainings into one folder -------------------------------------------------------
def test_second_training_into_the_same_folder_is_refused(data, tmp_path):
    run = tmp_path / "run"
    refused = []

    def second(info):
        if info["step"] == 1:
            with pytest.raises(OutputLocked, match=f"in use by pid {os.getpid()} \\(fastsrnn train"):
                train(data, run, None, None, progress=False)
            refused.append(True)

    train(data, run, SMALL, small_train_config(max_steps=2, n_clips=0), progress=False, callback=second)
    assert refused
    with locked_output(run, "fastsrnn train"):
        assert main(["train", str(data), "--out", str(run), "--max-steps", "3", "--quiet"]) == 1
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2


# ---- 5. SIGTERM / SIGINT --------------------------------------------------------------------
RESUME_CFG = dict(tbptt=64, max_steps=14, checkpoint_every=7, n_clips=0)


@pytest.fixture(scope="module")
def full(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("full") / "run"
    train(data, run, SMALL, small_train_config(**RESUME_CFG), progress=False)
    return run


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_last_and_resume_is_exact(data, full, tmp_path, sig, code, capsys, monkeypatch):
    closed = []
    monkeypatch.setattr(Dist, "close", lambda self: closed.append(True))

    def cb(info):
        if info["step"] == 10:  # between the checkpoints of steps 7 and 14
            os.kill(os.getpid(), sig)

    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as e:
        train(data, run, SMALL, small_train_config(**RESUME_CFG), progress=False, callback=cb)
    assert e.value.exit_code == code
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 10
    assert f"fastsrnn train {data} --out {run}" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers given back
    assert closed == [True]  # the process group (under torchrun) is torn down after a stop too
    monkeypatch.undo()
    train(data, run, None, None, progress=False)
    assert_same_training_state(load_checkpoint(full / "checkpoints" / "last.pt"),
                               load_checkpoint(run / "checkpoints" / "last.pt"))


def test_sigterm_to_the_cli_saves_prints_the_resume_command_and_exits_143(data, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "fastsrnn", "train", str(data), "--out", str(run), "--preset", "tiny",
           "--batch-size", "4", "--tbptt", "2", "--max-steps", "2000", "--checkpoint-every", "5", "--n-clips", "0",
           "--device", "cpu", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "checkpoints" / "last.pt").exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    step = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert 5 <= step < 2000
    resume = f"fastsrnn train {data} --out {run}"
    assert "SIGTERM: stopped at step" in err and resume in err, err
    assert not (run / "summary.json").exists()
    # the printed command, with --max-steps lowered so that the test ends soon
    assert main(resume.split()[1:] + ["--max-steps", str(step + 3), "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == step + 3


def test_only_a_repeated_signal_stops_without_saving():
    """Ctrl-C under torchrun: SIGINT, then the SIGTERM torchrun sends its workers; or a stop set by
    another rank, then torchrun's SIGTERM: the run still saves. The same signal twice stops at once."""
    from types import SimpleNamespace

    loop = SimpleNamespace(stop_signal=None)
    with _StopOnSignal(loop):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)  # another kind: no KeyboardInterrupt
        assert loop.stop_signal == signal.SIGINT  # the first one names the stop
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    loop = SimpleNamespace(stop_signal=signal.SIGTERM)  # as _stop_requested sets it for another rank's signal
    with _StopOnSignal(loop):
        os.kill(os.getpid(), signal.SIGTERM)
        assert loop.stop_signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# ---- 6. clips never kill the training -------------------------------------------------------
def test_failing_clips_warn_are_recorded_and_written_at_the_next_checkpoint(data, tmp_path, monkeypatch):
    from fastsrnn.generation import generator

    real, calls = generator.generate, []

    def flaky(*a, **k):
        calls.append(k["seed"])
        if len(calls) == 1:
            raise RuntimeError("backend exploded")
        return real(*a, **k)

    monkeypatch.setattr(generator, "generate", flaky)
    run = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match="clips of step 2 could not be written.*backend exploded"):
        summary = train(data, run, SMALL, small_train_config(max_steps=6, checkpoint_every=2), progress=False)
    assert summary["steps"] == 6
    assert calls == [2, 2, 4, 6]  # step 2's clips again at step 4, from step 2's weights
    assert _clip_steps(run) == [2, 4, 6]
    failed = [r for r in _records(run) if r.get("event") == "clips_failed"]
    assert failed == [{"event": "clips_failed", "step": 2, "error": "RuntimeError: backend exploded"}]


class _Kill(BaseException):
    pass


def test_clips_lost_to_a_kill_after_last_pt_are_written_at_resume(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    full = tmp_path / "full"
    cfg = small_train_config(max_steps=6, checkpoint_every=2)
    train(data, full, SMALL, cfg, progress=False)
    real = trainer._Loop._clips

    def killed_at_4(self, step, weights):
        if step == 4:
            raise _Kill  # dies between last.pt and its clips
        return real(self, step, weights)

    monkeypatch.setattr(trainer._Loop, "_clips", killed_at_4)
    with pytest.raises(_Kill):
        train(data, run, SMALL, cfg, progress=False)
    monkeypatch.setattr(trainer._Loop, "_clips", real)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4 and _clip_steps(run) == [2]
    train(data, run, None, None, progress=False)
    assert _clip_steps(run) == [2, 4, 6]
    for step in (4, 6):  # the same clips as the uninterrupted run's
        name = f"{step:07d}/clip_00.wav"
        assert (run / "samples" / name).read_bytes() == (full / "samples" / name).read_bytes()


# ---- 7. options checked at the start --------------------------------------------------------
@pytest.mark.parametrize("option,value,says", [
    ("--clip-backend", "nope", ["argument --clip-backend: invalid choice", "nope", "auto", "eager", "cuda"]),
    ("--clip-seconds", "inf", ["argument --clip-seconds: must be a finite number"]),
    ("--lr", "nan", ["argument --lr: must be a finite number"]),
    ("--lr", "inf", ["argument --lr: must be a finite number"]),
    ("--grad-clip=-inf", None, ["argument --grad-clip: must be a finite number"]),
    ("--clip-temperature", "nan", ["argument --clip-temperature: must be a finite number"]),
])
def test_bad_options_are_refused_at_parse_time(data, tmp_path, capsys, option, value, says):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["train", str(data), "--out", str(run), option] + ([value] if value else []))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert all(s in err for s in says), err
    assert not run.exists()


def test_train_config_refuses_non_finite_values_and_unknown_backends():
    for field in ("lr", "grad_clip", "clip_seconds", "clip_temperature"):
        with pytest.raises(ValueError, match=f"TrainConfig: {field} must be a finite number"):
            TrainConfig(**{field: float("nan")})
    with pytest.raises(ValueError, match="clip_backend must be one of auto, eager.*'nope'"):
        TrainConfig(clip_backend="nope")


# ---- 8. a full disk -------------------------------------------------------------------------
@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/3: "
                 "file write failed ... unexpected pos 1152 vs 1024"),
    OSError(errno.ENOSPC, "No space left on device"),
])
def test_full_disk_at_a_checkpoint_names_the_file_and_keeps_the_previous(data, tmp_path, monkeypatch, capsys, error):
    real, saves = torch.save, []

    def full_disk(obj, f, *a, **k):
        saves.append(f)
        if obj.get("step") == 4:
            real(obj, f, *a, **k)  # part of a file was written
            raise error
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    run = tmp_path / "run"
    with pytest.raises(CheckpointWriteError) as e:
        train(data, run, SMALL, small_train_config(max_steps=6, checkpoint_every=2, n_clips=0), progress=False)
    msg = str(e.value)
    assert str(run / "checkpoints") in msg and "at step 4" in msg and "no space left on the device" in msg, msg
    assert "previous" in msg and "intact" in msg
    assert f"fastsrnn train {data} --out {run}" in msg, msg  # the real resume command, not a placeholder
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]  # no temp files
    # the CLI shows it as an error, exit code 1
    shutil.rmtree(run)
    assert main(["train", str(data), "--out", str(run), "--preset", "tiny", "--batch-size", "4", "--tbptt", "2",
                 "--max-steps", "6", "--checkpoint-every", "2", "--n-clips", "0", "--device", "cpu",
                 "--quiet"]) == 1
    assert "could not write the checkpoint" in capsys.readouterr().err

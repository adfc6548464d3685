"""Checkpoints written by training: weights-only loadable, validated, and foreign or damaged
files give a CheckpointError that names the file."""
import os

import pytest
import torch
from helpers import SMALL, riff_dataset, small_train_config

from fastsrnn.checkpoint import CheckpointError, load_checkpoint, load_model, model_from_checkpoint, save_checkpoint
from fastsrnn.training.trainer import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    data = riff_dataset(root)
    run = root / "run"
    train(data, run, SMALL, small_train_config(max_steps=6, checkpoint_every=3, n_clips=0), progress=False)
    return data, run


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_checkpoints_load_weights_only(trained, name):
    ckpt = torch.load(trained[1] / "checkpoints" / name, map_location="cpu", weights_only=True)
    assert ckpt["config"] == SMALL.to_dict() and ckpt["train_config"]["max_steps"] == 6
    model = load_model(trained[1] / "checkpoints" / name)
    assert model.cfg == SMALL
    if name == "last.pt":  # everything an exact resume needs
        assert ckpt["step"] == 6 and "optimizer" in ckpt and "torch_rng" in ckpt
        assert ckpt["rnn_h"].shape == (SMALL.n_rnn, 4, SMALL.dim)


def _wrong_shape(path, tmp_path):
    ckpt = load_checkpoint(path)
    key = "mlp.embedding.weight"
    ckpt["model"][key] = torch.zeros(ckpt["model"][key].shape[0] + 1, ckpt["model"][key].shape[1])
    bad = tmp_path / "wrong_shape.pt"
    torch.save(ckpt, bad)
    return bad


def test_wrong_shape_names_the_file_and_the_tensor(trained, tmp_path):
    bad = _wrong_shape(trained[1] / "checkpoints" / "last.pt", tmp_path)
    with pytest.raises(CheckpointError, match=f"{bad.name}.*mlp.embedding.weight"):
        load_model(bad)


def test_resume_from_a_damaged_last_checkpoint_names_it(trained, tmp_path):
    data, run = trained
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    last = copy / "checkpoints" / "last.pt"
    os.replace(_wrong_shape(last, tmp_path), last)
    with pytest.raises(CheckpointError, match="last.pt.*mlp.embedding.weight"):
        train(data, copy, SMALL, small_train_config(max_steps=8, checkpoint_every=3, n_clips=0), progress=False)
    last.write_bytes(os.urandom(3000))
    with pytest.raises(CheckpointError, match="last.pt: not a fastsrnn checkpoint"):
        train(data, copy, SMALL, small_train_config(max_steps=8, checkpoint_every=3, n_clips=0), progress=False)


def test_foreign_files_name_the_file(tmp_path):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(4096))
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3), "epoch": 4}, plain)
    for path in (noise, plain, tmp_path / "missing.pt"):
        with pytest.raises(CheckpointError, match=path.name):
            load_checkpoint(path)


def test_weights_only_refuses_pickled_code(tmp_path):
    """A checkpoint holding an arbitrary object is refused, not executed."""
    evil = tmp_path / "evil.pt"
    torch.save({"format": "fastsrnn-checkpoint", "version": 1, "obj": _Obj()}, evil)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(evil)


class _Obj:
    pass


def test_save_then_rebuild_roundtrip(tmp_path):
    from fastsrnn import SampleRNN

    model = SampleRNN(SMALL)
    path = save_checkpoint(tmp_path / "m.pt", model, step=3)
    again = model_from_checkpoint(load_checkpoint(path), path)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k

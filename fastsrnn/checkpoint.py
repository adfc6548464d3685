"""Checkpoints: one dict of tensors and plain values, written atomically, loadable with
``torch.load(weights_only=True)`` (no pickled code), validated with readable errors."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from fastsrnn.atomic import atomic_path
from fastsrnn.config import SampleRNNConfig
from fastsrnn.model import SampleRNN

FORMAT = "fastsrnn-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable fastsrnn checkpoint; the message names the file."""


def save_checkpoint(path: Union[str, os.PathLike], model: SampleRNN, **extra: Any) -> Path:
    """Write ``{format, version, config, model, **extra}`` atomically to ``path``."""
    payload = {"format": FORMAT, "version": VERSION, "config": model.cfg.to_dict(),
               "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    payload.update(extra)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read and validate a checkpoint dict (on the CPU). Raises CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a fastsrnn checkpoint "
                              f"(torch.load failed: {type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fastsrnn checkpoint (no '{FORMAT}' marker)")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')} is not supported "
                              f"(this fastsrnn reads {VERSION})")
    try:
        SampleRNNConfig.from_dict(ckpt["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad config in checkpoint: {e}") from None
    return ckpt


def model_from_checkpoint(ckpt: Dict[str, Any], path: Union[str, os.PathLike] = "<checkpoint>") -> SampleRNN:
    """Build the model of a loaded checkpoint dict and load its weights, checking every shape."""
    cfg = SampleRNNConfig.from_dict(ckpt["config"])
    model = SampleRNN(cfg)
    own = model.state_dict()
    state = ckpt.get("model")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: checkpoint holds no model weights")
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: {tuple(state[k].shape)} in file, {tuple(v.shape)} for this config"
             for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = (([f"missing {missing[:5]}"] if missing else [])
                 + ([f"unexpected {unexpected[:5]}"] if unexpected else []) + wrong[:5])
        raise CheckpointError(f"{path}: weights do not fit the saved config: " + "; ".join(parts))
    model.load_state_dict(state)
    return model.eval()


def load_model(path: Union[str, os.PathLike], device: Optional[Union[str, torch.device]] = "cpu") -> SampleRNN:
    """Load a SampleRNN from a checkpoint file, in eval mode on ``device``."""
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt, path).to(device)

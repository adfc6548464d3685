"""The run folder: its checks, ``RUN/config.json``, ``RUN/metrics.jsonl`` and the resume command.

Separate from the loop: everything here reads or writes plain files of ``RUN/`` and is checked
before any training starts, so that a refused resume leaves the run as it was.
"""
from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Any, Dict, Optional

from fastsrnn.atomic import atomic_write_text
from fastsrnn.config import PRESETS, SampleRNNConfig
from fastsrnn.outlock import LOCK_NAME
from fastsrnn.training.train_config import DEFAULT_PRESET, RUN_DEFINING, TrainConfig


def resume_command(data_dir, run) -> str:
    """The command that continues the run in ``run`` (its options are kept in RUN/config.json)."""
    return f"fastsrnn train {shlex.quote(str(data_dir))} --out {shlex.quote(str(run))}"


def _check_run_folder(run: Path) -> None:
    """A new or empty folder, or a fastsrnn run (RUN/config.json); anything else is refused untouched."""
    if run.exists() and not run.is_dir():
        raise NotADirectoryError(f"{run}: --out must be a folder, and this is a file")
    if not run.is_dir() or (run / "config.json").is_file():
        return
    others = sorted(p.name for p in run.iterdir() if p.name != LOCK_NAME)
    if others:
        raise FileExistsError(f"{run} is not empty and is not a fastsrnn training run (no config.json; it holds "
                              f"{', '.join(others[:5])}{', ...' if len(others) > 5 else ''}); "
                              "choose a new or empty --out folder")


def _dataset_fingerprint(data_dir: Path) -> str:
    """sha256 over the manifest's chunks (file, split, sha256): the same data wherever it lies."""
    from fastsrnn.data.manifest import read_manifest

    h = hashlib.sha256()
    for c in read_manifest(data_dir)["chunks"]:
        h.update(f"{c['file']}\t{c['split']}\t{c['sha256']}\n".encode())
    return h.hexdigest()


def _read_run_config(run: Path) -> Optional[Dict[str, Any]]:
    path = run / "config.json"
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        return {"model": SampleRNNConfig.from_dict(saved["model"]), "train": saved["train"],
                "data": saved.get("data"), "dataset": saved.get("dataset")}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable run config ({e}); choose another --out") from None


def _resolve_configs(run: Path, saved, model_cfg, train_cfg):
    """The run's model and train configs; a RUN made with another model config is an error."""
    if isinstance(model_cfg, str):
        model_cfg = SampleRNNConfig.from_name(model_cfg)
    cfg = model_cfg or (saved["model"] if saved else PRESETS[DEFAULT_PRESET])
    if saved and saved["model"] != cfg:
        raise ValueError(f"{run} was created with another model config "
                         f"({_diff(saved['model'].to_dict(), cfg.to_dict())}); "
                         "choose another --out, or leave --preset out to continue it")
    tcfg = train_cfg or (TrainConfig.from_dict(saved["train"]) if saved else TrainConfig())
    if saved:
        old = TrainConfig.from_dict(saved["train"]).to_dict()
        bad = {k: (old[k], getattr(tcfg, k)) for k in RUN_DEFINING if old[k] != getattr(tcfg, k)}
        if bad and (run / "checkpoints" / "last.pt").exists():
            raise ValueError(f"{run} was trained with other "
                             f"{', '.join(f'{k}={a} (now {b})' for k, (a, b) in bad.items())}; "
                             "resuming needs the same values: choose another --out to change them")
    return cfg, tcfg


def _diff(a: Dict[str, Any], b: Dict[str, Any]) -> str:
    return ", ".join(f"{k}: {a.get(k)!r} in the run, {b.get(k)!r} now"
                     for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def _check_sample_rate(data_dir: Path, cfg: SampleRNNConfig) -> None:
    from fastsrnn.data.manifest import read_manifest

    sr = int(read_manifest(data_dir)["sample_rate"])
    if sr != cfg.sample_rate:
        raise ValueError(f"{data_dir}: prepared at {sr} Hz but the model config wants {cfg.sample_rate} Hz; "
                         f"re-run 'fastsrnn prepare --sample-rate {cfg.sample_rate}' or change the config")


def _write_run_config(run: Path, cfg: SampleRNNConfig, tcfg: TrainConfig, data_dir: Path, dataset: str) -> None:
    from fastsrnn import __version__

    text = json.dumps({"model": cfg.to_dict(), "train": tcfg.to_dict(), "data": str(data_dir), "dataset": dataset,
                       "fastsrnn_version": __version__}, indent=2)
    atomic_write_text(run / "config.json", text + "\n")


def _append_metrics(path: Path, record: Dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop the records after the checkpoint: the resumed run writes them again."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill mid-write
        if rec.get("step", 0) <= step and "test_bits" not in rec:
            keep.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in keep))

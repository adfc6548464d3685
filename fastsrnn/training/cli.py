"""``fastsrnn train DATA --out RUN``: the command-line face of :func:`fastsrnn.training.trainer.train`."""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import fields, replace
from pathlib import Path

from fastsrnn import env
from fastsrnn.config import PRESETS, SampleRNNConfig
from fastsrnn.training.train_config import DEFAULT_PRESET


def finite_float(text: str) -> float:
    """argparse type: a float that is neither nan nor infinite (argparse names the option)."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return x


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, its help from the field's metadata (train_config.py); default
    None = the run's saved value when resuming, else TrainConfig's default."""
    from fastsrnn.training.train_config import TrainConfig

    for f in fields(TrainConfig):
        flag, help_text = "--" + f.name.replace("_", "-"), f.metadata["help"]
        if isinstance(f.default, bool):  # a switch, and its --no- twin to turn it off in a run that had it
            p.add_argument(flag, dest=f.name, action="store_true", default=None,
                           help=f"{help_text} (default {'on' if f.default else 'off'})")
            p.add_argument("--no-" + flag[2:], dest=f.name, action="store_false", help=f.metadata["off_help"])
        else:
            typ = finite_float if isinstance(f.default, float) else type(f.default)
            p.add_argument(flag, type=typ, default=None, choices=f.metadata.get("choices"),
                           help=f"{help_text} (default {f.default})")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # defaults are spelled out below
    p.description = ("Train a SampleRNN on a dataset made by 'fastsrnn prepare'.\n"
                     "Checkpoints go to RUN/checkpoints (last.pt, best.pt), metrics to RUN/metrics.jsonl,\n"
                     "clips to RUN/samples/<step>/. Run the same command again to resume an interrupted\n"
                     "run exactly; options left out then keep the run's own values.")
    p.add_argument("data", help="prepared dataset folder (holds manifest.json)")
    p.add_argument("--out", required=True, help="run folder (created; an existing run there is resumed)")
    p.epilog = ("example:\n  fastsrnn prepare album/*.mp3 --out data/album\n"
                "  fastsrnn train data/album --preset dadabots-2tier --out runs/album\n"
                "  fastsrnn train data/album --out runs/album --max-steps 200000   # resume, train further\n"
                "multi-GPU: torchrun --nproc-per-node 4 -m fastsrnn train data/album --out runs/album")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="model preset (default: the run's own when resuming, else dadabots-2tier)")
    p.add_argument("--frame-sizes", type=int, nargs="+", default=None, metavar="N",
                   help="the preset's tiers, bottom up: the bottom frame tier's frame in samples, then per "
                        "tier above the steps of the tier below it spans (samplernn-pytorch's --frame_sizes): "
                        "'16' is 2 tiers, '16 4' 3 tiers (a tier every 64 samples); --tbptt must then be "
                        "whole frames of the top tier (default: the preset's)")
    _add_config_flags(p)
    p.add_argument("--resume", dest="resume", action="store_true", default=True,
                   help="continue from RUN/checkpoints/last.pt when it exists (the default)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="refuse to touch an existing run instead of continuing it")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")


def run(args: argparse.Namespace) -> int:
    from fastsrnn.training.errors import TrainingInterrupted
    from fastsrnn.training.run_folder import _read_run_config
    from fastsrnn.training.train_config import TrainConfig
    from fastsrnn.training.trainer import train

    saved = _read_run_config(Path(args.out))
    base = TrainConfig.from_dict(saved["train"]) if saved else TrainConfig()
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    model = args.preset
    if args.frame_sizes is not None:  # the preset (else the run's own model, else the default) with these tiers
        cfg = (SampleRNNConfig.from_name(args.preset) if args.preset else
               saved["model"] if saved else SampleRNNConfig.from_name(DEFAULT_PRESET))
        model = replace(cfg, frame_sizes=tuple(args.frame_sizes))  # a bad list: SampleRNNConfig says why
    try:
        summary = train(args.data, args.out, model, replace(base, **overrides),
                        resume=args.resume, progress=not args.quiet)
    except TrainingInterrupted as e:  # last.pt saved and the resume command printed: 143 for SIGTERM, 130 for SIGINT
        return e.exit_code
    if env.torchrun_ranks()[1] == 0:  # under torchrun, rank 0 speaks for the run
        print(json.dumps(summary, indent=2))
    return 0

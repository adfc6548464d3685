"""``fastsrnn train DATA --out RUN``: the command-line face of :func:`fastsrnn.training.trainer.train`."""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
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

# option -> TrainConfig field; None defaults mean "the run's saved value, else TrainConfig's default"
_OPTIONS = {
    "batch_size": (int, "chunks per batch (the paper: 128; capped at the number of train chunks)"),
    "tbptt": (int, "frames per truncated-BPTT sub-sequence (64 frames = 1,024 samples at F=16)"),
    "lr": (finite_float, "Adam learning rate"),
    "grad_clip": (finite_float, "clip each gradient element to [-x, x] (0 = off)"),
    "max_steps": (int, "stop after this many optimizer steps in all (one step per sub-sequence)"),
    "checkpoint_every": (int, "steps between checkpoints (last.pt) and generated clips"),
    "valid_every": (int, "steps between validations (0 = at every checkpoint)"),
    "n_clips": (int, "clips generated at each checkpoint (the paper: 10; 0 = none)"),
    "clip_seconds": (finite_float, "seconds per clip (the paper: 30)"),
    "clip_temperature": (finite_float, "sampling temperature of clips"),
    "clip_h0": (str, "initial RNN state of clips: random, learned or zeros"),
    "clip_backend": (str, "generation backend for clips (see 'fastsrnn backends')"),
    "seed": (int, "seed of the weights and of the chunk order"),
    "device": (str, "auto (cuda if available), cpu, cuda, cuda:N"),
    "num_threads": (int, "torch CPU threads (0 = FASTSRNN_NUM_THREADS or torch's choice)"),
    "amp": (str, "mixed precision: off (fp32), or bf16 (torch.autocast bf16 around the forward and loss; "
                 "fp32 master weights and Adam; fastest on GPUs with bf16 tensor cores, allowed on the CPU)"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fastsrnn.training.train_config import AMP_MODES, CLIP_BACKENDS, TrainConfig

    choices = {"clip_h0": ("random", "learned", "zeros"), "clip_backend": CLIP_BACKENDS, "amp": AMP_MODES}

    p.formatter_class = argparse.RawDescriptionHelpFormatter  # defaults are spelled out below
    defaults = TrainConfig()
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
    for name, (typ, help_text) in _OPTIONS.items():
        p.add_argument("--" + name.replace("_", "-"), type=typ, default=None, choices=choices.get(name),
                       help=f"{help_text} (default {getattr(defaults, name)})")
    p.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="torch.compile the model's forward (the first step compiles, which takes a while; "
                        "a failure is a warning and training goes on eagerly) (default off)")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="train without torch.compile (turns it off in a run that had it)")
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
    overrides = {k: getattr(args, k) for k in (*_OPTIONS, "compile") if getattr(args, k, None) is not None}
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

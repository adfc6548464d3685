"""``fastsrnn generate``: minutes of audio from a checkpoint, streamed to disk, resumable."""
from __future__ import annotations

import argparse
import errno
import time
from pathlib import Path

from fastsrnn import env
from fastsrnn.backends import BACKENDS
from fastsrnn.generation.generator import check_device
from fastsrnn.generation.longgen import GenerationRun
from fastsrnn.generation.ranks import init_ranks
from fastsrnn.generation.rundir import _read_settings
from fastsrnn.generation.settings import GenerationSettings, add_flags, given_options

DEFAULT_OUT = "generated"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Generate audio from a trained checkpoint. Files are written as generation proceeds "
                     "(seq_000.part.wav ... always valid up to the last chunk) and the state is saved "
                     "every --save-every seconds, so a killed run continues with --resume DIR and gives the "
                     "same audio as an uninterrupted one. Under 'torchrun --nproc-per-node N' the sequences are "
                     "split over the N processes (one GPU each), all writing into the one --out; each sequence is "
                     "the same audio whatever N, and --resume needs the same N.")
    p.epilog = ("examples:\n"
                "  fastsrnn generate runs/album/checkpoints/best.pt --seconds 360 --n-seq 20 --out gen/album\n"
                "  fastsrnn generate --resume gen/album\n"
                "  torchrun --nproc-per-node 4 -m fastsrnn generate best.pt --seconds 360 --n-seq 20 --out gen/album")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("checkpoint", nargs="?", help="a checkpoint .pt written by 'fastsrnn train'")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the interrupted generation in DIR with its stored settings (no CHECKPOINT; "
                        "other options, if given, must agree with them; --backend and --device may change)")
    p.add_argument("--out", default=None, help=f"output directory (new or empty) [default: {DEFAULT_OUT}]")
    add_flags(p)  # one per GenerationSettings field
    p.add_argument("--backend", default=None, choices=("auto",) + BACKENDS,
                   help="generation backend [default: $FASTSRNN_BACKEND or auto = fastest here; "
                        f"now {env.default_backend()}]")
    p.add_argument("--device", default=None,
                   help="cpu or cuda[:N] [default: cuda if available; under torchrun cuda:LOCAL_RANK]")
    p.add_argument("--no-precision-check", action="store_true",
                   help="skip the --precision guard (use bf16 or int8 without measuring their NLL against fp32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_resume_options(args) -> None:
    """--resume continues with the stored settings: a CHECKPOINT or an option that disagrees is refused."""
    out = Path(args.resume)
    record = _read_settings(out)
    wrong = []
    if args.checkpoint and Path(args.checkpoint).resolve() != Path(record["checkpoint"]).resolve():
        wrong.append(f"CHECKPOINT {args.checkpoint} (the generation uses {record['checkpoint']})")
    if args.out is not None and Path(args.out).resolve() != out.resolve():
        wrong.append(f"--out {args.out} (resuming writes into {out})")
    wrong += GenerationSettings.from_dict(record).differences(given_options(args), record["sample_rate"])
    if wrong:
        raise ValueError(f"--resume {out} continues the generation with the settings it was started with; these "
                         f"disagree: {'; '.join(wrong)}. Drop them, or start a new generation in another --out")


def _rank_device(device):
    """Under torchrun, each process takes its own GPU: cuda (or no --device, with CUDA here) -> cuda:LOCAL_RANK."""
    world, _, local_rank = env.torchrun_ranks()
    if world == 1 or device not in (None, "cuda"):
        return device
    if device is None and check_device(None).type != "cuda":
        return device
    return f"cuda:{local_rank}"


def run(args) -> int:
    t0 = time.perf_counter()
    args.device = _rank_device(args.device)
    check_device(args.device, "--device")
    world, rank = init_ranks()
    try:
        return _run(args, t0, rank)
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _run(args, t0: float, rank: int) -> int:
    say = print if rank == 0 else (lambda *a, **k: None)
    if args.resume:
        _check_resume_options(args)
        gen_run = GenerationRun.reopen(args.resume, backend=args.backend, device=args.device,
                                       precision=args.precision, check_precision=not args.no_precision_check)
        say(f"resuming {args.resume} at {gen_run.generated / gen_run.settings['sample_rate']:.1f} s")
    else:
        if not args.checkpoint:
            raise ValueError("give a CHECKPOINT to generate from, or --resume DIR")
        settings = GenerationSettings(**given_options(args))  # the options given, the defaults for the others
        gen_run = GenerationRun.create(args.checkpoint, args.out or DEFAULT_OUT, settings, backend=args.backend,
                                       device=args.device, check_precision=not args.no_precision_check)
    if gen_run.gen.precision_check is not None:
        say(gen_run.gen.precision_check.describe())
    try:
        gen_run.run(progress=not args.no_progress)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RuntimeError(f"{gen_run.out}: the disk is full ({e}); free some space, then continue with "
                               f"'fastsrnn generate --resume {gen_run.out}'") from None
        raise
    took = time.perf_counter() - t0
    s = gen_run.settings
    say(f"wrote {len(s['files'])} file(s) of {s['seconds']:.1f} s to {gen_run.out} in {took:.1f} s "
        f"({s['n_samples'] * s['n_seq'] / took:,.0f} samples/s with backend {gen_run.gen.backend_name})")
    for f in s["files"]:
        say(f"  {gen_run.out / f}")
    return 0

"""``fastsrnn generate``: minutes of audio from a checkpoint, streamed to disk, resumable."""
from __future__ import annotations

import argparse
import time

from fastsrnn import env
from fastsrnn.backends import BACKENDS
from fastsrnn.generation.longgen import GenerationRun


def _temperature(text: str):
    """'0.9' or '0.8,0.9,1.0' (one per sequence)."""
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--temperature: expected a number or a comma-separated list, got {text!r}")
    return vals[0] if len(vals) == 1 else vals


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Generate audio from a trained checkpoint. Files are written as generation proceeds "
                     "(seq_000.part.wav ... always valid up to the last chunk) and the state is saved "
                     "every --save-every seconds, so a killed run continues with --resume DIR and gives the "
                     "same audio as an uninterrupted one.")
    p.epilog = ("examples:\n"
                "  fastsrnn generate runs/album/checkpoints/best.pt --seconds 360 --n-seq 20 --out gen/album\n"
                "  fastsrnn generate --resume gen/album")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("checkpoint", nargs="?", help="a checkpoint .pt written by 'fastsrnn train'")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the interrupted generation in DIR (no other options needed)")
    p.add_argument("--out", default="generated", help="output directory (new or empty) [default: generated]")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds of audio per sequence [default: 30]")
    p.add_argument("--n-seq", type=int, default=1, help="sequences generated in parallel, one file each [default: 1]")
    p.add_argument("--temperature", type=_temperature, default=1.0,
                   help="sampling temperature, or one per sequence: 0.9,1.0,1.1 [default: 1.0]")
    p.add_argument("--argmax", action="store_true", help="take the most likely sample instead of sampling")
    p.add_argument("--h0", choices=("learned", "random", "zeros"), default="learned",
                   help="initial RNN state: the learned one, or random U[-0.5, 0.5] (more varied music) "
                        "[default: learned]")
    p.add_argument("--seed", type=int, default=0, help="random seed: same seed, same audio [default: 0]")
    p.add_argument("--prime", metavar="AUDIO", help="continue this recording (any format soundfile reads)")
    p.add_argument("--prime-seconds", type=float, help="use only the last N seconds of --prime")
    p.add_argument("--backend", default=None, choices=("auto",) + BACKENDS,
                   help="generation backend [default: $FASTSRNN_BACKEND or auto = fastest here; "
                        f"now {env.default_backend()}]")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] [default: cuda if available]")
    p.add_argument("--format", dest="fmt", choices=("wav", "flac"), default="wav",
                   help="final audio format [default: wav]")
    p.add_argument("--normalize", choices=("peak", "none"), default="peak",
                   help="peak-normalize each finished file to 0.9 (gain capped at 10x) or keep the model's level "
                        "[default: peak]")
    p.add_argument("--chunk-seconds", type=float, default=1.0,
                   help="audio copied to the host and written per chunk [default: 1]")
    p.add_argument("--save-every", type=float, default=10.0,
                   help="save the resumable state every N seconds of audio [default: 10]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    t0 = time.perf_counter()
    if args.resume:
        gen_run = GenerationRun.reopen(args.resume, backend=args.backend, device=args.device)
        print(f"resuming {args.resume} at {gen_run.generated / gen_run.settings['sample_rate']:.1f} s")
    else:
        if not args.checkpoint:
            raise ValueError("give a CHECKPOINT to generate from, or --resume DIR")
        gen_run = GenerationRun.create(
            args.checkpoint, args.out, seconds=args.seconds, n_seq=args.n_seq, temperature=args.temperature,
            argmax=args.argmax, h0=args.h0, seed=args.seed, prime=args.prime, prime_seconds=args.prime_seconds,
            backend=args.backend, device=args.device, fmt=args.fmt, normalize=args.normalize,
            chunk_seconds=args.chunk_seconds, save_every_seconds=args.save_every)
    files = gen_run.run(progress=not args.no_progress)
    took = time.perf_counter() - t0
    s = gen_run.settings
    print(f"wrote {len(files)} file(s) of {s['seconds']:.1f} s to {gen_run.out} in {took:.1f} s "
          f"({s['n_samples'] * s['n_seq'] / took:,.0f} samples/s with backend {gen_run.gen.backend_name})")
    for f in files:
        print(f"  {f}")
    return 0

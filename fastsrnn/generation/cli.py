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
from fastsrnn.generation.precision import MAX_NLL_DELTA_BITS, PRECISIONS
from fastsrnn.generation.ranks import init_ranks
from fastsrnn.generation.rundir import _read_settings

# The options that define a new generation (None on the command line = not given). A resumed
# generation keeps its stored settings: giving one of these with --resume must agree with them.
DEFAULTS = {"out": "generated", "seconds": 30.0, "n_seq": 1, "temperature": 1.0, "argmax": False, "h0": "learned",
            "seed": 0, "prime": None, "prime_seconds": None, "fmt": "wav", "normalize": "peak",
            "chunk_seconds": 1.0, "save_every": 10.0, "precision": "fp32"}
OPTION = {"fmt": "--format", "save_every": "--save-every"}


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
    p.add_argument("--out", default=None, help="output directory (new or empty) [default: generated]")
    p.add_argument("--seconds", type=float, default=None, help="seconds of audio per sequence [default: 30]")
    p.add_argument("--n-seq", type=int, default=None,
                   help="sequences generated in parallel, one file each [default: 1]")
    p.add_argument("--temperature", type=_temperature, default=None,
                   help="sampling temperature, or one per sequence: 0.9,1.0,1.1 [default: 1.0]")
    p.add_argument("--argmax", action="store_true", default=None,
                   help="take the most likely sample instead of sampling")
    p.add_argument("--h0", choices=("learned", "random", "zeros"), default=None,
                   help="initial RNN state: the learned one, or random U[-0.5, 0.5] (more varied music) "
                        "[default: learned]")
    p.add_argument("--seed", type=int, default=None, help="random seed: same seed, same audio [default: 0]")
    p.add_argument("--prime", metavar="AUDIO", help="continue this recording (any format soundfile reads)")
    p.add_argument("--prime-seconds", type=float, help="use only the last N seconds of --prime")
    p.add_argument("--backend", default=None, choices=("auto",) + BACKENDS,
                   help="generation backend [default: $FASTSRNN_BACKEND or auto = fastest here; "
                        f"now {env.default_backend()}]")
    p.add_argument("--device", default=None,
                   help="cpu or cuda[:N] [default: cuda if available; under torchrun cuda:LOCAL_RANK]")
    p.add_argument("--format", dest="fmt", choices=("wav", "flac"), default=None,
                   help="final audio format [default: wav]")
    p.add_argument("--normalize", choices=("peak", "none"), default=None,
                   help="peak-normalize each finished file to 0.9 (gain capped at 10x) or keep the model's level "
                        "[default: peak]")
    p.add_argument("--chunk-seconds", type=float, default=None,
                   help="audio copied to the host and written per chunk [default: 1]")
    p.add_argument("--save-every", type=float, default=None,
                   help="save the resumable state every N seconds of audio [default: 10]")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="weights of the generation backends (cpu, folded; triton and cuda take fp32 and bf16). "
                        "fp32: the reference, no check. bf16: frame and sample tiers in bf16, half the weight bytes "
                        "per frame. int8: the frame tier's weights in int8 with a scale per row (a quarter of fp32's "
                        "bytes), sample tier in bf16. dadabots-2tier at one sequence on a 2-core CPU, cpu backend: "
                        "fp32 6.4, bf16 3.5, int8 1.9 ms per frame (2.5 k, 4.5 k, 8.5 k samples/s; BENCHMARKS.md); "
                        "on a model trained on real music both cost under 0.0002 bits/sample of test NLL. "
                        "Before bf16 or int8 generate, a guard measures "
                        "the teacher-forced NLL with fp32 and with the lower precision on the same data, same "
                        f"backend, and refuses a loss over {MAX_NLL_DELTA_BITS:g} bits/sample (it prints both NLLs; "
                        "bf16 on the cpu backend: about 0.5 s for 'tiny', 15 s for 'dadabots-2tier' on a "
                        "2-core CPU; once per run) "
                        "[default: fp32]")
    p.add_argument("--precision-data", metavar="DATA",
                   help="prepared dataset whose test split the --precision guard measures on [default: the dataset "
                        "recorded in the checkpoint's run folder (RUN/config.json) when it still exists, else "
                        "4 x 1 s of audio the fp32 model generates itself (seed 0): how far the precision moves "
                        "the model's own distribution]")
    p.add_argument("--no-precision-check", action="store_true",
                   help="skip the --precision guard (use bf16 or int8 without measuring their NLL against fp32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _option(name: str) -> str:
    return OPTION.get(name, "--" + name.replace("_", "-"))


def _check_resume_options(args) -> None:
    """--resume continues with the stored settings: a CHECKPOINT or an option that disagrees is refused."""
    out = Path(args.resume)
    settings = _read_settings(out)
    sr = settings["sample_rate"]
    stored = {"seconds": settings["seconds"], "n_seq": settings["n_seq"], "temperature": settings["temperature"],
              "argmax": settings["argmax"], "h0": settings["h0"], "seed": settings["seed"],
              "prime_seconds": settings.get("prime_seconds"), "fmt": settings["audio_format"],
              "normalize": settings["normalize"], "precision": settings.get("precision", "fp32")}
    wrong = []
    if args.checkpoint and Path(args.checkpoint).resolve() != Path(settings["checkpoint"]).resolve():
        wrong.append(f"CHECKPOINT {args.checkpoint} (the generation uses {settings['checkpoint']})")
    if args.out is not None and Path(args.out).resolve() != out.resolve():
        wrong.append(f"--out {args.out} (resuming writes into {out})")
    for name, value in stored.items():
        given = getattr(args, name)
        if given is not None and given != value:
            wrong.append(f"{_option(name)} {given} (stored: {value})")
    if args.prime is not None and str(Path(args.prime).resolve()) != settings.get("prime"):
        wrong.append(f"--prime {args.prime} (stored: {settings.get('prime')})")
    for name, key in (("chunk_seconds", "chunk_samples"), ("save_every", "save_every_samples")):
        given = getattr(args, name)
        if given is not None and int(given * sr) != settings[key]:
            wrong.append(f"{_option(name)} {given} (stored: {settings[key] / sr:g})")
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
        if args.precision_data is not None:
            raise ValueError("--precision-data cannot change on --resume: the guard measures on the data the "
                             "generation was started with")
        gen_run = GenerationRun.reopen(args.resume, backend=args.backend, device=args.device,
                                       precision=args.precision, check_precision=not args.no_precision_check)
        say(f"resuming {args.resume} at {gen_run.generated / gen_run.settings['sample_rate']:.1f} s")
    else:
        if not args.checkpoint:
            raise ValueError("give a CHECKPOINT to generate from, or --resume DIR")
        o = {k: (DEFAULTS[k] if getattr(args, k) is None else getattr(args, k)) for k in DEFAULTS}
        gen_run = GenerationRun.create(
            args.checkpoint, o["out"], seconds=o["seconds"], n_seq=o["n_seq"], temperature=o["temperature"],
            argmax=o["argmax"], h0=o["h0"], seed=o["seed"], prime=o["prime"], prime_seconds=o["prime_seconds"],
            backend=args.backend, device=args.device, fmt=o["fmt"], normalize=o["normalize"],
            chunk_seconds=o["chunk_seconds"], save_every_seconds=o["save_every"], precision=o["precision"],
            check_precision=not args.no_precision_check, precision_data=args.precision_data)
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

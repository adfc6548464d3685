"""``fastsrnn demo``: the whole workflow in a few minutes on a laptop CPU.

Synthesize a one-minute album (3 songs x 20 s), prepare it in 2-second chunks, train the
``tiny`` preset briefly, generate a few clips from the best checkpoint, say where they are, and
write the run's report (RUN/report.html, ``fastsrnn report``).
Every phase is skipped or resumed when its output is already there, so a re-run into the same
folder continues an interrupted demo (or trains further with a larger --steps).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Dict, List

DEFAULT_OUT = "fastsrnn-demo"
DEFAULT_STEPS = 800  # about 2 minutes of training on 2 quiet CPU cores (~150 ms a step)
MARKER = ".fastsrnn-demo"  # tells a demo folder from a folder of someone's files
DEMO_PRESETS = ("tiny", "tiny-3tier")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Run the whole workflow on a synthetic album in a few minutes on a CPU: "
                     "album -> prepare -> train the tiny (or tiny-3tier) preset -> generate clips. "
                     "Re-running with the same --out continues where it stopped.")
    p.add_argument("--out", default=DEFAULT_OUT, help="demo folder (album, data, run, clips)")
    p.add_argument("--preset", choices=DEMO_PRESETS, default="tiny",
                   help="the model: tiny (2 tiers) or tiny-3tier (a tier every 64 samples above it) (default tiny)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help="training steps (each is 16 chunks x 1,024 samples)")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each generated clip in seconds")
    p.add_argument("--n-clips", type=int, default=3, help="clips to generate")
    p.add_argument("--backend", default=argparse.SUPPRESS,
                   help="generation backend (default: FASTSRNN_BACKEND, else the fastest that works)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    paths = demo(args.out, steps=args.steps, seconds=args.seconds, n_clips=args.n_clips,
                 backend=getattr(args, "backend", None), progress=not args.quiet, preset=args.preset)
    print(f"\n{len(paths)} clips in {paths[0].parent}/")
    print(f"listen: play {paths[0]}   (any audio player; on Linux 'aplay', on macOS 'afplay')")
    return 0


def _check_out(out: Path) -> None:
    """Refuse to write into a non-empty folder that a demo did not create."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise FileExistsError(f"{out} exists and is not a fastsrnn demo folder; choose another --out "
                              "or remove it")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()


class _Phases:
    """Times each phase and prints it."""

    def __init__(self):
        self.times: Dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        print(f"[demo] {name} ...", flush=True)
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        self.times[name] = time.perf_counter() - t0
        print(f"[demo] {name}: {self.times[name]:.1f} s", flush=True)
        return result


def demo(out=DEFAULT_OUT, *, steps: int = DEFAULT_STEPS, seconds: float = 4.0, n_clips: int = 3,
         backend=None, progress: bool = True, preset: str = "tiny") -> List[Path]:
    """Run the demo into ``out``; returns the paths of the generated WAV clips. preset: tiny or
    tiny-3tier (one folder per preset: a run is not resumed with another model)."""
    if steps < 1 or seconds <= 0 or n_clips < 1:
        raise ValueError(f"demo: need steps >= 1, seconds > 0 and n_clips >= 1 (got {steps}, {seconds}, {n_clips})")
    if preset not in DEMO_PRESETS:
        raise ValueError(f"demo: preset must be one of {DEMO_PRESETS}, got {preset!r}")
    out = Path(out)
    _check_out(out)
    phases, t0 = _Phases(), time.perf_counter()
    songs = phases.run("synthesize album", _album, out / "album")
    phases.run("prepare", _prepare, songs, out / "data", progress)
    summary = phases.run("train", _train, out / "data", out / "run", steps, progress, preset)
    clips = phases.run("generate", _generate, Path(summary["best_checkpoint"]), out / "clips",
                       seconds, n_clips, backend, progress)
    report = phases.run("report", _report, out / "run", progress)
    total = time.perf_counter() - t0
    print("[demo] times: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.times.items()) + f"; total {total:.1f} s")
    print(f"[demo] test NLL {summary['test_bits']:.3f} bits/sample after {summary['steps']} steps "
          f"(8 bits = knows nothing; metrics in {out / 'run' / 'metrics.jsonl'})")
    print(f"[demo] report of the run: {report}  (open it in a browser: {report.resolve().as_uri()})")
    return clips


def _album(folder: Path) -> List[Path]:
    from fastsrnn.data.synth import write_album

    # The synthesizer is seeded, so an existing album is the same album: keep it.
    have = sorted(folder.glob("*.wav")) if folder.exists() else []
    if len(have) == 3:
        return have
    return write_album(folder, n_songs=3, seconds=20.0, sample_rate=16000, seed=0, format="wav")


def _prepare(songs: List[Path], data: Path, progress: bool) -> None:
    from fastsrnn.data.prepare import prepare

    if (data / "manifest.json").exists():
        return
    # 2-second chunks: a one-minute album then gives ~26 train chunks, enough for batches of 16.
    prepare(songs, data, sample_rate=16000, chunk_seconds=2.0, seed=0, progress=progress)


def _train(data: Path, run: Path, steps: int, progress: bool, preset: str = "tiny") -> dict:
    from fastsrnn.training.train_config import TrainConfig
    from fastsrnn.training.trainer import train

    last = run / "checkpoints" / "last.pt"
    if last.exists():
        from fastsrnn.checkpoint import load_checkpoint

        print(f"[demo] continuing the training run in {run} from step {load_checkpoint(last)['step']}", flush=True)
    # Two 2-second clips per checkpoint (about a second each on a CPU): the report's per-checkpoint
    # verdicts and its recommendation need them. The demo's own clips come from best.pt next.
    cfg = TrainConfig(batch_size=16, tbptt=64, max_steps=steps, checkpoint_every=max(1, steps // 4),
                      n_clips=2, clip_seconds=2.0, device="cpu")
    return train(data, run, preset, cfg, resume=True, progress=progress)


def _report(run: Path, progress: bool) -> Path:
    from fastsrnn.tools.report import write_report

    return write_report(run, progress=progress)


def _generate(ckpt: Path, folder: Path, seconds: float, n_clips: int, backend, progress: bool) -> List[Path]:
    from fastsrnn.checkpoint import load_model
    from fastsrnn.data.audio import write_audio
    from fastsrnn.generation.generator import generate

    model = load_model(ckpt, "cpu")
    sr = model.cfg.sample_rate
    # Random h0 gives each clip its own start (the paper's finding); seeded, so re-runs agree.
    audio = generate(model, int(seconds * sr), n_seq=n_clips, h0="random", seed=0, backend=backend,
                     device="cpu", progress=progress)  # (n_clips, T) float32
    paths = []
    for i, clip in enumerate(audio):
        paths.append(folder / f"clip_{i:02d}.wav")
        write_audio(paths[-1], clip, sr)
    return paths

"""The ``fastsrnn`` command: prepare, train, generate, demo, bench, backends.

Each subcommand lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their command runs, so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS = {
    "demo": ("fastsrnn.demo", "synthesize a small album, prepare it, train the tiny preset briefly, generate clips"),
    "prepare": ("fastsrnn.prepare", "audio files or folders -> mono 16 kHz 8-second FLAC chunks split train/valid/test"),
    "train": ("fastsrnn.train_cli", "train a SampleRNN on a prepared dataset (truncated BPTT, checkpoints, resume)"),
    "generate": ("fastsrnn.generate_cli", "generate minutes of audio from a checkpoint, streamed to disk, resumable"),
    "bench": ("fastsrnn.bench", "benchmark the generation backends against the eager reference on this machine"),
    "analyze": ("fastsrnn.analysis", "flag generated clips that are silent, white noise, or stuck in one riff"),
    "backends": ("fastsrnn.backends.cli", "list the generation backends and whether each works here"),
}

EPILOG = """workflow on a real album:
  fastsrnn prepare album/*.mp3 --out data/album
  fastsrnn train data/album --preset dadabots-2tier --out runs/album
  fastsrnn generate runs/album/checkpoints/best.pt --seconds 360 --n-seq 20 --out gen/album
run 'fastsrnn COMMAND --help' for the options of each command."""


def build_parser(only: str = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastsrnn", description="SampleRNN on raw audio: prepare an album, train, and generate fast.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {importlib.import_module('fastsrnn').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (mod_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if only is None or only == name:  # import just the module of the command being run
            importlib.import_module(mod_name).add_arguments(p)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    wanted = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(only=wanted if wanted is not None else "")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("fastsrnn: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        # Library errors carry the file or argument at fault; show them without a traceback.
        print(f"fastsrnn {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

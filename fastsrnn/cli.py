"""The ``fastsrnn`` command: prepare, train, generate, analyze, report, demo, bench, backends.

Each subcommand lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int``;
:func:`command_module` imports only the module of the command being run, so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import sys

from fastsrnn import __version__

# name -> one-line help, in the order ``--help`` lists them
COMMANDS = {
    "demo": "synthesize a small album, prepare it, train the tiny preset briefly, generate clips",
    "prepare": "audio files or folders -> mono 16 kHz 8-second FLAC chunks split train/valid/test",
    "train": "train a SampleRNN on a prepared dataset (truncated BPTT, checkpoints, resume)",
    "generate": "generate minutes of audio from a checkpoint, streamed to disk, resumable",
    "bench": "benchmark the generation backends against the eager reference on this machine",
    "analyze": "flag generated clips that are silent, white noise, or stuck in one riff",
    "report": "one HTML page to listen to a run's clips (or a generation) and pick a checkpoint",
    "backends": "list the generation backends and whether each works here",
}


def command_module(name: str):
    """The module that implements command ``name`` (imported here, on demand)."""
    if name == "demo":
        from fastsrnn.tools import demo as module
    elif name == "prepare":
        from fastsrnn.data import prepare as module
    elif name == "train":
        from fastsrnn.training import cli as module
    elif name == "generate":
        from fastsrnn.generation import cli as module
    elif name == "bench":
        from fastsrnn.tools import bench as module
    elif name == "analyze":
        from fastsrnn.tools import analysis as module
    elif name == "report":
        from fastsrnn.tools import report as module
    elif name == "backends":
        from fastsrnn.backends import cli as module
    else:
        raise ValueError(f"unknown command {name!r}")
    return module


EPILOG = """workflow on a real album:
  fastsrnn prepare album/*.mp3 --out data/album
  fastsrnn train data/album --preset dadabots-2tier --out runs/album
  fastsrnn generate runs/album/checkpoints/best.pt --seconds 360 --n-seq 20 --out gen/album
run 'fastsrnn COMMAND --help' for the options of each command."""


def build_parser(only: str = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastsrnn", description="SampleRNN on raw audio: prepare an album, train, and generate fast.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if only is None or only == name:  # import just the module of the command being run
            command_module(name).add_arguments(p)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    wanted = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(only=wanted if wanted is not None else "")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = command_module(args.command)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("fastsrnn: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        # Library errors carry the file or argument at fault, and an OSError its path (a folder
        # that is a file, a read-only disk, a full one): show them without a traceback.
        print(f"fastsrnn {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""``fastsrnn backends``: which generation backends work on this machine, and why not."""
from __future__ import annotations

import torch

from fastsrnn.backends import AUTO_MANY_SEQ, BACKENDS, available_backends, resolve_backend


def add_arguments(parser):
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device to check the backends for")


def run(args) -> int:
    status = available_backends(args.device)
    width = max(len(n) for n in BACKENDS)
    for name in BACKENDS:
        ok, why = status[name]
        print(f"{name:<{width}}  {'yes' if ok else 'no ':<3}  {why}")
    few, many = resolve_backend("auto", args.device), resolve_backend("auto", args.device, AUTO_MANY_SEQ)
    print(f"auto -> {few}" if few == many else f"auto -> {few} below {AUTO_MANY_SEQ} sequences, {many} from there")
    return 0

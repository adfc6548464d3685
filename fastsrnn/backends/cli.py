"""``fastsrnn backends``: which generation backends work on this machine, and why not."""
from __future__ import annotations

import torch

from fastsrnn.backends import BACKENDS, auto_many_seq, available_backends, resolve_backend


def add_arguments(parser):
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device to check the backends for")


def run(args) -> int:
    status = available_backends(args.device)
    width = max(len(n) for n in BACKENDS)
    for name in BACKENDS:
        ok, why = status[name]
        print(f"{name:<{width}}  {'yes' if ok else 'no ':<3}  {why}")
    for dtype in (torch.float32, torch.bfloat16):
        n = auto_many_seq(dtype)
        few, many = resolve_backend("auto", args.device, dtype=dtype), resolve_backend("auto", args.device, n, dtype)
        label = str(dtype).replace("torch.", "")
        print(f"auto ({label}) -> {few}" if few == many else
              f"auto ({label}) -> {few} below {n} sequences, {many} from there")
    return 0

"""fastsrnn: SampleRNN (Dadabots NIPS 2017) on raw audio, with fused-kernel generation.

    import fastsrnn
    fastsrnn.prepare(["album/"], "data/album")                   # audio -> dataset
    fastsrnn.train("data/album", "runs/album", "dadabots-2tier")  # -> checkpoints
    model = fastsrnn.load("runs/album/checkpoints/best.pt")
    audio = fastsrnn.generate(model, 16000 * 30, n_seq=4)        # (4, T) float32
    audio = fastsrnn.generate(model, 16000 * 30, precision="bf16")  # after an NLL check against fp32

The public names are loaded on first use (PEP 562), so ``import fastsrnn`` and ``fastsrnn
--help`` do not pay for torch, the audio libraries or the trainer until something needs them.
The package's folders: data/ (audio I/O, preparation, chunks), quality/ (clip measures, the
album reference), training/, generation/ (the Generator, long runs), backends/ (dispatch), ops/
(one module per fused op: reference and launchers), tools/ (bench, analyze, report, demo).
docs/DESIGN.md §1 describes them and their layers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["PRESETS", "SampleRNNConfig", "SampleRNN", "TrainConfig", "train", "prepare", "load",
           "Generator", "generate", "PRECISIONS", "PrecisionRefused", "__version__"]

if TYPE_CHECKING:  # for readers and type checkers: the same names, imported eagerly
    from fastsrnn.checkpoint import load_model as load  # noqa: F401
    from fastsrnn.config import PRESETS, SampleRNNConfig  # noqa: F401
    from fastsrnn.data.prepare import prepare  # noqa: F401
    from fastsrnn.generation.generator import Generator, generate  # noqa: F401
    from fastsrnn.generation.precision import PRECISIONS, PrecisionRefused  # noqa: F401
    from fastsrnn.model import SampleRNN  # noqa: F401
    from fastsrnn.training.train_config import TrainConfig  # noqa: F401
    from fastsrnn.training.trainer import train  # noqa: F401


def __getattr__(name: str):
    # Plain imports, one per public name, so that readers and tools can follow them.
    if name in ("PRESETS", "SampleRNNConfig"):
        from fastsrnn import config as module
    elif name == "SampleRNN":
        from fastsrnn import model as module
    elif name == "TrainConfig":
        from fastsrnn.training import train_config as module
    elif name == "train":
        from fastsrnn.training import trainer as module
    elif name == "prepare":
        from fastsrnn.data import prepare as module
    elif name in ("Generator", "generate"):
        from fastsrnn.generation import generator as module
    elif name in ("PRECISIONS", "PrecisionRefused"):
        from fastsrnn.generation import precision as module
    elif name == "load":
        from fastsrnn.checkpoint import load_model

        globals()[name] = load_model
        return load_model
    else:
        raise AttributeError(f"module 'fastsrnn' has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__():
    return sorted({*globals(), *__all__})

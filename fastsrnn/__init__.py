"""fastsrnn: SampleRNN (Dadabots NIPS 2017) on raw audio, with fused-kernel generation.

    import fastsrnn
    fastsrnn.prepare(["album/"], "data/album")                   # audio -> dataset
    fastsrnn.train("data/album", "runs/album", "dadabots-2tier")  # -> checkpoints
    model = fastsrnn.load("runs/album/checkpoints/best.pt")
    audio = fastsrnn.generate(model, 16000 * 30, n_seq=4)        # (4, T) float32

The functions ``prepare``, ``train`` and ``generate`` share their names with the modules that
define them; import the modules' other names with ``from fastsrnn.prepare import ...``.
"""
from .checkpoint import load_model as load
from .config import PRESETS, SampleRNNConfig
from .generate import Generator, generate
from .model import SampleRNN
from .prepare import prepare
from .train import TrainConfig, train

__version__ = "0.1.0"
__all__ = ["PRESETS", "SampleRNNConfig", "SampleRNN", "TrainConfig", "Generator", "generate", "load",
           "prepare", "train", "__version__"]

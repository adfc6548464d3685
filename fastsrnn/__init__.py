"""fastsrnn: SampleRNN (Dadabots NIPS 2017) on raw audio, with fused-kernel generation."""
from .config import PRESETS, SampleRNNConfig
from .model import SampleRNN

__version__ = "0.1.0"
__all__ = ["PRESETS", "SampleRNNConfig", "SampleRNN", "__version__"]

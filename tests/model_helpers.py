"""Models for tests: random weights with a non-trivial h0, so nothing hides behind zeros."""
import torch

from fastsrnn import SampleRNN


def random_model(cfg, seed: int = 0, scale: float = 0.1) -> SampleRNN:
    """A SampleRNN in eval mode whose every parameter (h0 included) is perturbed by N(0, scale)."""
    torch.manual_seed(seed)
    model = SampleRNN(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model

"""Generation a chunk at a time: Backend.step_frames (one (n, B, F) uniforms tensor per chunk)
gives the frames that n calls of step_frame give, and CUDA graphs of several frames per replay
give the samples that plain launches give."""
import pytest
import torch
from helpers import random_model

from fastsrnn import SampleRNNConfig
from fastsrnn.backends import make_backend
from fastsrnn.generation.generator import Generator
from fastsrnn.ops.sampling import Sampling

CFG = SampleRNNConfig.from_name("tiny", dim=32, n_rnn=2)


def _frames_one_by_one(backend, state, u, sampling):
    return torch.stack([backend.step_frame(state, u[i], sampling) for i in range(u.shape[0])], dim=1)


@pytest.mark.parametrize("name", ["eager", "folded"])
def test_step_frames_equals_step_frame_loop(name):
    model = random_model(CFG)
    be = make_backend(name, model, "cpu")
    gen = Generator(model, 3, backend="eager", device="cpu", seed=2)
    s1, s2 = gen.state.clone(), gen.state.clone()
    u = torch.rand(5, 3, CFG.frame_size, generator=torch.Generator().manual_seed(3))
    s = Sampling(torch.ones(3))
    got = be.step_frames(s1, u, s)
    want = _frames_one_by_one(be, s2, u, s)
    assert got.shape == (3, 5, CFG.frame_size) and torch.equal(got, want)
    assert torch.equal(s1.window, s2.window) and torch.equal(s1.rnn.h, s2.rnn.h)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["triton", "cuda"])
def test_chunk_graphs_match_plain_launches(name):
    """37 frames = 2 replays of a 16-frame graph + 5 one-frame replays, against no graphs."""
    model = random_model(CFG)
    runs = []
    for graphs in (True, False):
        gen = Generator(model, 3, backend=name, device="cuda", seed=4, graphs=graphs)
        runs.append(gen.frames(37))
    assert torch.equal(runs[0], runs[1])

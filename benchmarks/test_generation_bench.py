"""pytest-benchmark: one frame step (frame tier + F fused sample steps) per backend and preset.

    pytest benchmarks --benchmark-columns=median,ops

Backends that do not work here are skipped; the table runner (``fastsrnn bench``) gives the
units that matter (samples/s, real-time factor, fraction of the floor).
"""
import pytest
import torch

from fastsrnn import SampleRNN, SampleRNNConfig
from fastsrnn.backends import backend_status, make_backend
from fastsrnn.bench import _fresh_state

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("n_seq", [1, 8, 32])
@pytest.mark.parametrize("backend", ["eager", "cpu", "triton", "cuda"])
@pytest.mark.parametrize("preset", ["tiny", "dadabots-2tier"])
def test_frame_step(benchmark, preset, backend, n_seq):
    ok, why = backend_status(backend, DEVICE)
    if not ok:
        pytest.skip(why)
    torch.manual_seed(0)
    model = SampleRNN(SampleRNNConfig.from_name(preset)).eval().to(DEVICE)
    be = make_backend(backend, model, DEVICE)
    state = _fresh_state(model, n_seq, DEVICE, 0)
    u = torch.rand(n_seq, model.cfg.frame_size, device=DEVICE)
    inv_t = torch.ones(n_seq, device=DEVICE)

    def step():
        be.step_frame(state, u, inv_t)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark.extra_info.update(samples_per_frame=n_seq * model.cfg.frame_size, backend=backend)
    benchmark.pedantic(step, warmup_rounds=2, rounds=5 if backend == "eager" else 20, iterations=1)
